"""What a trained policy has learned, read off held-out demonstrations without rollouts.

Two measurements, both on windows (episode, timestep) of demonstrations the policy was not
trained on, with errors in raw action units (mean over the chunk's entries):

- ``offline_action_error``: how close the policy's predicted chunks come to the demonstrated
  ones, corrected for the policy's own sampling noise, beside image-blind baselines.
- ``image_sensitivity``: whether the policy looks at the image, by swapping in the frame (or the
  state) of another configuration of the same task at the same timestep.

A policy here is anything with ``predict_action_chunk(observation, instruction, generator)``
returning a (chunk, action_dim) array, as ``VideoPredictionPolicy`` has; samples are drawn with
seeded generators, so every reading is reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from vpp.policy.data import PolicyEpisode

logger = logging.getLogger(__name__)


class ChunkSampler(Protocol):
    def predict_action_chunk(
        self,
        observation: Mapping[str, np.ndarray],
        instruction: str,
        generator: torch.Generator | None = None,
    ) -> np.ndarray: ...


def split_by_task(
    episodes: Sequence[PolicyEpisode], train_per_task: int, held_out_per_task: int
) -> tuple[list[PolicyEpisode], list[PolicyEpisode]]:
    """The first ``train_per_task`` episodes of every instruction (what ``vpp-policy train
    --episodes-per-task`` trains on) and the next ``held_out_per_task``."""
    if train_per_task < 0 or held_out_per_task < 1:
        raise ValueError(
            f"train_per_task={train_per_task}, held_out_per_task={held_out_per_task}; expected >= 0 and >= 1"
        )
    seen: dict[str, int] = {}
    train, held_out = [], []
    for episode in episodes:
        k = seen[episode.instruction] = seen.get(episode.instruction, 0) + 1
        if k <= train_per_task:
            train.append(episode)
        elif k <= train_per_task + held_out_per_task:
            held_out.append(episode)
    if not held_out:
        raise ValueError(f"no held-out episodes: no instruction has more than {train_per_task} episodes")
    return train, held_out


def _observation(videos: Mapping[str, np.ndarray], i: int, state: np.ndarray | None) -> dict[str, np.ndarray]:
    """Frame ``i`` of every camera's frames, and the state if there is one."""
    observation = {camera: frames[i] for camera, frames in videos.items()}
    if state is not None:
        observation["state"] = state
    return observation


def _videos(
    episode: PolicyEpisode, cameras: Sequence[str], timesteps: Sequence[int]
) -> dict[str, np.ndarray]:
    """Each camera's frames at ``timesteps``, decoded in one read per camera."""
    index = np.asarray(timesteps, dtype=np.int64)
    return {camera: episode.read_frames(camera, index) for camera in cameras}


def _state(episode: PolicyEpisode, t: int) -> np.ndarray | None:
    return None if episode.state is None else episode.state[t]


def _generators(seed: int, window: int, samples: int) -> Iterator[torch.Generator]:
    for k in range(samples):
        state = np.random.SeedSequence([seed, window, k]).generate_state(2, dtype=np.uint32)
        yield torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _samples(
    policy: ChunkSampler,
    observation: dict,
    instruction: str,
    seed: int,
    window: int,
    samples: int,
    chunk: int,
) -> np.ndarray:
    """(samples, chunk, action_dim) chunks, sample k drawn with the generator of (seed, window, k):
    the same seeds for two observations of one window make sampling noise common to both."""
    out = []
    for generator in _generators(seed, window, samples):
        predicted = np.asarray(
            policy.predict_action_chunk(observation, instruction, generator), dtype=np.float64
        )
        if predicted.ndim != 2 or predicted.shape[0] != chunk:
            raise ValueError(
                f"policy returned a chunk of shape {predicted.shape}; expected ({chunk}, action_dim)"
            )
        out.append(predicted)
    return np.stack(out)


def _check_samples(samples: int) -> None:
    if samples < 2:
        raise ValueError(f"samples={samples}; expected >= 2 (the sampling spread needs two samples)")


def offline_action_error(
    policy: ChunkSampler,
    train: Sequence[PolicyEpisode],
    held_out: Sequence[PolicyEpisode],
    cameras: Sequence[str],
    chunk: int,
    samples: int = 4,
    stride: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Action-chunk MSE on held-out windows (every ``stride``-th timestep), ``samples`` chunks each.

    Keys of ``action_chunk_mse`` (MSE per chunk entry, raw action units):

    - ``policy_mean``: the error of the policy's *mean* prediction, estimated without bias: the
      mean of K samples scores (error of the mean)^2 + spread/K, and spread/K is subtracted with
      the spread estimated from the same K samples. This is the number to compare with the
      deterministic baselines below. A sampler that draws exactly from the demonstrations'
      conditional distribution scores the demonstrations' noise floor here.
    - ``policy_mean_of_k``: the raw mean-of-K score (biased up by spread/K).
    - ``policy_single_sample``: the expected error of one sample, what one call of the policy gets;
      it is ``policy_mean`` + the sampling variance, so a perfect sampler scores about twice the
      noise floor: comparing one sample with a mean predictor is biased against the policy.
    - ``policy_best_of_k``: the nearest of the K samples to the demonstration; far below
      ``policy_mean`` means the samples spread over several modes, one of them the demonstrated.
    - ``task_mean_chunk``: the mean training chunk of the window's task, an image- and state-blind
      predictor; a policy that does not beat it has learned no more than the average motion.
    - ``state_nearest_neighbour`` (when episodes have state): the chunk of the same task's training
      window whose state is nearest, an image-blind lookup on proprioception alone.

    What it can show: whether the policy's average behaviour on demonstrated states matches the
    demonstrations better than blind predictors do, and how much of a single call's error is its
    own sampling spread. What it cannot show: closed-loop success (rollouts leave the
    demonstrations' states and errors compound), the demonstrations' own noise floor (MetaWorld's
    scripted oracle is deterministic, so it is ~0 there, but not for teleoperated data), or
    whether a multimodal policy picks a workable mode (``policy_best_of_k`` only hints at it).
    """
    _check_samples(samples)
    if stride < 1:
        raise ValueError(f"stride={stride}; expected a positive integer")
    task_chunks: dict[str, list[np.ndarray]] = {}
    task_states: dict[str, list[np.ndarray]] = {}
    for episode in train:
        for t in range(episode.length - chunk + 1):
            task_chunks.setdefault(episode.instruction, []).append(episode.actions[t : t + chunk])
            if episode.state is not None:
                task_states.setdefault(episode.instruction, []).append(episode.state[t])
    task_mean = {task: np.mean(chunks, axis=0) for task, chunks in task_chunks.items()}
    windows = [(e, t) for e in held_out for t in range(0, e.length - chunk + 1, stride)]
    names = ["policy_mean", "policy_mean_of_k", "policy_single_sample", "policy_best_of_k", "task_mean_chunk"]
    with_state = all(e.state is not None for e in (*train, *held_out)) and bool(task_states)
    if with_state:
        names.append("state_nearest_neighbour")
    errors: dict[str, list[float]] = {name: [] for name in names}
    variances, per_task = [], {}
    bar = tqdm(total=len(windows), desc="offline action error", disable=not progress)
    w = 0
    for episode in held_out:
        if episode.instruction not in task_mean:
            raise ValueError(
                f"held-out episode {episode.key}: no training episode of its task {episode.instruction!r}"
            )
        timesteps = list(range(0, episode.length - chunk + 1, stride))
        videos = _videos(episode, cameras, timesteps)
        for i, t in enumerate(timesteps):
            truth = episode.actions[t : t + chunk].astype(np.float64)
            observation = _observation(videos, i, _state(episode, t))
            drawn = _samples(policy, observation, episode.instruction, seed, w, samples, chunk)
            mean = drawn.mean(axis=0)
            variance = float(((drawn - mean) ** 2).sum(axis=0).mean() / (samples - 1))
            mean_of_k = float(np.mean((mean - truth) ** 2))
            per_sample = ((drawn - truth) ** 2).mean(axis=(1, 2))
            row = {
                "policy_mean": mean_of_k - variance / samples,
                "policy_mean_of_k": mean_of_k,
                "policy_single_sample": float(per_sample.mean()),
                "policy_best_of_k": float(per_sample.min()),
                "task_mean_chunk": float(np.mean((task_mean[episode.instruction] - truth) ** 2)),
            }
            if with_state:
                states = np.asarray(task_states[episode.instruction])
                nearest = int(np.argmin(((states - episode.state[t]) ** 2).sum(axis=1)))
                row["state_nearest_neighbour"] = float(
                    np.mean((task_chunks[episode.instruction][nearest] - truth) ** 2)
                )
            for name, value in row.items():
                errors[name].append(value)
                per_task.setdefault(episode.instruction, {}).setdefault(name, []).append(value)
            variances.append(variance)
            w += 1
            bar.update(1)
    bar.close()
    return {
        "held_out_episodes": len(held_out),
        "train_episodes": len(train),
        "windows": len(windows),
        "timestep_stride": stride,
        "chunk": chunk,
        "samples_per_window": samples,
        "action_chunk_mse": {name: float(np.mean(values)) for name, values in errors.items()},
        "sampling_variance": float(np.mean(variances)),
        "per_task": {
            task: {name: float(np.mean(v)) for name, v in rows.items()} for task, rows in per_task.items()
        },
    }


def image_sensitivity(
    policy: ChunkSampler,
    episodes: Sequence[PolicyEpisode],
    cameras: Sequence[str],
    chunk: int,
    samples: int = 4,
    stride: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Does the policy use its eyes? For pairs (a, b) of held-out episodes of one task (each
    episode paired with the next of its task, so with different configurations) and timesteps t
    both reach, compares the policy's mean-of-K chunk on a's observation with the one where

    - a's frame is replaced by b's frame at t (``image_shift``), or
    - a's state is replaced by b's state at t (``state_shift``),

    against how far the oracle's (demonstrated) chunks of a and b at t differ (``oracle_shift``).
    Both observations of a window are sampled with the same K seeds, so sampling noise is common to
    them and cancels: a policy that ignores the image moves by exactly 0. Shifts are root mean
    squares over chunk entries and windows, in raw action units.

    Reading it: ``image_ratio`` = image_shift / oracle_shift is ~0 when the policy ignores the
    image and ~1 when it responds to a configuration change as much as the demonstrations do
    (above 1: more than they do). ``state_ratio`` likewise for the state; a policy with
    ``state_ratio`` >> ``image_ratio`` acts on proprioception and takes the configuration (object,
    goal) from nowhere. ``sampling_spread`` is the RMS deviation of one sample from the mean of
    its K (what one call's randomness moves the chunk by) and ``mean_noise`` what is left of it
    in a mean of K; shifts below ``mean_noise`` would be invisible to a comparison without
    common seeds. The oracle shift mixes both causes (b's configuration and b's state), so the
    ratios say how strongly, not how correctly, the policy reacts.
    """
    _check_samples(samples)
    if stride < 1:
        raise ValueError(f"stride={stride}; expected a positive integer")
    by_task: dict[str, list[PolicyEpisode]] = {}
    for episode in episodes:
        by_task.setdefault(episode.instruction, []).append(episode)
    groups = [group for group in by_task.values() if len(group) >= 2]
    pairs = [(group[i], group[(i + 1) % len(group)]) for group in groups for i in range(len(group))]
    if not pairs:
        raise ValueError(
            "image_sensitivity needs two or more episodes of one task; every task has at most one"
        )
    with_state = all(e.state is not None for pair in pairs for e in pair)
    timesteps = [list(range(0, min(a.length, b.length) - chunk + 1, stride)) for a, b in pairs]
    image_sq, state_sq, oracle_sq, spread_sq = [], [], [], []
    bar = tqdm(total=sum(map(len, timesteps)), desc="image sensitivity", disable=not progress)
    w = 0
    for (a, b), steps in zip(pairs, timesteps):
        videos_a, videos_b = _videos(a, cameras, steps), _videos(b, cameras, steps)
        for i, t in enumerate(steps):
            observations = {
                "original": _observation(videos_a, i, _state(a, t)),
                "image": _observation(videos_b, i, _state(a, t)),
                "state": _observation(videos_a, i, _state(b, t)),
            }
            if not with_state:
                del observations["state"]
            drawn = {
                k: _samples(policy, o, a.instruction, seed, w, samples, chunk)
                for k, o in observations.items()
            }
            mean = drawn["original"].mean(axis=0)
            spread_sq.append(((drawn["original"] - mean) ** 2).sum(axis=0).mean() / (samples - 1))
            image_sq.append(np.mean((drawn["image"].mean(axis=0) - mean) ** 2))
            if with_state:
                state_sq.append(np.mean((drawn["state"].mean(axis=0) - mean) ** 2))
            oracle_sq.append(
                np.mean((a.actions[t : t + chunk].astype(np.float64) - b.actions[t : t + chunk]) ** 2)
            )
            w += 1
            bar.update(1)
    bar.close()
    oracle = float(np.sqrt(np.mean(oracle_sq)))
    image = float(np.sqrt(np.mean(image_sq)))
    state = float(np.sqrt(np.mean(state_sq))) if with_state else None
    spread = float(np.sqrt(np.mean(spread_sq)))
    return {
        "pairs": len(pairs),
        "windows": w,
        "timestep_stride": stride,
        "samples_per_window": samples,
        "oracle_shift": oracle,
        "image_shift": image,
        "state_shift": state,
        "image_ratio": image / oracle if oracle > 0 else None,
        "state_ratio": state / oracle if state is not None and oracle > 0 else None,
        "sampling_spread": spread,
        "mean_noise": spread / float(np.sqrt(samples)),
    }

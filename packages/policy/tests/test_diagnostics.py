import numpy as np
import pytest
import torch

from vpp.policy.data import ArrayEpisodeSource
from vpp.policy.diagnostics import image_sensitivity, offline_action_error, split_by_task

CHUNK = 4
NOISE = 0.1  # standard deviation of the demonstrations' (and the samplers') action noise


def noisy_demos(tasks=2, per_task=25, length=40, seed=0):
    """Per episode a goal g (4 values) that the state shows all along; actions are g plus
    Gaussian noise, so the best any predictor can score is NOISE**2 per entry."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(per_task):
        for task in range(tasks):
            goal = rng.uniform(-1, 1, 4).astype(np.float32)
            out.append(
                {
                    "frames": {"corner": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8)},
                    "actions": goal + NOISE * rng.normal(size=(length, 4)).astype(np.float32),
                    "state": np.repeat(goal[None], length, axis=0),
                    "instruction": f"task {task}",
                }
            )
    source = ArrayEpisodeSource(out)
    return [source.episode(i) for i in range(len(source))]


class GoalSampler:
    """Draws chunks from the demonstrations' own conditional distribution (``noise``), shifted by
    ``bias``; with noise 0 it is the best deterministic predictor."""

    def __init__(self, noise=NOISE, bias=0.0):
        self.noise, self.bias = noise, bias

    def predict_action_chunk(self, observation, instruction, generator=None):
        eps = torch.randn(CHUNK, 4, generator=generator, dtype=torch.float64).numpy()
        return observation["state"][None] + self.bias + self.noise * eps


def test_offline_error_of_a_perfect_sampler_is_the_noise_floor_not_twice_it():
    train, held_out = split_by_task(noisy_demos(), train_per_task=5, held_out_per_task=20)
    assert len(train) == 10 and len(held_out) == 40
    floor = NOISE**2
    perfect = offline_action_error(GoalSampler(), train, held_out, ["corner"], CHUNK, samples=4, stride=2)
    mean_predictor = offline_action_error(
        GoalSampler(noise=0.0), train, held_out, ["corner"], CHUNK, samples=4, stride=2
    )
    mse = perfect["action_chunk_mse"]
    assert perfect["windows"] == 40 * 19
    # one sample scores about twice the floor: the bias of the old single-sample metric
    assert mse["policy_single_sample"] / floor == pytest.approx(2.0, rel=0.1)
    assert mse["policy_mean_of_k"] / floor == pytest.approx(1.25, rel=0.1)
    # the debiased mean scores what the best deterministic predictor scores
    assert mse["policy_mean"] / floor == pytest.approx(1.0, rel=0.1)
    assert mean_predictor["action_chunk_mse"]["policy_mean"] / floor == pytest.approx(1.0, rel=0.1)
    assert perfect["sampling_variance"] / floor == pytest.approx(1.0, rel=0.1)
    assert mean_predictor["sampling_variance"] == 0.0
    assert mse["policy_best_of_k"] < mse["policy_single_sample"]
    # goals differ per episode: the task's mean chunk is far off; the state lookup finds another goal
    assert mse["task_mean_chunk"] > 10 * floor and mse["state_nearest_neighbour"] > 2 * floor
    assert set(perfect["per_task"]) == {"task 0", "task 1"}


def test_offline_error_sees_a_biased_sampler():
    train, held_out = split_by_task(noisy_demos(), train_per_task=5, held_out_per_task=20)
    biased = offline_action_error(
        GoalSampler(bias=0.2), train, held_out, ["corner"], CHUNK, samples=4, stride=2
    )
    assert biased["action_chunk_mse"]["policy_mean"] / (NOISE**2 + 0.2**2) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="samples=1"):
        offline_action_error(GoalSampler(), train, held_out, ["corner"], CHUNK, samples=1)
    with pytest.raises(ValueError, match="no held-out episodes"):
        split_by_task(train, train_per_task=5, held_out_per_task=1)


class FrameReader:
    """Returns the demonstrated chunk of whichever episode and timestep the frame comes from,
    plus sampling noise: a policy that takes everything from the image."""

    def __init__(self, episodes):
        self.lookup = {}
        for episode in episodes:
            frames = episode.read_frames("corner", np.arange(episode.length))
            for t in range(episode.length - CHUNK + 1):
                self.lookup[frames[t].tobytes()] = episode.actions[t : t + CHUNK].astype(np.float64)

    def predict_action_chunk(self, observation, instruction, generator=None):
        return (
            self.lookup[observation["corner"].tobytes()]
            + NOISE * torch.randn(CHUNK, 4, generator=generator, dtype=torch.float64).numpy()
        )


def test_image_sensitivity_tells_a_blind_policy_from_one_that_reads_the_image():
    _, held_out = split_by_task(noisy_demos(per_task=8), train_per_task=4, held_out_per_task=4)
    blind = image_sensitivity(GoalSampler(), held_out, ["corner"], CHUNK, samples=4, stride=8)
    reader = image_sensitivity(FrameReader(held_out), held_out, ["corner"], CHUNK, samples=4, stride=8)
    assert blind["pairs"] == reader["pairs"] == 8 and blind["windows"] == 8 * 5
    assert blind["oracle_shift"] == reader["oracle_shift"] > 0.5
    # common seeds cancel the sampling noise exactly: the blind policy does not move at all
    assert blind["image_ratio"] == 0.0 and blind["image_shift"] == 0.0
    # it moves with the state, which carries the goal here, about as far as the oracle's actions
    assert blind["state_ratio"] == pytest.approx(1.0, abs=0.1)
    assert reader["image_ratio"] == pytest.approx(1.0, abs=1e-9) and reader["state_ratio"] == 0.0
    for result in (blind, reader):
        assert result["sampling_spread"] == pytest.approx(NOISE, rel=0.2)
        assert result["mean_noise"] == pytest.approx(result["sampling_spread"] / 2)
    with pytest.raises(ValueError, match="two or more episodes of one task"):
        image_sensitivity(GoalSampler(), held_out[:2], ["corner"], CHUNK)

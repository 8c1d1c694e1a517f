"""Demonstrations from MetaWorld's scripted oracles, written as a LeRobotDataset v3 folder.

Per task, attempt k starts from configuration k of the ``train`` split (object and goal positions
drawn by MetaWorld's own randomisation from a seed stream disjoint from evaluation's, see
``vpp.policy.envs.metaworld``); only successful attempts are kept. Progress per task (next
attempt, kept, dropped) and every kept episode's configuration (``rand_vec``) live in
``collection_state.json`` beside the dataset, rewritten after every episode, so a killed
collection resumes where it stopped, loses no finished episode and records none twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vpp.policy.envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldTask, check_task
from vpp.policy.envs.metaworld_tasks import ALL_TASKS

logger = logging.getLogger(__name__)

STATE_FILE = "collection_state.json"
METAWORLD_FPS = 80  # MetaWorld steps 12.5 ms of simulated time per action (frame_skip 5 x 2.5 ms)
COLLECTION_SPLIT = "train"
# Names how attempts map to configurations; folders without it were collected from MT1's 50 fixed
# train_tasks (attempt k -> configuration k % 50), the ones evaluation used to replay.
CONFIGURATIONS = "metaworld-seeded-reset-v1"


# Video encodings: "lossless" keeps single-pixel details of small renders (a 64 px MetaWorld goal
# marker, which 4:2:0 AV1 turns nearly white) at ~2.7x the bytes of "compact".
VIDEO_SETTINGS = {
    "lossless": {"codec": "libx264", "pix_fmt": "yuv444p", "crf": 0},
    "compact": {},
}


class OldCollectionError(ValueError):
    """The folder holds demonstrations whose configurations cannot be told apart from evaluation's."""


@dataclass
class KeptEpisode:
    """A dataset episode and the configuration it started from: attempt ``attempt`` of the
    collection split, whose MetaWorld ``rand_vec`` this is."""

    episode_index: int
    attempt: int
    rand_vec: list[float]


@dataclass
class TaskProgress:
    next_attempt: int = 0
    kept: int = 0
    dropped: int = 0
    episodes: list[KeptEpisode] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> TaskProgress:
        return cls(**{**data, "episodes": [KeptEpisode(**e) for e in data.get("episodes", [])]})


@dataclass
class CollectionState:
    """``pending`` is the episode being written: if the dataset holds it on resume, the writer
    committed it before the state was saved, and it is recorded as kept instead of recollected."""

    config: dict
    tasks: dict[str, TaskProgress] = field(default_factory=dict)
    pending: dict | None = None

    def save(self, folder: Path) -> None:
        tmp = folder / (STATE_FILE + ".tmp")
        payload = {"config": self.config, "tasks": {k: asdict(v) for k, v in self.tasks.items()}, "pending": self.pending}
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path, config: dict) -> CollectionState:
        path = folder / STATE_FILE
        if not path.is_file():
            info = folder / "meta" / "info.json"
            if info.is_file() and json.loads(info.read_text()).get("total_episodes", 0) > 0:
                raise OldCollectionError(
                    f"{folder} holds a dataset but no {STATE_FILE}, so which MetaWorld configurations its episodes "
                    "start from is unknown; collect into a new folder"
                )
            return cls(config=config)
        data = json.loads(path.read_text())
        if "configurations" not in data["config"]:
            raise OldCollectionError(
                f"{folder} was collected by the old scheme (attempt k replayed MT1's fixed configuration k % 50, "
                "the same initial states evaluation replayed); collect into a new folder"
            )
        if data["config"] != config:
            raise ValueError(
                f"{folder} was collected with {data['config']}, not {config}; use another output folder "
                "or the same settings to resume"
            )
        tasks = {k: TaskProgress.from_json(v) for k, v in data["tasks"].items()}
        return cls(config=config, tasks=tasks, pending=data.get("pending"))

    def episode_configurations(self) -> dict[int, tuple[str, KeptEpisode]]:
        """Dataset episode index -> (task, kept episode with its configuration)."""
        return {e.episode_index: (task, e) for task, p in self.tasks.items() for e in p.episodes}


def collected_configurations(folder: str | Path) -> dict[int, tuple[str, KeptEpisode]]:
    """The configuration every episode of a collected folder started from, by episode index."""
    folder = Path(folder)
    data = json.loads((folder / STATE_FILE).read_text())
    return CollectionState.load(folder, data["config"]).episode_configurations()


def metaworld_features(cameras: Sequence[str], image_size: int) -> dict:
    features = {
        f"observation.images.{camera}": {"dtype": "video", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]}
        for camera in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": ["hand_x", "hand_y", "hand_z", "gripper"]}
    features["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "gripper"]}
    return features


def run_oracle_episode(env: MetaWorldTask, index: int, split: str) -> tuple[dict[str, np.ndarray], bool]:
    """One oracle rollout from configuration ``index`` of ``split``: frames/state before each
    action, and the actions; and success. The configuration is left in ``env.rand_vec``."""
    obs = env.reset(index, split)
    frames: dict[str, list] = {c: [] for c in env.cameras}
    states, actions = [], []
    success = False
    while True:
        action = env.oracle_action()
        for camera in env.cameras:
            frames[camera].append(obs[camera])
        states.append(obs["state"])
        actions.append(action)
        result = env.step(action)
        obs = result.observation
        if result.done:
            success = result.success
            break
    episode = {f"observation.images.{c}": np.stack(v) for c, v in frames.items()}
    episode["observation.state"] = np.stack(states).astype(np.float32)
    episode["action"] = np.clip(np.stack(actions), -1, 1).astype(np.float32)
    return episode, success


def collect_metaworld(
    output: str | Path,
    tasks: Sequence[str] = ALL_TASKS,
    episodes_per_task: int = 50,
    cameras: Sequence[str] = ("corner",),
    image_size: int = 64,
    max_attempts_per_episode: int = 3,
    progress: bool = True,
    video: str = "lossless",
) -> CollectionState:
    """Collects until every task has ``episodes_per_task`` successful oracle episodes (or ran out
    of attempts). ``video`` picks the encoding of new folders (``VIDEO_SETTINGS``); a resumed
    folder keeps the encoding it was started with."""
    from vpp.data.lerobot import LeRobotDatasetWriter

    if video not in VIDEO_SETTINGS:
        raise ValueError(f"video={video!r}; expected one of {', '.join(VIDEO_SETTINGS)}")

    tasks = [check_task(t) for t in tasks]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config = {
        "cameras": list(cameras), "image_size": image_size, "fps": METAWORLD_FPS, "split": COLLECTION_SPLIT,
        "configurations": CONFIGURATIONS,
    }
    state = CollectionState.load(output, config)
    features = metaworld_features(cameras, image_size)
    writer = LeRobotDatasetWriter(
        output, fps=METAWORLD_FPS, features=features, robot_type="sawyer", **VIDEO_SETTINGS[video]
    )
    try:
        _settle_pending(state, writer.num_episodes, output)
        state.save(output)
    except BaseException:
        writer.finalize()
        raise
    total = len(tasks) * episodes_per_task
    done = sum(min(state.tasks.get(t, TaskProgress()).kept, episodes_per_task) for t in tasks)
    bar = tqdm(total=total, initial=done, desc="metaworld oracle demos", disable=not progress)
    try:
        for task in tasks:
            progress_of = state.tasks.setdefault(task, TaskProgress())
            if progress_of.kept >= episodes_per_task:
                continue
            with MetaWorldTask(task, cameras, image_size) as env:
                while progress_of.kept < episodes_per_task:
                    if progress_of.next_attempt >= max_attempts_per_episode * episodes_per_task:
                        logger.warning("%s: gave up after %d attempts with %d successes", task, progress_of.next_attempt, progress_of.kept)
                        break
                    episode, success = run_oracle_episode(env, progress_of.next_attempt, COLLECTION_SPLIT)
                    if success:
                        kept = KeptEpisode(writer.num_episodes, progress_of.next_attempt, env.rand_vec.tolist())
                        state.pending = {"task": task, **asdict(kept)}
                        state.save(output)
                        writer.add_episode(episode, task=env.instruction)
                        state.pending = None
                        progress_of.episodes.append(kept)
                        progress_of.kept += 1
                        bar.update(1)
                    else:
                        progress_of.dropped += 1
                    progress_of.next_attempt += 1
                    state.save(output)
    finally:
        writer.finalize()
        bar.close()
    dropped = {t: p.dropped for t, p in state.tasks.items() if p.dropped}
    logger.info("kept %d episodes; dropped unsuccessful oracle episodes: %s", sum(p.kept for p in state.tasks.values()), dropped or "none")
    return state


def _settle_pending(state: CollectionState, dataset_episodes: int, folder: Path) -> None:
    """Records the episode a killed run was writing if the dataset committed it, and checks that
    the state accounts for exactly the dataset's episodes."""
    if state.pending is not None:
        pending = dict(state.pending)
        task = pending.pop("task")
        if dataset_episodes > pending["episode_index"]:
            progress = state.tasks.setdefault(task, TaskProgress())
            progress.episodes.append(KeptEpisode(**pending))
            progress.kept += 1
            progress.next_attempt = pending["attempt"] + 1
        state.pending = None
    recorded = sum(p.kept for p in state.tasks.values())
    if recorded != dataset_episodes:
        raise ValueError(
            f"{folder}: {STATE_FILE} records {recorded} kept episodes but the dataset holds {dataset_episodes}; "
            "the folder was changed outside the collector, collect into a new folder"
        )

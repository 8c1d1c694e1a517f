"""Demonstrations from MetaWorld's scripted oracles, written as a LeRobotDataset v3 folder.

Per task, attempt k resets the environment with seed k (which also picks the object/goal
variation); only successful attempts are kept. Progress per task (next attempt, kept, dropped)
lives in ``collection_state.json`` beside the dataset and is rewritten after every episode, so a
killed collection resumes where it stopped and loses no finished episode.
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


@dataclass
class TaskProgress:
    next_attempt: int = 0
    kept: int = 0
    dropped: int = 0


@dataclass
class CollectionState:
    config: dict
    tasks: dict[str, TaskProgress] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        tmp = folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"config": self.config, "tasks": {k: asdict(v) for k, v in self.tasks.items()}}, indent=2))
        os.replace(tmp, folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path, config: dict) -> CollectionState:
        path = folder / STATE_FILE
        if not path.is_file():
            return cls(config=config)
        data = json.loads(path.read_text())
        if data["config"] != config:
            raise ValueError(
                f"{folder} was collected with {data['config']}, not {config}; use another output folder "
                "or the same settings to resume"
            )
        return cls(config=config, tasks={k: TaskProgress(**v) for k, v in data["tasks"].items()})


def metaworld_features(cameras: Sequence[str], image_size: int) -> dict:
    features = {
        f"observation.images.{camera}": {"dtype": "video", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]}
        for camera in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": ["hand_x", "hand_y", "hand_z", "gripper"]}
    features["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "gripper"]}
    return features


def run_oracle_episode(env: MetaWorldTask, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One oracle rollout: frames/state before each action, and the actions; and success."""
    obs = env.reset(seed)
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
) -> CollectionState:
    from vpp.data.lerobot import LeRobotDatasetWriter

    tasks = [check_task(t) for t in tasks]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config = {"cameras": list(cameras), "image_size": image_size, "fps": METAWORLD_FPS}
    state = CollectionState.load(output, config)
    writer = LeRobotDatasetWriter(output, fps=METAWORLD_FPS, features=metaworld_features(cameras, image_size), robot_type="sawyer")
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
                    episode, success = run_oracle_episode(env, progress_of.next_attempt)
                    if success:
                        writer.add_episode(episode, task=env.instruction)
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

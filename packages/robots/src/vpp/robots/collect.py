"""Demonstrations from scripted experts in simulation, written as LeRobot v3 datasets, resumably.

One collector serves two sources of demonstrations:
- `MetaWorldOracle`: MetaWorld's scripted oracles. Attempt k of a task starts from configuration k
  of the ``train`` split (object and goal positions drawn by MetaWorld's own randomisation from a
  seed stream disjoint from evaluation's, see `vpp.robots.envs.metaworld`).
- `GraspExpert`: `GraspCubeExpert` on a simulated arm. Attempt k respawns the cube from seed
  `seed + k`, starts the arm at its ready pose and runs the expert at the policy rate through the
  `SimulatedTimeLoop` (the ControlLoop's waypoints, servo interpolation and SafetyFilter, with the
  physics advanced tick by tick), so the recorded actions are the waypoint steps the loop
  commanded; an attempt that has not lifted the cube within `max_seconds` of simulated time, or
  did in fewer than `min_ticks` ticks, is dropped.

Only successful attempts are kept. `collection_state.json` beside the dataset holds the settings
and, per task, every attempt: the seed its start was drawn from, the start itself (MetaWorld's
``rand_vec``, the cube's position) and the dataset episode it became (none if it was dropped).
Evaluations check their starts against it. The state is rewritten after every attempt, and an
episode is recorded as pending before the dataset commits it, so a killed collection resumes
where it stopped, loses no finished episode and records none twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from vpp.robots.control_loop import RolloutRecorder, rollout_features
from vpp.robots.drivers.sim import CAMERA_NAMES, SimConfig, build_sim_arm
from vpp.robots.envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldTask, check_task, configuration_seed
from vpp.robots.envs.metaworld_tasks import ALL_TASKS
from vpp.robots.experts import GRASP_INSTRUCTION, GraspCubeExpert
from vpp.robots.sim_loop import SimulatedTimeConfig, SimulatedTimeLoop

logger = logging.getLogger(__name__)

STATE_FILE = "collection_state.json"
# Version 2: one state for every source, every attempt recorded. Version 1 (no "format" key) had
# two layouts: MetaWorld's per-task counts with its kept episodes' configurations ("config"), and
# the arm's counts with every attempt's cube start ("settings", "progress").
STATE_FORMAT = 2
METAWORLD_FPS = 80  # MetaWorld steps 12.5 ms of simulated time per action (frame_skip 5 x 2.5 ms)
COLLECTION_SPLIT = "train"
# Names how attempts map to configurations; folders without it were collected from MT1's 50 fixed
# train_tasks (attempt k -> configuration k % 50), the ones evaluation used to replay.
CONFIGURATIONS = "metaworld-seeded-reset-v1"
GRASP_TASK = "grasp-cube"

# Video encodings: "lossless" keeps single-pixel details of small renders (a 64 px MetaWorld goal
# marker, which 4:2:0 AV1 turns nearly white; the few pixels of the arm's red cube at 32 px) at
# ~2.7x the bytes of "compact".
VIDEO_SETTINGS = {
    "lossless": {"codec": "libx264", "pix_fmt": "yuv444p", "crf": 0},
    "compact": {},
}


class CollectionError(ValueError):
    """The collection cannot go on in this folder: a setting differs from the folder's, or the
    folder changed outside the collector."""


class OldCollectionError(CollectionError):
    """The folder was collected by an older collector whose record cannot serve the checks."""


@dataclass
class Attempt:
    """Attempt ``attempt`` of a task: the seed its start was drawn from, that start (MetaWorld's
    ``rand_vec`` or the cube's position; None for a dropped attempt of a version-1 MetaWorld
    folder, which did not record those) and the dataset episode it became (None: dropped)."""

    attempt: int
    seed: int
    start: list[float] | None
    episode_index: int | None = None


@dataclass
class TaskProgress:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def next_attempt(self) -> int:
        return len(self.attempts)

    @property
    def kept(self) -> int:
        return sum(a.episode_index is not None for a in self.attempts)

    @property
    def dropped(self) -> int:
        return self.next_attempt - self.kept

    @property
    def episodes(self) -> list[Attempt]:
        """The kept attempts, in dataset order."""
        return [a for a in self.attempts if a.episode_index is not None]


@dataclass
class CollectionState:
    """What a folder was collected with (``source``, ``settings``) and every attempt per task.
    ``pending`` is the attempt being written: if the dataset holds its episode on resume, the
    writer committed it before the state was saved, and it is recorded as kept instead of
    collected again."""

    source: str
    settings: dict
    tasks: dict[str, TaskProgress] = field(default_factory=dict)
    pending: dict | None = None

    def save(self, folder: Path) -> None:
        tmp = folder / (STATE_FILE + ".tmp")
        payload = {
            "format": STATE_FORMAT,
            "source": self.source,
            "settings": self.settings,
            "tasks": {task: [asdict(a) for a in progress.attempts] for task, progress in self.tasks.items()},
            "pending": self.pending,
        }
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, folder / STATE_FILE)

    @classmethod
    def read(cls, folder: str | Path) -> CollectionState:
        """The state of a collected folder, as it was saved."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; expected a folder written by `vpp-robot collect`"
            )
        data = json.loads(path.read_text())
        if "format" not in data:
            return _read_version_1(Path(folder), data)
        if data["format"] != STATE_FORMAT:
            raise CollectionError(f"{path} has format {data['format']!r}; expected {STATE_FORMAT}")
        tasks = {
            task: TaskProgress([Attempt(**a) for a in attempts]) for task, attempts in data["tasks"].items()
        }
        return cls(data["source"], data["settings"], tasks, data["pending"])

    @classmethod
    def load(cls, folder: Path, source: str, settings: dict) -> CollectionState:
        """The folder's state if it was collected from ``source`` with ``settings``, a new one if
        the folder holds no dataset yet."""
        if not (folder / STATE_FILE).is_file():
            info = folder / "meta" / "info.json"
            if info.is_file() and json.loads(info.read_text()).get("total_episodes", 0) > 0:
                raise OldCollectionError(
                    f"{folder} holds a dataset but no {STATE_FILE}, so which starts its episodes came from "
                    "is unknown; collect into a new folder"
                )
            return cls(source, settings)
        state = cls.read(folder)
        if (state.source, state.settings) != (source, settings):
            raise CollectionError(
                f"{folder} was collected with {state.source} {state.settings}, not {source} {settings}; use another "
                "output folder or the same settings to resume"
            )
        return state

    def short_tasks(self, tasks: Sequence[str], episodes_per_task: int) -> dict[str, int]:
        """Task -> kept episodes, for the tasks that ran out of attempts short of ``episodes_per_task``."""
        kept = {task: self.tasks[task].kept if task in self.tasks else 0 for task in tasks}
        return {task: n for task, n in kept.items() if n < episodes_per_task}

    def episode_starts(self) -> dict[int, tuple[str, Attempt]]:
        """Dataset episode index -> (task, the kept attempt with its seed and start)."""
        return {a.episode_index: (task, a) for task, p in self.tasks.items() for a in p.episodes}


def _read_version_1(folder: Path, data: dict) -> CollectionState:
    """A version-1 MetaWorld state converted (seeds follow from task and attempt); a version-1
    arm state is refused: it did not record which attempts became which episodes."""
    if "progress" in data:
        raise OldCollectionError(
            f"{folder} was collected by the old sim-arm collector, whose {STATE_FILE} does not say which attempts "
            "became which episodes; collect into a new folder (a few minutes for the demo's 8 episodes)"
        )
    config = data["config"]
    if "configurations" not in config:
        raise OldCollectionError(
            f"{folder} was collected by the old scheme (attempt k replayed MT1's fixed configuration k % 50, "
            "the same initial states evaluation replayed); collect into a new folder"
        )
    tasks = {}
    for task, progress in data["tasks"].items():
        kept = {e["attempt"]: e for e in progress.get("episodes", [])}
        attempts = []
        for k in range(progress["next_attempt"]):
            episode = kept.get(k)
            seed = configuration_seed(task, config["split"], k)
            if episode is None:
                attempts.append(Attempt(k, seed, None))
            else:
                attempts.append(Attempt(k, seed, episode["rand_vec"], episode["episode_index"]))
        tasks[task] = TaskProgress(attempts)
    pending = data.get("pending")
    if pending is not None:
        pending = {
            "task": pending["task"],
            "attempt": pending["attempt"],
            "seed": configuration_seed(pending["task"], config["split"], pending["attempt"]),
            "start": pending["rand_vec"],
            "episode_index": pending["episode_index"],
        }
    return CollectionState(MetaWorldOracle.name, config, tasks, pending)


@dataclass
class AttemptOutcome:
    """One expert attempt: the seed its start was drawn from, the start, and the recorded
    episode (frames/state before each action, and the actions) if it succeeded."""

    seed: int
    start: list[float]
    episode: dict[str, np.ndarray] | None
    why_dropped: str = ""


class DemonstrationSource(Protocol):
    """Runs a scripted expert on one task at a time; ``settings`` are what a resumed collection
    must share with the folder's."""

    name: str
    settings: dict

    def writer_options(self) -> dict[str, Any]:
        """fps, features, robot_type and video settings of the dataset."""
        ...

    def instruction(self, task: str) -> str: ...

    def session(self, task: str) -> AbstractContextManager[Callable[[int], AttemptOutcome]]:
        """Opens the task's simulation; the callable runs attempt k in it."""
        ...


class MetaWorldOracle:
    name = "metaworld-oracle"

    def __init__(
        self, cameras: Sequence[str] = ("corner",), image_size: int = 64, video: str = "lossless"
    ) -> None:
        if video not in VIDEO_SETTINGS:
            raise ValueError(f"video={video!r}; expected one of {', '.join(VIDEO_SETTINGS)}")
        self.cameras = list(cameras)
        self.image_size = image_size
        self.video = video
        self.settings = {
            "cameras": self.cameras,
            "image_size": image_size,
            "fps": METAWORLD_FPS,
            "split": COLLECTION_SPLIT,
            "configurations": CONFIGURATIONS,
        }

    def writer_options(self) -> dict[str, Any]:
        return {
            "fps": METAWORLD_FPS,
            "features": metaworld_features(self.cameras, self.image_size),
            "robot_type": "sawyer",
            **VIDEO_SETTINGS[self.video],
        }

    def instruction(self, task: str) -> str:
        from vpp.robots.envs.metaworld_tasks import INSTRUCTIONS

        return INSTRUCTIONS[task]

    @contextmanager
    def session(self, task: str) -> Iterator[Callable[[int], AttemptOutcome]]:
        with MetaWorldTask(task, self.cameras, self.image_size) as env:

            def attempt(k: int) -> AttemptOutcome:
                episode, success = run_oracle_episode(env, k, COLLECTION_SPLIT)
                seed = configuration_seed(task, COLLECTION_SPLIT, k)
                return AttemptOutcome(
                    seed, env.rand_vec.tolist(), episode if success else None, "the oracle failed"
                )

            yield attempt


@dataclass(frozen=True)
class CollectConfig:
    """Settings of the simulated arm's expert demonstrations."""

    robot: str = "sim-panda"
    episodes: int = 8
    # An episode ends once the expert has lifted the cube; this caps a stuck one (simulated time).
    max_seconds: float = 15.0
    # Episodes shorter than this are dropped: the policy trains on windows of one action chunk
    # (and the TVP on clips of 16 frames at stride 2 from the tiny preset's 8).
    min_ticks: int = 16
    rate_hz: float = 10.0
    servo_rate_hz: float = 100.0
    image_size: int = 32
    seed: int = 0
    # Wider than the sim's default jitter: the policy has to find the cube in the image.
    object_jitter_m: float = 0.1
    # Attempts allowed per wanted episode before giving up.
    max_attempts_per_episode: int = 3

    def __post_init__(self) -> None:
        if self.robot != "sim-panda":
            raise ValueError(
                f"robot={self.robot!r}; expected 'sim-panda' (the expert's grasp is tuned to the Panda hand)"
            )
        if self.episodes < 1 or self.min_ticks < 1 or not self.max_seconds > 0:
            raise ValueError(
                f"episodes={self.episodes}, min_ticks={self.min_ticks}, max_seconds={self.max_seconds}; "
                "expected positive values"
            )


class GraspExpert:
    name = "sim-grasp-expert"

    def __init__(self, config: CollectConfig) -> None:
        self.config = config
        # The episode count is not a setting: asking for more episodes later extends the dataset.
        excluded = ("episodes", "max_attempts_per_episode", "max_seconds")
        self.settings = {key: value for key, value in asdict(config).items() if key not in excluded}

    def writer_options(self) -> dict[str, Any]:
        shapes = dict.fromkeys(CAMERA_NAMES, (self.config.image_size, self.config.image_size, 3))
        return {
            "fps": round(self.config.rate_hz),
            "features": rollout_features(shapes),
            "robot_type": self.config.robot.replace("-", "_"),
            **VIDEO_SETTINGS["lossless"],
        }

    def instruction(self, task: str) -> str:
        return GRASP_INSTRUCTION

    @contextmanager
    def session(self, task: str) -> Iterator[Callable[[int], AttemptOutcome]]:
        config = self.config
        sim_config = SimConfig(
            image_height=config.image_size,
            image_width=config.image_size,
            realtime=False,
            start_tcp_position="ready",
            object_jitter_m=config.object_jitter_m,
            seed=config.seed,
        )
        # The expert replans from the observed pose after each of its chunks.
        loop_config = SimulatedTimeConfig(
            policy_rate_hz=config.rate_hz, servo_rate_hz=config.servo_rate_hz, execute_steps=None
        )
        max_ticks = round(config.max_seconds * config.rate_hz)
        arm = build_sim_arm(config.robot, sim_config, config.servo_rate_hz)
        with arm:
            cameras = arm.cameras()

            def attempt(k: int) -> AttemptOutcome:
                seed = config.seed + k
                arm.reset(seed)
                cube_start = arm.object_position().tolist()
                expert = GraspCubeExpert(arm, step_s=1.0 / config.rate_hz)
                recorder = RolloutRecorder([camera.name for camera in cameras])
                report = SimulatedTimeLoop(arm, cameras, expert, loop_config, recorder=recorder).run(
                    GRASP_INSTRUCTION, max_ticks=max_ticks, until=expert.done
                )
                if report.finished and len(recorder) >= config.min_ticks:
                    return AttemptOutcome(seed, cube_start, recorder.frames())
                why = (
                    f"the expert did not lift the cube within {config.max_seconds:g} s, or in fewer than "
                    f"{config.min_ticks} ticks ({len(recorder)} ticks)"
                )
                return AttemptOutcome(seed, cube_start, None, why)

            yield attempt


def collect(
    output: str | Path,
    source: DemonstrationSource,
    tasks: Sequence[str],
    episodes_per_task: int,
    max_attempts_per_episode: int = 3,
    progress: bool = True,
) -> CollectionState:
    """Runs ``source``'s expert until every task has ``episodes_per_task`` kept episodes in
    ``output``, or has used ``max_attempts_per_episode * episodes_per_task`` attempts (logged,
    and the task is left short: `CollectionState.short_tasks`)."""
    from vpp.data.lerobot import LeRobotDatasetWriter

    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task={episodes_per_task}; expected a positive number")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state = CollectionState.load(output, source.name, source.settings)
    writer = LeRobotDatasetWriter(output, **source.writer_options())
    try:
        _settle_pending(state, writer.num_episodes, output)
        state.save(output)
    except BaseException:
        writer.finalize()
        raise
    total = len(tasks) * episodes_per_task
    done = sum(min(state.tasks.get(t, TaskProgress()).kept, episodes_per_task) for t in tasks)
    bar = tqdm(total=total, initial=done, desc=f"{source.name} demos", unit="episode", disable=not progress)
    try:
        for task in tasks:
            task_progress = state.tasks.setdefault(task, TaskProgress())
            if task_progress.kept >= episodes_per_task:
                continue
            with source.session(task) as run_attempt:
                while task_progress.kept < episodes_per_task:
                    if task_progress.next_attempt >= max_attempts_per_episode * episodes_per_task:
                        logger.warning(
                            "%s: gave up after %d attempts with %d kept episodes",
                            task,
                            task_progress.next_attempt,
                            task_progress.kept,
                        )
                        break
                    k = task_progress.next_attempt
                    outcome = run_attempt(k)
                    attempt = Attempt(k, outcome.seed, outcome.start)
                    if outcome.episode is not None:
                        attempt.episode_index = writer.num_episodes
                        state.pending = {"task": task, **asdict(attempt)}
                        state.save(output)
                        writer.add_episode(outcome.episode, task=source.instruction(task))
                        state.pending = None
                        bar.update(1)
                    else:
                        logger.warning("%s attempt %d: %s; dropped", task, k, outcome.why_dropped)
                    task_progress.attempts.append(attempt)
                    state.save(output)
    finally:
        writer.finalize()
        bar.close()
    kept = sum(p.kept for p in state.tasks.values())
    dropped = {t: p.dropped for t, p in state.tasks.items() if p.dropped}
    logger.info("%s: %d kept episodes; dropped unsuccessful attempts: %s", output, kept, dropped or "none")
    return state


def _settle_pending(state: CollectionState, dataset_episodes: int, folder: Path) -> None:
    """Records the episode a killed run was writing if the dataset committed it, and checks that
    the state accounts for exactly the dataset's episodes."""
    if state.pending is not None:
        pending = dict(state.pending)
        task = pending.pop("task")
        if dataset_episodes > pending["episode_index"]:
            state.tasks.setdefault(task, TaskProgress()).attempts.append(Attempt(**pending))
        state.pending = None
    recorded = sum(p.kept for p in state.tasks.values())
    if recorded != dataset_episodes:
        raise CollectionError(
            f"{folder}: {STATE_FILE} records {recorded} kept episodes but the dataset holds {dataset_episodes}; "
            "the folder was changed outside the collector, collect into a new folder"
        )


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
    """MetaWorld oracle demonstrations of ``tasks``. ``video`` picks the encoding of new folders
    (``VIDEO_SETTINGS``); a resumed folder keeps the encoding it was started with."""
    source = MetaWorldOracle(cameras, image_size, video)
    tasks = [check_task(t) for t in tasks]
    return collect(output, source, tasks, episodes_per_task, max_attempts_per_episode, progress)


def collect_sim_demos(
    output: str | Path, config: CollectConfig = CollectConfig(), progress: bool = True
) -> CollectionState:
    """Expert episodes on the simulated arm until the dataset in ``output`` holds ``config.episodes``."""
    return collect(
        output, GraspExpert(config), [GRASP_TASK], config.episodes, config.max_attempts_per_episode, progress
    )


def metaworld_features(cameras: Sequence[str], image_size: int) -> dict:
    features = {
        f"observation.images.{camera}": {
            "dtype": "video",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        for camera in cameras
    }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": (STATE_DIM,),
        "names": ["hand_x", "hand_y", "hand_z", "gripper"],
    }
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

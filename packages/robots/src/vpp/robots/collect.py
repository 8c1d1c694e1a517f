"""Demonstrations on a simulated arm: the scripted expert in simulated time, as LeRobot v3.

Attempt k respawns the cube from seed `seed + k`, starts the arm at its ready pose and runs
`GraspCubeExpert` at the policy rate until it holds the cube up at its lift height, through the
`SimulatedTimeLoop` (the ControlLoop's waypoints, servo interpolation and SafetyFilter, with the
physics advanced tick by tick instead of by the wall clock, ~10x faster than real time here), so
the recorded actions are the waypoint steps the loop commanded. Attempts that do not finish within
`max_seconds` of simulated time are dropped. Every kept episode is committed to the dataset at
once and `collection_state.json` is rewritten after every attempt (with the cube's start of every
attempt, which evaluations check theirs against), so a killed collection resumes where it stopped
and loses no finished episode.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vpp.robots.control_loop import RolloutRecorder, rollout_features
from vpp.robots.drivers.sim import CAMERA_NAMES, SimConfig, build_sim_arm
from vpp.robots.experts import GRASP_INSTRUCTION, GraspCubeExpert
from vpp.robots.sim_loop import SimulatedTimeConfig, SimulatedTimeLoop

logger = logging.getLogger(__name__)

STATE_FILE = "collection_state.json"


class CollectionError(RuntimeError):
    """The collection cannot go on: a setting differs from the folder's, or the loop failed."""


@dataclass(frozen=True)
class CollectConfig:
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
            raise ValueError(f"robot={self.robot!r}; expected 'sim-panda' (the expert's grasp is tuned to the Panda hand)")
        if self.episodes < 1 or self.min_ticks < 1 or not self.max_seconds > 0:
            raise ValueError(f"episodes={self.episodes}, min_ticks={self.min_ticks}, max_seconds={self.max_seconds}; expected positive values")


@dataclass
class CollectionProgress:
    next_attempt: int = 0
    kept: int = 0
    dropped: int = 0
    # The cube's start (base frame) of every attempt so far, kept or dropped: attempt k spawned it
    # from seed `seed + k`.
    cube_starts: list[list[float]] = field(default_factory=list)


def load_collection_state(folder: str | Path) -> tuple[dict, CollectionProgress]:
    """(settings, progress) of a demonstration folder written by `collect_sim_demos`."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a folder written by `vpp-robot collect`")
    saved = json.loads(path.read_text())
    return saved["settings"], CollectionProgress(**saved["progress"])


def _load_progress(folder: Path, settings: dict) -> CollectionProgress:
    if not (folder / STATE_FILE).is_file():
        return CollectionProgress()
    saved_settings, progress = load_collection_state(folder)
    if saved_settings != settings:
        raise CollectionError(
            f"{folder} was collected with {saved_settings}, not {settings}; use the same settings to resume or another --out"
        )
    return progress


def _save_progress(folder: Path, settings: dict, progress: CollectionProgress) -> None:
    temporary = folder / (STATE_FILE + ".tmp")
    temporary.write_text(json.dumps({"settings": settings, "progress": asdict(progress)}, indent=2))
    os.replace(temporary, folder / STATE_FILE)


def collect_sim_demos(output: str | Path, config: CollectConfig = CollectConfig(), progress_bar: bool = True) -> CollectionProgress:
    """Adds expert episodes to the LeRobot v3 dataset in `output` until it holds `config.episodes`."""
    from vpp.data.lerobot import LeRobotDatasetWriter

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # The episode count is not a setting: asking for more episodes later extends the dataset.
    settings = {key: value for key, value in asdict(config).items() if key not in ("episodes", "max_attempts_per_episode", "max_seconds")}
    progress = _load_progress(output, settings)
    fps = round(config.rate_hz)
    shapes = {name: (config.image_size, config.image_size, 3) for name in CAMERA_NAMES}
    # Near-lossless full-chroma video: the policy runs on raw renders, and at 32 px the 4:2:0 default
    # would blur the few pixels of the red cube into the table's colour.
    writer = LeRobotDatasetWriter(
        output,
        fps=fps,
        features=rollout_features(shapes),
        robot_type=config.robot.replace("-", "_"),
        codec="libx264",
        pix_fmt="yuv444p",
        crf=0,
    )
    # The dataset, not the state file, says how many episodes are safely on disk.
    progress.kept = writer.num_episodes
    if progress.kept >= config.episodes:
        writer.finalize()
        logger.info("%s already holds %d episodes", output, progress.kept)
        return progress
    sim_config = SimConfig(
        image_height=config.image_size,
        image_width=config.image_size,
        realtime=False,
        start_tcp_position="ready",
        object_jitter_m=config.object_jitter_m,
        seed=config.seed,
    )
    # The expert replans from the observed pose after each of its chunks.
    loop_config = SimulatedTimeConfig(policy_rate_hz=config.rate_hz, servo_rate_hz=config.servo_rate_hz, execute_steps=None)
    max_ticks = round(config.max_seconds * config.rate_hz)
    bar = tqdm(total=config.episodes, initial=progress.kept, desc=f"{config.robot} expert demos", unit="episode", disable=not progress_bar)
    arm = build_sim_arm(config.robot, sim_config, config.servo_rate_hz)
    try:
        with arm:
            cameras = arm.cameras()
            while progress.kept < config.episodes:
                if progress.next_attempt >= config.max_attempts_per_episode * config.episodes:
                    raise CollectionError(
                        f"{progress.dropped} of {progress.next_attempt} expert attempts missed the cube; "
                        f"expected at most {config.max_attempts_per_episode} attempts per episode"
                    )
                arm.reset(config.seed + progress.next_attempt)
                cube_start = arm.object_position()
                expert = GraspCubeExpert(arm, step_s=1.0 / config.rate_hz)
                recorder = RolloutRecorder([camera.name for camera in cameras])
                report = SimulatedTimeLoop(arm, cameras, expert, loop_config, recorder=recorder).run(
                    GRASP_INSTRUCTION, max_ticks=max_ticks, until=expert.done
                )
                if report.finished and len(recorder) >= config.min_ticks:
                    writer.add_episode(recorder.frames(), task=GRASP_INSTRUCTION)
                    progress.kept += 1
                    bar.update(1)
                else:
                    progress.dropped += 1
                    logger.warning(
                        "attempt %d: the expert did not lift the cube within %.1f s, or in fewer than %d ticks (%d ticks); dropped",
                        progress.next_attempt,
                        config.max_seconds,
                        config.min_ticks,
                        len(recorder),
                    )
                progress.cube_starts.append(cube_start.tolist())
                progress.next_attempt += 1
                _save_progress(output, settings, progress)
    finally:
        writer.finalize()
        bar.close()
    logger.info("%s: %d expert episodes (%d attempts dropped)", output, progress.kept, progress.dropped)
    return progress

"""How often a policy grasps the cube on the simulated arm, from cube positions it never saw.

Rollout k respawns the cube from seed `seed + k` (the evaluation stream starts at EVAL_SEED, far
from the collection's seeds, which start at 0) and runs the policy in simulated time
(`SimulatedTimeLoop`) until the cube is grasped or `max_seconds` of simulated time pass. A grasp
is `SimArm.object_grasped`: the cube's centre at least `lift_m` above its resting height while
both fingers touch it. Given the demonstrations' folder, the evaluation refuses to start if one of
its seeds was used by a collection attempt or one of its cube starts equals a demonstration's.

Writes `grasp_eval.json` (settings, per-rollout seed, cube start, outcome, ticks and wall time)
and `grasps.mp4` (every rollout's cameras, one after another).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vpp.robots.control_loop import ActionPolicy, RolloutRecorder
from vpp.robots.drivers.sim import GRASP_LIFT_M, SimConfig, build_sim_arm
from vpp.robots.sim_loop import SimulatedTimeConfig, SimulatedTimeLoop

logger = logging.getLogger(__name__)

EVAL_SEED = 1_000_000


class SeedOverlap(ValueError):
    """An evaluation rollout would start where a demonstration started."""


@dataclass(frozen=True)
class GraspEvalConfig:
    robot: str = "sim-panda"
    episodes: int = 10
    seed: int = EVAL_SEED
    max_seconds: float = 15.0
    rate_hz: float = 10.0
    servo_rate_hz: float = 100.0
    execute_steps: int | None = 8
    image_size: int = 32
    object_jitter_m: float = 0.1
    lift_m: float = GRASP_LIFT_M

    def __post_init__(self) -> None:
        if self.episodes < 1 or not self.max_seconds > 0 or not self.lift_m > 0:
            raise ValueError(f"episodes={self.episodes}, max_seconds={self.max_seconds}, lift_m={self.lift_m}; expected positive values")


@dataclass
class GraspRollout:
    seed: int
    cube_start: list[float]
    grasped: bool
    ticks: int
    simulated_s: float
    wall_s: float
    final_cube_lift_m: float
    final_tcp_to_cube_m: float


@dataclass
class GraspEvalResult:
    config: GraspEvalConfig
    rollouts: list[GraspRollout] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def grasped(self) -> int:
        return sum(rollout.grasped for rollout in self.rollouts)

    def summary(self) -> str:
        return f"grasped {self.grasped}/{len(self.rollouts)}"

    def to_dict(self) -> dict:
        return {"grasped": self.grasped, "episodes": len(self.rollouts), **asdict(self)}


def demonstration_starts(demos: str | Path) -> tuple[dict, range, np.ndarray]:
    """(collection settings, seeds its attempts used, their cube starts (N, 3)) of a demo folder."""
    from vpp.robots.collect import load_collection_state

    settings, progress = load_collection_state(demos)
    seeds = range(settings["seed"], settings["seed"] + progress.next_attempt)
    return settings, seeds, np.asarray(progress.cube_starts, dtype=np.float64).reshape(-1, 3)


def check_disjoint_from_demos(config: GraspEvalConfig, demos: str | Path) -> np.ndarray:
    """Raises SeedOverlap if an evaluation seed was a collection attempt's, or ValueError if the cube
    spawn range differs from the demonstrations'; returns the demonstrations' cube starts."""
    settings, seeds, starts = demonstration_starts(demos)
    evaluation = range(config.seed, config.seed + config.episodes)
    shared = sorted(set(seeds) & set(evaluation))
    if shared:
        raise SeedOverlap(
            f"evaluation seeds {config.seed}..{config.seed + config.episodes - 1} include {shared[:5]} "
            f"(of {len(shared)}), which {demos} was collected from; expected seeds outside {seeds.start}..{seeds.stop - 1}"
        )
    if settings["object_jitter_m"] != config.object_jitter_m:
        raise ValueError(
            f"object_jitter_m={config.object_jitter_m}, but {demos} was collected with {settings['object_jitter_m']}; "
            "expected the demonstrations' cube spawn range"
        )
    return starts


def evaluate_grasps(
    policy: ActionPolicy,
    instruction: str,
    config: GraspEvalConfig = GraspEvalConfig(),
    demos: str | Path | None = None,
    out: str | Path | None = None,
) -> GraspEvalResult:
    demo_starts = check_disjoint_from_demos(config, demos) if demos is not None else np.zeros((0, 3))
    sim_config = SimConfig(
        image_height=config.image_size,
        image_width=config.image_size,
        realtime=False,
        start_tcp_position="ready",
        object_jitter_m=config.object_jitter_m,
        seed=config.seed,
    )
    loop_config = SimulatedTimeConfig(policy_rate_hz=config.rate_hz, servo_rate_hz=config.servo_rate_hz, execute_steps=config.execute_steps)
    max_ticks = round(config.max_seconds * config.rate_hz)
    result = GraspEvalResult(config)
    videos: list[np.ndarray] = []
    started = time.monotonic()
    arm = build_sim_arm(config.robot, sim_config, config.servo_rate_hz)
    with arm:
        cameras = arm.cameras()
        for index in range(config.episodes):
            seed = config.seed + index
            arm.reset(seed)
            cube_start = arm.object_position()
            if len(demo_starts) and np.any(np.all(np.isclose(demo_starts, cube_start, rtol=0.0, atol=1e-9), axis=1)):
                raise SeedOverlap(f"seed {seed} spawns the cube at {cube_start.tolist()}, where a demonstration started")
            recorder = RolloutRecorder([camera.name for camera in cameras]) if out is not None else None
            report = SimulatedTimeLoop(arm, cameras, policy, loop_config, recorder=recorder).run(
                instruction, max_ticks=max_ticks, until=lambda _state: arm.object_grasped(config.lift_m)
            )
            rollout = GraspRollout(
                seed=seed,
                cube_start=cube_start.tolist(),
                grasped=report.finished,
                ticks=report.ticks,
                simulated_s=report.simulated_s,
                wall_s=report.wall_s,
                final_cube_lift_m=arm.object_lift_m(),
                final_tcp_to_cube_m=float(np.linalg.norm(arm.observe().ee_position - arm.object_position())),
            )
            result.rollouts.append(rollout)
            logger.info(
                "rollout %d (seed %d, cube at %s): %s after %d ticks (%.1f s simulated, %.1f s wall)",
                index,
                seed,
                np.round(cube_start[:2], 3).tolist(),
                "grasped" if rollout.grasped else "not grasped",
                rollout.ticks,
                rollout.simulated_s,
                rollout.wall_s,
            )
            if recorder is not None and len(recorder):
                videos.append(np.concatenate([np.stack(recorder.images[name]) for name in recorder.camera_names], axis=2))
    result.wall_s = time.monotonic() - started
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "grasp_eval.json").write_text(json.dumps(result.to_dict(), indent=2))
        if videos:
            from vpp.data.video_io import write_video

            write_video(out / "grasps.mp4", np.concatenate(videos), fps=round(config.rate_hz))
    return result

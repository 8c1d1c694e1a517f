"""The ControlLoop's schedule in simulated time, for a simulated arm whose physics moves only when
told (`SimConfig(realtime=False)`): demonstrations and evaluation rollouts run as fast as the
machine allows instead of at the wall clock's pace, and a slow model or a loaded machine changes
nothing about what happens in them.

Per policy tick: the arm is observed; if no action is scheduled for the next tick, the policy
is called on the observation (the simulation waits for it) and the first `execute_steps` actions
of its chunk become waypoints for the following ticks, accumulated from the observed pose exactly
as `ControlLoop` does; the servo then streams the interpolated target through `Robot.send` (so the
SafetyFilter) at the servo rate while the physics advances one tick. Recordings store the same
columns and action steps as `ControlLoop`'s. What this loop leaves out is the inference latency:
a chunk starts at the tick it was observed at; the wall-clock loop's cost of that latency is
measured by `ControlLoop` runs of the same artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vpp.robots.control_loop import (
    ACTION_DIM,
    RolloutRecorder,
    WaypointInterpolator,
    chunk_to_waypoints,
    state_vector,
    timing_stats,
    waypoint_step,
)
from vpp.robots.drivers.sim import SimArm
from vpp.robots.interfaces import ActionPolicy, Camera, EndEffectorPose, RobotState, read_cameras


class PolicyOutputError(ValueError):
    """The policy returned actions the loop cannot schedule."""


@dataclass(frozen=True)
class SimulatedTimeConfig:
    policy_rate_hz: float = 10.0
    servo_rate_hz: float = 100.0
    # Actions of each chunk run before the policy is asked again (None: the whole chunk).
    execute_steps: int | None = 8

    def __post_init__(self) -> None:
        if not (self.policy_rate_hz > 0 and self.servo_rate_hz >= self.policy_rate_hz):
            raise ValueError(
                f"policy_rate_hz={self.policy_rate_hz}, servo_rate_hz={self.servo_rate_hz}; "
                "expected 0 < policy rate <= servo rate"
            )
        if self.execute_steps is not None and self.execute_steps < 1:
            raise ValueError(f"execute_steps={self.execute_steps}; expected >= 1 or None")

    @property
    def servo_steps_per_tick(self) -> int:
        return max(1, round(self.servo_rate_hz / self.policy_rate_hz))


@dataclass
class SimulatedRolloutReport:
    ticks: int = 0
    chunks: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    # `until` held at a tick (the task was done) before the tick limit.
    finished: bool = False
    inference_latency: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedTimeLoop:
    def __init__(
        self,
        arm: SimArm,
        cameras: Sequence[Camera],
        policy: ActionPolicy,
        config: SimulatedTimeConfig | None = None,
        recorder: RolloutRecorder | None = None,
    ):
        if arm.config.realtime:
            raise ValueError(
                f"{arm.robot_type} steps itself in real time; expected SimConfig(realtime=False) for simulated time"
            )
        self.arm = arm
        self.cameras = list(cameras)
        self.policy = policy
        self.config = config or SimulatedTimeConfig()
        self.recorder = recorder

    def _chunk(self, observation: dict[str, Any], instruction: str) -> np.ndarray:
        chunk = np.asarray(self.policy.act(observation, instruction), dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
            raise PolicyOutputError(
                f"policy returned actions of shape {chunk.shape}; expected (chunk, {ACTION_DIM})"
            )
        if not np.all(np.isfinite(chunk)):
            raise PolicyOutputError(f"policy returned non-finite actions: {chunk.tolist()}")
        return chunk

    def run(
        self, instruction: str, max_ticks: int, until: Callable[[RobotState], bool] | None = None
    ) -> SimulatedRolloutReport:
        """Runs until `until(observed state)` holds at a tick (that tick is not recorded) or for
        `max_ticks` ticks; the arm is stopped at the end."""
        arm, config = self.arm, self.config
        period = 1.0 / config.policy_rate_hz
        servo_period = period / config.servo_steps_per_tick
        report = SimulatedRolloutReport()
        latencies: list[float] = []
        wall_start = time.monotonic()
        state = arm.observe()
        start = arm.simulated_time()
        held = np.concatenate(
            [
                state.ee_position,
                state.ee_quaternion,
                [state.gripper_opening if state.gripper_opening is not None else 1.0],
            ]
        )
        interpolator = WaypointInterpolator(held, start)
        schedule: dict[int, np.ndarray] = {}
        try:
            for tick in range(max_ticks):
                state = arm.observe()
                if until is not None and until(state):
                    report.finished = True
                    break
                due = tick + 1
                needs_chunk = due not in schedule
                images = read_cameras(self.cameras) if needs_chunk or self.recorder is not None else {}
                if needs_chunk:
                    started = time.monotonic()
                    chunk = self._chunk({**images, "state": state_vector(state)}, instruction)
                    latencies.append(time.monotonic() - started)
                    report.chunks += 1
                    steps = chunk[: config.execute_steps] if config.execute_steps else chunk
                    waypoints = chunk_to_waypoints(steps, state.ee_position, state.ee_quaternion)
                    schedule = {due + index: waypoint for index, waypoint in enumerate(waypoints)}
                previous, held = held, schedule.pop(due)
                interpolator.retarget(held, start + due * period, arm.simulated_time())
                if self.recorder is not None:
                    self.recorder.add(images, state_vector(state), waypoint_step(previous, held))
                for _ in range(config.servo_steps_per_tick):
                    target = interpolator.target(arm.simulated_time())
                    arm.send(EndEffectorPose(target[:3], target[3:7], gripper=float(target[7])))
                    arm.advance(servo_period)
                report.ticks += 1
        finally:
            arm.stop()
        report.simulated_s = arm.simulated_time() - start
        report.wall_s = time.monotonic() - wall_start
        report.inference_latency = timing_stats(latencies)
        return report

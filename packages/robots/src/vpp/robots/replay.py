"""Demonstrations recorded on a real arm by replaying the actions of an existing LeRobot dataset.

`ReplayedDemonstrations` is a source for the collector of `vpp.robots.collect`: each episode of
the source dataset becomes one task of the new dataset (``episode-000012``), whose attempt moves
the arm to its start pose and then streams the episode's actions through the `ControlLoop` (the
same waypoints, servo interpolation and SafetyFilter as `vpp-robot run`) while the bound cameras
are recorded. The new dataset's rows are what the loop measured and commanded at each tick: the
cameras' frames, the arm's state and the delta it was sent. An attempt whose loop stopped early
(a fault, a dropped camera) or skipped ticks (an overloaded PC) is dropped and tried again.

The start pose of each replay (`start`): ``"current"`` is the pose the arm had when the
collection began, so every replay starts from one place; ``"recorded"`` is the pose in the source
episode's first ``observation.state`` row (the [x, y, z, qx, qy, qz, qw, gripper] layout vpp's
arms record), in the arm's base frame, which puts a replay back where its episode was recorded.
Moves to a start pose go through the SafetyFilter too, at most ``move_step_m`` and
``move_step_rad`` per tick.

Only numpy and vpp: this runs on the robot PC.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vpp.robots.collect import VIDEO_SETTINGS, AttemptOutcome
from vpp.robots.control_loop import (
    ACTION_DIM,
    STATE_DIM,
    ControlLoop,
    ControlLoopConfig,
    RolloutRecorder,
    rollout_features,
    state_vector,
)
from vpp.robots.interfaces import Camera, Robot
from vpp.robots.rotations import (
    normalize_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_rotvec,
)

logger = logging.getLogger(__name__)

START_POSES = ("current", "recorded")
TASK_PREFIX = "episode-"
REPLAY_ENSEMBLE_DECAY = 50.0


class ReplayError(ValueError):
    """A source dataset or setting a replay cannot use; the message says what is expected."""


class ReplayPolicy:
    """Hands the control loop a recorded episode's actions as one chunk, then holds."""

    def __init__(self, actions: np.ndarray):
        self.actions = np.asarray(actions, dtype=np.float32)
        self.calls = 0

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            return self.actions
        hold = np.zeros((1, ACTION_DIM), dtype=np.float32)
        hold[0, 6] = self.actions[-1, 6]
        return hold


class GoToPosePolicy:
    """Straight-line steps from the observed pose to `target` ([x, y, z, qx, qy, qz, qw, gripper]),
    at most `step_m` and `step_rad` per action."""

    def __init__(self, target: np.ndarray, step_m: float, step_rad: float):
        self.target = np.asarray(target, dtype=np.float64)
        self.step_m = step_m
        self.step_rad = step_rad

    def remaining(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(translation, rotation vector) from the pose in `state` to the target."""
        state = np.asarray(state, dtype=np.float64)
        rotation = quaternion_to_rotvec(
            quaternion_multiply(normalize_quaternion(self.target[3:7]), quaternion_conjugate(state[3:7]))
        )
        return self.target[:3] - state[:3], rotation

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        translation, rotation = self.remaining(observation["state"])
        steps = max(
            1,
            math.ceil(np.linalg.norm(translation) / self.step_m),
            math.ceil(np.linalg.norm(rotation) / self.step_rad),
        )
        # Equal rotations about one axis compose exactly: `steps` of rotation / steps reach the target.
        actions = np.zeros((steps, ACTION_DIM), dtype=np.float32)
        actions[:, :3] = translation / steps
        actions[:, 3:6] = rotation / steps
        actions[:, 6] = self.target[7]
        return actions


def move_to_pose(
    robot: Robot,
    target: np.ndarray,
    rate_hz: float,
    servo_rate_hz: float,
    step_m: float = 0.01,
    step_rad: float = 0.05,
    tolerance_m: float = 0.003,
    tolerance_rad: float = 0.02,
    timeout_s: float = 30.0,
) -> None:
    """Drives the arm to `target` through the ControlLoop (and so the SafetyFilter); raises
    ReplayError naming how far it stayed when it does not get there within `timeout_s`."""
    policy = GoToPosePolicy(target, step_m, step_rad)
    # Each ControlLoop run ends with Robot.stop(), after which an xArm accepts no motion until it is
    # enabled again: recover() does that (and clears nothing else on a healthy arm).
    robot.recover()

    def reached(state) -> bool:
        translation, rotation = policy.remaining(state_vector(state))
        return bool(np.linalg.norm(translation) <= tolerance_m and np.linalg.norm(rotation) <= tolerance_rad)

    config = ControlLoopConfig(policy_rate_hz=rate_hz, servo_rate_hz=servo_rate_hz, execute_steps=None)
    report = ControlLoop(robot, [], policy, config).run(
        "move to the start pose", seconds=timeout_s, until=reached
    )
    translation, rotation = policy.remaining(state_vector(robot.observe()))
    if report.stop_reason is not None or not (
        np.linalg.norm(translation) <= tolerance_m and np.linalg.norm(rotation) <= tolerance_rad
    ):
        raise ReplayError(
            f"the arm did not reach the start pose {np.round(target[:3], 4).tolist()} within {timeout_s:g} s: "
            f"{1000 * np.linalg.norm(translation):.1f} mm and {np.degrees(np.linalg.norm(rotation)):.1f} deg away"
            f" (stop reason: {report.stop_reason}); is it inside the safety filter's workspace?"
        )


def parse_episodes(text: str | None, available: int) -> list[int]:
    """``None`` or ``all``: every episode; else comma-separated indices and ranges (``0,3,5-9``)."""
    if text is None or text == "all":
        return list(range(available))
    episodes: list[int] = []
    for piece in text.split(","):
        first, dash, last = piece.strip().partition("-")
        try:
            indices = range(int(first), int(last) + 1) if dash else [int(first)]
        except ValueError:
            raise ReplayError(f"--episodes {text!r}: {piece!r} is not an index or a range a-b") from None
        episodes.extend(index for index in indices if index not in episodes)
    out_of_range = [index for index in episodes if not 0 <= index < available]
    if out_of_range or not episodes:
        raise ReplayError(
            f"--episodes {text!r}: {out_of_range or 'no episode'}; the source holds episodes 0 to {available - 1}"
        )
    return episodes


def open_source(source: str | Path, start: str = "current", rate_hz: float | None = None):
    """The source LeRobotDataset and the replay rate (default: its fps), checked for what a replay
    needs, so that a CLI can refuse a source before it connects to an arm."""
    from vpp.data.lerobot import LeRobotDataset

    if start not in START_POSES:
        raise ReplayError(f"start={start!r}; expected one of {START_POSES}")
    if not (Path(source) / "meta" / "info.json").is_file():
        raise ReplayError(f"{source}: not a LeRobot v3 dataset folder (no meta/info.json)")
    dataset = LeRobotDataset(source)
    features = dataset.features
    action_shape = tuple(features.get("action", {}).get("shape", ()))
    if action_shape != (ACTION_DIM,):
        raise ReplayError(
            f"{source}: 'action' has shape {action_shape or 'none'}; expected ({ACTION_DIM},), the end-effector "
            "deltas and gripper opening that vpp's arms record (vpp-robot run, collect grasp)"
        )
    state_shape = tuple(features.get("observation.state", {}).get("shape", ()))
    if start == "recorded" and state_shape != (STATE_DIM,):
        raise ReplayError(
            f"{source}: 'observation.state' has shape {state_shape or 'none'}; --start recorded needs "
            f"({STATE_DIM},), [x, y, z, qx, qy, qz, qw, gripper]; use --start current"
        )
    rate = float(rate_hz or dataset.fps)
    if not rate > 0 or abs(rate - round(rate)) > 1e-9:
        raise ReplayError(
            f"rate {rate} Hz; expected a positive whole number (the new dataset's frames per second)"
        )
    return dataset, rate


def task_name(episode: int) -> str:
    return f"{TASK_PREFIX}{episode:06d}"


class ReplayedDemonstrations:
    """A `DemonstrationSource` (vpp.robots.collect) replaying a LeRobot dataset's episodes on a
    connected `robot` while `cameras` are recorded at `image_size` pixels a side; see the module's
    docstring. `rate_hz` defaults to the source dataset's frame rate, at which it was recorded."""

    name = "replayed-actions"

    def __init__(
        self,
        source: str | Path,
        robot: Robot,
        robot_name: str,
        cameras: Sequence[Camera],
        image_size: int,
        rate_hz: float | None = None,
        servo_rate_hz: float = 100.0,
        start: str = "current",
    ):
        if not cameras:
            raise ReplayError("a replay records cameras: bind at least one with --camera NAME=SPEC")
        self.source, self.rate_hz = open_source(source, start, rate_hz)
        self.robot, self.cameras = robot, list(cameras)
        self.image_size, self.servo_rate_hz, self.start = image_size, servo_rate_hz, start
        self.home = state_vector(robot.observe())
        self.settings = {
            "source": str(Path(source).resolve()),
            "robot": robot_name,
            "cameras": sorted(camera.name for camera in self.cameras),
            "image_size": image_size,
            "rate_hz": self.rate_hz,
            "start": start,
        }
        self.robot_name = robot_name

    def tasks(self, episodes: Sequence[int]) -> list[str]:
        return [task_name(episode) for episode in episodes]

    def writer_options(self) -> dict[str, Any]:
        shapes = {camera.name: (self.image_size, self.image_size, 3) for camera in self.cameras}
        return {
            "fps": round(self.rate_hz),
            "features": rollout_features(shapes),
            "robot_type": self.robot_name,
            **VIDEO_SETTINGS["lossless"],
        }

    def _episode(self, task: str):
        return self.source.episode(int(task.removeprefix(TASK_PREFIX)))

    def instruction(self, task: str) -> str:
        return self._episode(task).task or ""

    @contextmanager
    def session(self, task: str) -> Iterator[Callable[[int], AttemptOutcome]]:
        episode = self._episode(task)
        actions = episode.column("action").astype(np.float32)
        start = episode.column("observation.state")[0] if self.start == "recorded" else self.home
        instruction = episode.task or ""

        def attempt(k: int) -> AttemptOutcome:
            move_to_pose(self.robot, np.asarray(start, dtype=np.float64), self.rate_hz, self.servo_rate_hz)
            observed = state_vector(self.robot.observe())
            self.robot.recover()
            recorder = RolloutRecorder([camera.name for camera in self.cameras])
            # The whole episode is the first chunk (computed before the clock starts). The loop may
            # still ask for more; ensembling with a steep decay keeps the oldest prediction of every
            # tick (weights exp(-50 j)), so a later hold chunk cannot replace the recorded actions.
            config = ControlLoopConfig(
                policy_rate_hz=self.rate_hz,
                servo_rate_hz=self.servo_rate_hz,
                execute_steps=None,
                replan_when_remaining=0,
                replan_from_latency=False,
                temporal_ensemble_decay=REPLAY_ENSEMBLE_DECAY,
            )
            report = ControlLoop(
                self.robot, self.cameras, ReplayPolicy(actions), config, recorder=recorder
            ).run(instruction, max_ticks=len(actions))
            if report.stop_reason is not None:
                why = f"the replay stopped: {report.stop_reason}"
            elif len(recorder) != len(actions):
                why = (
                    f"{len(actions) - len(recorder)} of {len(actions)} ticks were skipped (overrun: the PC could not "
                    f"keep {self.rate_hz:g} Hz); free the CPU or replay at a lower --rate"
                )
            else:
                return AttemptOutcome(episode.index, observed.tolist(), recorder.frames())
            return AttemptOutcome(episode.index, observed.tolist(), None, why)

        yield attempt

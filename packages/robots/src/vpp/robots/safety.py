"""The last check between a policy and a controller.

`SafetyFilter.filter(command, state)` turns any command into an absolute target that is finite,
inside the workspace box and joint limits, and no further from the *measured* state than one
control period allows (per-step caps, velocity caps, and a cap on how fast the step may grow).
While targets stream (no pause longer than two control periods), each step is measured from the
previous target, so that consecutive targets never jump even when state reports lag; in
addition a target may lead the *measured* state by at most `max_lead_steps` steps, so that a
lagging or blocked arm cannot be walked away from by a stream of targets.

Braking and direction changes are deliberately not acceleration-limited: a filter that delays a
stop is less safe than one that lets the controller's own trajectory generator smooth it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vpp.robots.interfaces import (
    Command,
    EndEffectorDelta,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    RobotError,
    RobotState,
)
from vpp.robots.rotations import (
    normalize_quaternion,
    quaternion_multiply,
    rotation_angle_between,
    rotvec_to_quaternion,
    slerp,
)

logger = logging.getLogger(__name__)

_WORKSPACE_BISECTION_STEPS = 20


class SafetyViolationError(RobotError):
    """A command or state the filter refuses to turn into a target."""


@dataclass(frozen=True)
class SafetyLimits:
    """Limits for one arm; lengths in metres, angles in radians, the base frame throughout."""

    workspace_min: tuple[float, float, float] = (0.25, -0.4, 0.05)
    workspace_max: tuple[float, float, float] = (0.75, 0.4, 0.7)
    joint_min: tuple[float, ...] | None = None
    joint_max: tuple[float, ...] | None = None
    control_period_s: float = 0.1
    max_position_step_m: float = 0.02
    max_rotation_step_rad: float = 0.1
    max_joint_step_rad: float = 0.1
    max_linear_velocity_m_s: float = 0.2
    max_angular_velocity_rad_s: float = 1.0
    max_joint_velocity_rad_s: float = 1.0
    max_linear_acceleration_m_s2: float = 1.0
    max_angular_acceleration_rad_s2: float = 5.0
    max_joint_acceleration_rad_s2: float = 5.0
    max_lead_steps: float = 3.0
    gripper_min: float = 0.0
    gripper_max: float = 1.0
    # "raise": a NaN/inf command raises SafetyViolationError; "hold": it becomes "stay where you are".
    on_nonfinite: Literal["raise", "hold"] = "raise"

    def __post_init__(self) -> None:
        lower, upper = np.asarray(self.workspace_min), np.asarray(self.workspace_max)
        if lower.shape != (3,) or upper.shape != (3,) or not np.all(lower < upper):
            raise ValueError(
                f"workspace_min {self.workspace_min} / workspace_max {self.workspace_max}: "
                "expected two 3-vectors with min < max on every axis"
            )
        if (self.joint_min is None) != (self.joint_max is None):
            raise ValueError("joint_min and joint_max must be given together or not at all")
        if self.joint_min is not None and (
            len(self.joint_min) != len(self.joint_max) or not np.all(np.less(self.joint_min, self.joint_max))
        ):
            raise ValueError(
                f"joint_min {self.joint_min} / joint_max {self.joint_max}: expected equal lengths and min < max"
            )
        positive = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith("max_") or f.name == "control_period_s"
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value}; expected a finite positive number")
        if not 0.0 <= self.gripper_min <= self.gripper_max <= 1.0:
            raise ValueError(
                f"gripper range [{self.gripper_min}, {self.gripper_max}]; expected 0 <= min <= max <= 1"
            )
        if self.on_nonfinite not in ("raise", "hold"):
            raise ValueError(f"on_nonfinite={self.on_nonfinite!r}; expected 'raise' or 'hold'")

    @property
    def position_step_limit_m(self) -> float:
        return min(self.max_position_step_m, self.max_linear_velocity_m_s * self.control_period_s)

    @property
    def rotation_step_limit_rad(self) -> float:
        return min(self.max_rotation_step_rad, self.max_angular_velocity_rad_s * self.control_period_s)

    @property
    def joint_step_limit_rad(self) -> float:
        return min(self.max_joint_step_rad, self.max_joint_velocity_rad_s * self.control_period_s)

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: Path) -> SafetyLimits:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(
                f"{path}: unknown safety fields {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        for name in ("workspace_min", "workspace_max", "joint_min", "joint_max"):
            if raw.get(name) is not None:
                raw[name] = tuple(raw[name])
        return cls(**raw)

    @classmethod
    def franka_fr3(cls, **overrides) -> SafetyLimits:
        """FR3 joint ranges from the Franka datasheet, shrunk by 0.05 rad to stay off the hard stops."""
        margin = 0.05
        joint_min = (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)
        joint_max = (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)
        return cls(
            joint_min=tuple(q + margin for q in joint_min),
            joint_max=tuple(q - margin for q in joint_max),
            **overrides,
        )

    @classmethod
    def xarm7(cls, **overrides) -> SafetyLimits:
        """xArm7 (type X4) joint ranges as xarm-python-sdk 1.18 lists them, shrunk by 0.05 rad."""
        margin = 0.05
        joint_min = np.radians((-360, -118, -360, -11, -360, -97, -360))
        joint_max = np.radians((360, 120, 360, 225, 360, 180, 360))
        defaults = dict(workspace_min=(0.2, -0.4, 0.05), workspace_max=(0.7, 0.4, 0.6))
        defaults.update(overrides)
        return cls(
            joint_min=tuple(float(q) + margin for q in joint_min),
            joint_max=tuple(float(q) - margin for q in joint_max),
            **defaults,
        )


class SafetyFilter:
    """Stateful per-arm filter; call `reset()` after the arm was stopped or moved by hand.

    `forward_kinematics` (joint positions -> end-effector position) lets joint targets be held
    inside the workspace box too; without it only their joint limits and steps are checked.
    """

    def __init__(
        self,
        limits: SafetyLimits,
        forward_kinematics: Callable[[np.ndarray], np.ndarray] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.forward_kinematics = forward_kinematics
        self._clock = clock
        self._previous_kind: type | None = None
        self._previous_time = -math.inf
        self._previous_position_step = 0.0
        self._previous_rotation_step = 0.0
        self._previous_joint_step: np.ndarray | None = None
        self._previous_target: EndEffectorPose | JointPositions | None = None

    def reset(self) -> None:
        self._previous_kind = None
        self._previous_time = -math.inf
        self._forget_motion()

    def _forget_motion(self) -> None:
        self._previous_position_step = 0.0
        self._previous_rotation_step = 0.0
        self._previous_joint_step = None
        self._previous_target = None

    def filter(
        self, command: Command, state: RobotState
    ) -> EndEffectorPose | JointPositions | GripperCommand:
        if not state.is_finite():
            raise SafetyViolationError(
                f"robot state is not finite (joints {state.joint_positions.tolist()}, "
                f"position {state.ee_position.tolist()}); expected finite readings"
            )
        problem = _nonfinite_fields(command)
        if problem:
            return self._reject_nonfinite(command, problem, state)
        if isinstance(command, GripperCommand):
            return GripperCommand(self._clamp_gripper(command.opening))
        self._forget_stale_motion(
            type(command) if not isinstance(command, EndEffectorDelta) else EndEffectorPose
        )
        if isinstance(command, (EndEffectorDelta, EndEffectorPose)):
            return self._filter_pose(command, state)
        if isinstance(command, JointPositions):
            return self._filter_joints(command, state)
        raise TypeError(f"unsupported command {type(command).__name__}; expected one of {Command}")

    def _reject_nonfinite(
        self, command: Command, problem: str, state: RobotState
    ) -> EndEffectorPose | GripperCommand:
        self.reset()
        if self.limits.on_nonfinite == "raise":
            logger.error("rejected %s: %s", type(command).__name__, problem)
            raise SafetyViolationError(
                f"{type(command).__name__} rejected: {problem}; expected finite values"
            )
        logger.warning("holding position instead of %s: %s", type(command).__name__, problem)
        if isinstance(command, GripperCommand):
            return GripperCommand(
                self._clamp_gripper(state.gripper_opening if state.gripper_opening is not None else 1.0)
            )
        return EndEffectorPose(state.ee_position, state.ee_quaternion, gripper=None)

    def _forget_stale_motion(self, kind: type) -> None:
        now = self._clock()
        # After a pause or a switch of command kind the arm is treated as starting from rest.
        if kind is not self._previous_kind or now - self._previous_time > 2.0 * self.limits.control_period_s:
            self._forget_motion()
        self._previous_kind = kind
        self._previous_time = now

    def _clamp_gripper(self, opening: float | None) -> float | None:
        if opening is None:
            return None
        clamped = float(np.clip(opening, self.limits.gripper_min, self.limits.gripper_max))
        if clamped != opening:
            logger.info("gripper opening %.4f clamped to %.4f", opening, clamped)
        return clamped

    def _clamp_to_workspace(self, position: np.ndarray) -> np.ndarray:
        clamped = np.clip(position, self.limits.workspace_min, self.limits.workspace_max)
        if not np.array_equal(clamped, position):
            logger.info(
                "target position %s clamped into workspace: %s",
                position.round(4).tolist(),
                clamped.round(4).tolist(),
            )
        return clamped

    def _filter_pose(self, command: EndEffectorDelta | EndEffectorPose, state: RobotState) -> EndEffectorPose:
        limits = self.limits
        if isinstance(command, EndEffectorDelta):
            position = state.ee_position + command.translation
            quaternion = quaternion_multiply(rotvec_to_quaternion(command.rotation), state.ee_quaternion)
        else:
            position = command.position
            quaternion = command.quaternion
        try:
            quaternion = normalize_quaternion(quaternion)
        except ValueError as error:
            raise SafetyViolationError(str(error)) from error
        position = self._clamp_to_workspace(position)
        previous = self._previous_target if isinstance(self._previous_target, EndEffectorPose) else None
        reference_position = previous.position if previous else state.ee_position
        reference_quaternion = previous.quaternion if previous else state.ee_quaternion

        step = position - reference_position
        step_length = float(np.linalg.norm(step))
        allowed_length = min(
            limits.position_step_limit_m,
            self._previous_position_step + limits.max_linear_acceleration_m_s2 * limits.control_period_s**2,
        )
        if step_length > allowed_length:
            logger.debug("position step %.4f m limited to %.4f m", step_length, allowed_length)
            position = reference_position + step * (allowed_length / step_length)
        lead = position - state.ee_position
        lead_length = float(np.linalg.norm(lead))
        allowed_lead = limits.max_lead_steps * limits.position_step_limit_m
        if lead_length > allowed_lead:
            logger.info("target leads the arm by %.4f m; pulled back to %.4f m", lead_length, allowed_lead)
            position = state.ee_position + lead * (allowed_lead / lead_length)
        self._previous_position_step = float(np.linalg.norm(position - reference_position))

        angle = rotation_angle_between(reference_quaternion, quaternion)
        allowed_angle = min(
            limits.rotation_step_limit_rad,
            self._previous_rotation_step
            + limits.max_angular_acceleration_rad_s2 * limits.control_period_s**2,
        )
        if angle > allowed_angle:
            logger.debug("rotation step %.4f rad limited to %.4f rad", angle, allowed_angle)
            quaternion = slerp(reference_quaternion, quaternion, allowed_angle / angle)
        lead_angle = rotation_angle_between(state.ee_quaternion, quaternion)
        allowed_lead_angle = limits.max_lead_steps * limits.rotation_step_limit_rad
        if lead_angle > allowed_lead_angle:
            logger.info("orientation leads the arm by %.4f rad; pulled back", lead_angle)
            quaternion = slerp(state.ee_quaternion, quaternion, allowed_lead_angle / lead_angle)
        self._previous_rotation_step = rotation_angle_between(reference_quaternion, quaternion)
        target = EndEffectorPose(
            position, normalize_quaternion(quaternion), gripper=self._clamp_gripper(command.gripper)
        )
        self._previous_target = target
        return target

    def _filter_joints(self, command: JointPositions, state: RobotState) -> JointPositions:
        limits = self.limits
        current = state.joint_positions
        target = command.positions
        if target.shape != current.shape:
            raise SafetyViolationError(
                f"joint target has {target.size} values; expected {current.size} for this arm"
            )
        if limits.joint_min is not None:
            if len(limits.joint_min) != current.size:
                raise SafetyViolationError(
                    f"safety limits cover {len(limits.joint_min)} joints; the arm has {current.size}"
                )
            clamped = np.clip(target, limits.joint_min, limits.joint_max)
            if not np.array_equal(clamped, target):
                logger.info(
                    "joint target %s clamped to limits: %s",
                    target.round(4).tolist(),
                    clamped.round(4).tolist(),
                )
            target = clamped
        previous = self._previous_target if isinstance(self._previous_target, JointPositions) else None
        reference = previous.positions if previous else current

        step = target - reference
        growth = limits.max_joint_acceleration_rad_s2 * limits.control_period_s**2
        previous_step = (
            self._previous_joint_step if self._previous_joint_step is not None else np.zeros_like(step)
        )
        allowed = np.minimum(limits.joint_step_limit_rad, previous_step + growth)
        largest_ratio = float(np.max(np.abs(step) / allowed))
        if largest_ratio > 1.0:
            # Scaling all joints together keeps the direction of motion the policy asked for.
            logger.debug("joint step scaled by %.4f", 1.0 / largest_ratio)
            target = reference + step / largest_ratio
        lead = target - current
        largest_lead = float(np.max(np.abs(lead))) / (limits.max_lead_steps * limits.joint_step_limit_rad)
        if largest_lead > 1.0:
            logger.info("joint target leads the arm by %.2f allowed leads; pulled back", largest_lead)
            target = current + lead / largest_lead
        if self.forward_kinematics is not None:
            target = self._keep_joint_target_in_workspace(current, target)
        self._previous_joint_step = np.abs(target - reference)
        filtered = JointPositions(target, gripper=self._clamp_gripper(command.gripper))
        self._previous_target = filtered
        return filtered

    def _inside_workspace(self, joints: np.ndarray) -> bool:
        position = np.asarray(self.forward_kinematics(joints), dtype=np.float64)
        return bool(
            np.all(position >= self.limits.workspace_min) and np.all(position <= self.limits.workspace_max)
        )

    def _keep_joint_target_in_workspace(self, current: np.ndarray, target: np.ndarray) -> np.ndarray:
        if self._inside_workspace(target):
            return target
        if not self._inside_workspace(current):
            raise SafetyViolationError(
                f"end effector at joints {current.round(4).tolist()} is outside the workspace "
                f"{self.limits.workspace_min}..{self.limits.workspace_max}; expected it inside before joint moves"
            )
        inside, outside = 0.0, 1.0
        for _ in range(_WORKSPACE_BISECTION_STEPS):
            middle = (inside + outside) / 2
            if self._inside_workspace(current + middle * (target - current)):
                inside = middle
            else:
                outside = middle
        logger.info("joint target shortened to %.3f of its step to stay inside the workspace", inside)
        return current + inside * (target - current)


def _nonfinite_fields(command: Command) -> str:
    if isinstance(command, GripperCommand):
        fields = {"opening": command.opening}
    elif isinstance(command, EndEffectorDelta):
        fields = {
            "translation": command.translation,
            "rotation": command.rotation,
            "gripper": command.gripper,
        }
    elif isinstance(command, EndEffectorPose):
        fields = {"position": command.position, "quaternion": command.quaternion, "gripper": command.gripper}
    elif isinstance(command, JointPositions):
        fields = {"positions": command.positions, "gripper": command.gripper}
    else:
        raise TypeError(f"unsupported command {type(command).__name__}; expected one of {Command}")
    bad = [
        f"{name}={np.asarray(value).tolist()}"
        for name, value in fields.items()
        if value is not None and not np.all(np.isfinite(np.asarray(value, dtype=np.float64)))
    ]
    return ", ".join(bad)

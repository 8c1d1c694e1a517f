"""The last check between a policy and a controller.

`SafetyFilter.filter(command, state)` turns any command into an absolute target that is finite,
inside the workspace box and joint limits, and no further from the previous target than the speed
caps allow in the time that really passed. Build it with `SafetyFilter.for_arm(kind, period)`,
which gives joint targets the arm's forward kinematics (`vpp.robots.kinematics`).

The time budget (how gaps between commands count). A motion command may move the target by at
most `cap * w`, where `w = min(elapsed, max_catch_up_periods * control_period_s)` and `elapsed` is
the clock's time since the previous motion command (one control period for the first command after
`reset()` or a switch between pose and joint commands). So over any run of commands the target
moves at most `cap * real elapsed time`; a command that comes late makes up for the lost time
(no stall under jitter) but a single step never exceeds `cap * max_catch_up_periods * period`
(nor the `max_*_step` fields); commands faster than the period get proportionally smaller steps.
Acceleration: a step's speed (`step / w`) may exceed the previous step's by `acceleration * w`;
over the part of a gap that is not budgeted (`elapsed - w`) the previous speed decays at the same
rate, so after a pause the target starts again from rest, while jitter within the budget costs
nothing. (The rule this replaces restarted from rest after any gap over two periods: on a loaded
machine nearly every command did, and the arm crawled.)

Steps are measured from the previous target of the same kind (from the measured state after a
reset or a switch of kind), so consecutive targets never jump even when state reports lag; a
target may lead the *measured* state by at most `max_lead_steps` nominal steps (one period at the
speed cap), so that a lagging or blocked arm cannot be walked away from by a stream of targets.

Joint targets, given forward kinematics, are held to the Cartesian limits too: the tool centre
point's path along the joint-space segment from the previous target moves no faster than the
linear (and, with full-pose kinematics, angular) caps, and its path from the measured joints to
the target stays inside the workspace box and within the Cartesian lead. A violating target is
shortened along its joint-space segment, which keeps the direction the policy asked for; it is
never rejected, so a stream of such targets stops the arm at the boundary as clamped pose targets
do. An arm found outside the box (moved by hand, started there) may only take paths that leave it
no further outside. Paths are checked at 17 points per segment, refined 16-fold 4 times at a
boundary; between two points a path leaves its chord by at most 0.003 mm for the largest joint
lead at a 100 Hz period, 0.32 mm at 10 Hz (every joint at its lead, 2,000 random configurations
of either arm), which bounds how far it can stray beyond the box between them. Before any joint
target the filter checks that the kinematics put the tool centre point where the arm reports it
(`max_kinematics_mismatch_m`): a filter built for another arm or tool refuses to move instead of
guarding the wrong box. Collisions of the other links (an elbow on the table) are not checked.

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
from typing import Literal, NamedTuple

import numpy as np

from vpp.robots import kinematics
from vpp.robots.interfaces import (
    Command,
    EndEffectorDelta,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    RobotError,
    RobotState,
)
from vpp.robots.kinematics import ARM_KINDS, ArmKinematics
from vpp.robots.rotations import (
    normalize_quaternion,
    quaternion_multiply,
    rotation_angle_between,
    rotvec_to_quaternion,
    slerp,
)

logger = logging.getLogger(__name__)

# Points per joint-space segment at which the tool centre point's path is checked, and how many
# times the interval where it leaves the workspace is refined by that factor.
_SEGMENT_POINTS = 16
_BOUNDARY_REFINEMENTS = 4
# An arm found further than this outside the box (metres) is warned about, once until a reset.
_OUTSIDE_WARNING_M = 1e-3


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
    # The longest gap between commands that counts as motion time, in control periods: a late
    # command makes up for at most this much time (the largest single step is cap x this).
    max_catch_up_periods: float = 2.0
    # How far the forward kinematics' tool centre point may be from the one the arm reports.
    max_kinematics_mismatch_m: float = 0.02
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
        if self.max_catch_up_periods < 1.0:
            raise ValueError(
                f"max_catch_up_periods={self.max_catch_up_periods}; expected >= 1 (a command on time "
                "must be allowed one period of motion)"
            )
        if not 0.0 <= self.gripper_min <= self.gripper_max <= 1.0:
            raise ValueError(
                f"gripper range [{self.gripper_min}, {self.gripper_max}]; expected 0 <= min <= max <= 1"
            )
        if self.on_nonfinite not in ("raise", "hold"):
            raise ValueError(f"on_nonfinite={self.on_nonfinite!r}; expected 'raise' or 'hold'")

    @property
    def max_budget_s(self) -> float:
        """The most motion time one command may account for."""
        return self.max_catch_up_periods * self.control_period_s

    @property
    def nominal_position_step_m(self) -> float:
        """One control period at the linear speed cap: the unit of the allowed lead."""
        return min(self.max_position_step_m, self.max_linear_velocity_m_s * self.control_period_s)

    @property
    def nominal_rotation_step_rad(self) -> float:
        return min(self.max_rotation_step_rad, self.max_angular_velocity_rad_s * self.control_period_s)

    @property
    def nominal_joint_step_rad(self) -> float:
        return min(self.max_joint_step_rad, self.max_joint_velocity_rad_s * self.control_period_s)

    @property
    def position_step_limit_m(self) -> float:
        """The longest step one command may make (a late command's catch-up included)."""
        return min(self.max_position_step_m, self.max_linear_velocity_m_s * self.max_budget_s)

    @property
    def rotation_step_limit_rad(self) -> float:
        return min(self.max_rotation_step_rad, self.max_angular_velocity_rad_s * self.max_budget_s)

    @property
    def joint_step_limit_rad(self) -> float:
        return min(self.max_joint_step_rad, self.max_joint_velocity_rad_s * self.max_budget_s)

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

    @classmethod
    def for_arm(cls, kind: str, **overrides) -> SafetyLimits:
        """The limits of an arm kind (`kinematics.ARM_KINDS`). The simulated arms' boxes sit on
        their tables: 2 cm above the Panda's, whose top is at the base's height, and 2 cm above
        the xArm's, 0.11 m below its base."""
        if kind == "franka":
            return cls.franka_fr3(**overrides)
        if kind == "xarm":
            return cls.xarm7(**overrides)
        if kind == "sim-panda":
            defaults = dict(workspace_min=(0.25, -0.4, 0.02), workspace_max=(0.75, 0.4, 0.7))
            return cls.franka_fr3(**(defaults | overrides))
        if kind == "sim-xarm":
            defaults = dict(workspace_min=(0.15, -0.4, -0.09), workspace_max=(0.65, 0.4, 0.5))
            return cls.xarm7(**(defaults | overrides))
        raise ValueError(f"arm kind {kind!r}; expected one of {ARM_KINDS}")


class _Window(NamedTuple):
    """How a gap between commands counts: `budget_s` of motion, then `idle_s` the target stood still."""

    budget_s: float
    idle_s: float


def _allowed_step(speed_before, window: _Window, max_speed: float, max_acceleration: float, max_step: float):
    """The longest step (scalar or per joint) a command may make after `window`."""
    start = np.maximum(0.0, speed_before - max_acceleration * window.idle_s)
    speed = np.minimum(max_speed, start + max_acceleration * window.budget_s)
    return np.minimum(max_step, speed * window.budget_s)


def _speed_of(step, window: _Window, max_speed: float, speed_before):
    """The speed a step is remembered at for the next one's acceleration limit."""
    if window.budget_s <= 0.0:
        return speed_before
    # A pull-back towards the measured state can be longer than the budget; the cap bounds what
    # it may let the next step do.
    return np.minimum(np.asarray(step) / window.budget_s, max_speed)


def _largest_fraction(cumulative: np.ndarray, fractions: np.ndarray, allowed: float) -> float:
    """The largest fraction of a sampled path whose cumulative measure stays within `allowed`."""
    over = np.flatnonzero(cumulative > allowed)
    if over.size == 0:
        return 1.0
    k = int(over[0])
    if k == 0:
        return 0.0
    part = (allowed - cumulative[k - 1]) / (cumulative[k] - cumulative[k - 1])
    return float(fractions[k - 1] + part * (fractions[k] - fractions[k - 1]))


class _Path(NamedTuple):
    """The tool centre point along a joint-space segment, at `fractions` of it."""

    fractions: np.ndarray
    positions: np.ndarray
    length: np.ndarray  # cumulative path length, metres
    angle: np.ndarray | None  # cumulative rotation, radians (None: position-only kinematics)


class SafetyFilter:
    """Stateful per-arm filter; call `reset()` after the arm was stopped or moved by hand.

    `forward_kinematics` lets joint targets be held to the workspace and the Cartesian caps: an
    `ArmKinematics` (batched, full pose: linear and angular caps), or any callable from one joint
    vector to the tool centre point's position (linear cap and workspace only).
    `SafetyFilter.for_arm` builds the filter of an arm kind with its kinematics.
    """

    def __init__(
        self,
        limits: SafetyLimits,
        forward_kinematics: ArmKinematics | Callable[[np.ndarray], np.ndarray] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.forward_kinematics = forward_kinematics
        self._clock = clock
        self.reset()

    @classmethod
    def for_arm(
        cls,
        kind: str,
        control_period_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        tcp_offset_m: float | None = None,
        **limit_overrides,
    ) -> SafetyFilter:
        """The filter of an arm kind (`kinematics.ARM_KINDS`) for commands every `control_period_s`,
        with its limits and forward kinematics. `tcp_offset_m` is the tool length the arm reports
        its pose at (the Franka Hand's 0.1034 m and the xArm Gripper's 0.172 m by default; set it
        to the controller's TCP offset, or the filter refuses joint targets)."""
        limits = SafetyLimits.for_arm(kind, control_period_s=control_period_s, **limit_overrides)
        return cls(limits, kinematics.for_arm(kind, tcp_offset_m), clock=clock)

    def reset(self) -> None:
        self._previous_kind: type | None = None
        self._previous_time: float | None = None
        self._previous_target: EndEffectorPose | JointPositions | None = None
        self._linear_speed = 0.0
        self._angular_speed = 0.0
        self._joint_speeds: np.ndarray | None = None
        self._warned_outside = False

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
        if not isinstance(command, (EndEffectorDelta, EndEffectorPose, JointPositions)):
            raise TypeError(f"unsupported command {type(command).__name__}; expected one of {Command}")
        kind = JointPositions if isinstance(command, JointPositions) else EndEffectorPose
        now = self._clock()
        if kind is not self._previous_kind:
            # A switch of command kind starts from the measured state, at rest.
            self.reset()
            self._previous_kind = kind
        window = self._window(now)
        if kind is JointPositions:
            target = self._filter_joints(command, state, window)
        else:
            target = self._filter_pose(command, state, window)
        self._previous_target = target
        self._previous_time = now
        return target

    def _window(self, now: float) -> _Window:
        period = self.limits.control_period_s
        elapsed = period if self._previous_time is None else max(0.0, now - self._previous_time)
        budget = min(elapsed, self.limits.max_budget_s)
        return _Window(budget, elapsed - budget)

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

    # -- end-effector targets ----------------------------------------------------------------

    def _filter_pose(
        self, command: EndEffectorDelta | EndEffectorPose, state: RobotState, window: _Window
    ) -> EndEffectorPose:
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
        allowed_length = float(
            _allowed_step(
                self._linear_speed,
                window,
                limits.max_linear_velocity_m_s,
                limits.max_linear_acceleration_m_s2,
                limits.max_position_step_m,
            )
        )
        if step_length > allowed_length:
            logger.debug("position step %.4f m limited to %.4f m", step_length, allowed_length)
            position = reference_position + step * (allowed_length / step_length)
        lead = position - state.ee_position
        lead_length = float(np.linalg.norm(lead))
        allowed_lead = limits.max_lead_steps * limits.nominal_position_step_m
        if lead_length > allowed_lead:
            logger.info("target leads the arm by %.4f m; pulled back to %.4f m", lead_length, allowed_lead)
            position = state.ee_position + lead * (allowed_lead / lead_length)
        self._linear_speed = float(
            _speed_of(
                np.linalg.norm(position - reference_position),
                window,
                limits.max_linear_velocity_m_s,
                self._linear_speed,
            )
        )

        angle = rotation_angle_between(reference_quaternion, quaternion)
        allowed_angle = float(
            _allowed_step(
                self._angular_speed,
                window,
                limits.max_angular_velocity_rad_s,
                limits.max_angular_acceleration_rad_s2,
                limits.max_rotation_step_rad,
            )
        )
        if angle > allowed_angle:
            logger.debug("rotation step %.4f rad limited to %.4f rad", angle, allowed_angle)
            quaternion = slerp(reference_quaternion, quaternion, allowed_angle / angle)
        lead_angle = rotation_angle_between(state.ee_quaternion, quaternion)
        allowed_lead_angle = limits.max_lead_steps * limits.nominal_rotation_step_rad
        if lead_angle > allowed_lead_angle:
            logger.info("orientation leads the arm by %.4f rad; pulled back", lead_angle)
            quaternion = slerp(state.ee_quaternion, quaternion, allowed_lead_angle / lead_angle)
        self._angular_speed = float(
            _speed_of(
                rotation_angle_between(reference_quaternion, quaternion),
                window,
                limits.max_angular_velocity_rad_s,
                self._angular_speed,
            )
        )
        return EndEffectorPose(
            position, normalize_quaternion(quaternion), gripper=self._clamp_gripper(command.gripper)
        )

    # -- joint targets -----------------------------------------------------------------------

    def _filter_joints(self, command: JointPositions, state: RobotState, window: _Window) -> JointPositions:
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
        speeds_before = self._joint_speeds if self._joint_speeds is not None else np.zeros_like(current)

        step = target - reference
        if window.budget_s <= 0.0:
            # No time has passed since the previous target: it stays.
            target = reference.copy()
        else:
            allowed = _allowed_step(
                speeds_before,
                window,
                limits.max_joint_velocity_rad_s,
                limits.max_joint_acceleration_rad_s2,
                limits.max_joint_step_rad,
            )
            largest_ratio = float(np.max(np.abs(step) / allowed))
            if largest_ratio > 1.0:
                # Scaling all joints together keeps the direction of motion the policy asked for.
                logger.debug("joint step scaled by %.4f", 1.0 / largest_ratio)
                target = reference + step / largest_ratio
        if self.forward_kinematics is not None:
            speed_path = self._path(reference, target)
            requested = target
            target, travel = self._limit_cartesian_speed(reference, target, speed_path, window)
            if target is not requested:
                speed_path = None
        shortened = target
        lead = target - current
        largest_lead = float(np.max(np.abs(lead))) / (limits.max_lead_steps * limits.nominal_joint_step_rad)
        if largest_lead > 1.0:
            logger.info("joint target leads the arm by %.2f allowed leads; pulled back", largest_lead)
            target = current + lead / largest_lead
        if self.forward_kinematics is not None:
            # With the arm on its previous target (an arm that keeps up) and the target as asked, the
            # path from the arm is the path just checked for speed.
            reuse = speed_path is not None and target is shortened and np.array_equal(current, reference)
            from_arm = speed_path if reuse else None
            target = self._keep_path_inside(state, target, from_arm)
            if target is not shortened:
                path = self._path(reference, target)
                travel = (path.length[-1], None if path.angle is None else path.angle[-1])
            self._linear_speed = float(
                _speed_of(travel[0], window, limits.max_linear_velocity_m_s, self._linear_speed)
            )
            if travel[1] is not None:
                self._angular_speed = float(
                    _speed_of(travel[1], window, limits.max_angular_velocity_rad_s, self._angular_speed)
                )
        self._joint_speeds = _speed_of(
            np.abs(target - reference), window, limits.max_joint_velocity_rad_s, speeds_before
        )
        return JointPositions(target, gripper=self._clamp_gripper(command.gripper))

    def _kinematics(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Tool centre point positions (K, 3) and rotations (K, 3, 3) or None, for joints (K, n)."""
        if isinstance(self.forward_kinematics, ArmKinematics):
            poses = self.forward_kinematics.poses(joints)
            return poses[:, :3, 3], poses[:, :3, :3]
        positions = np.stack([np.asarray(self.forward_kinematics(q), dtype=np.float64) for q in joints])
        return positions, None

    def _path(self, start: np.ndarray, end: np.ndarray, fractions: np.ndarray | None = None) -> _Path:
        if fractions is None:
            fractions = np.linspace(0.0, 1.0, _SEGMENT_POINTS + 1)
        positions, rotations = self._kinematics(start + fractions[:, None] * (end - start))
        length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=1))])
        angle = None
        if rotations is not None:
            # ||R1 - R2||_F = 2 sqrt(2) sin(angle / 2): exact for the small angles between samples.
            chord = np.linalg.norm(np.diff(rotations, axis=0), axis=(1, 2)) / (2.0 * math.sqrt(2.0))
            angle = np.concatenate([[0.0], np.cumsum(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0)))])
        return _Path(fractions, positions, length, angle)

    def _check_kinematics(self, state: RobotState, predicted: np.ndarray) -> None:
        """`predicted`: the kinematics' tool centre point for the measured joints."""
        mismatch = float(np.linalg.norm(predicted - state.ee_position))
        if mismatch > self.limits.max_kinematics_mismatch_m:
            name = getattr(self.forward_kinematics, "name", "the given forward kinematics")
            raise SafetyViolationError(
                f"{name} puts the tool centre point at {predicted.round(4).tolist()} for joints "
                f"{state.joint_positions.round(4).tolist()}, but the arm reports "
                f"{state.ee_position.round(4).tolist()} ({mismatch * 1000:.1f} mm apart, over "
                f"max_kinematics_mismatch_m={self.limits.max_kinematics_mismatch_m}); expected a filter "
                "for this arm and tool: SafetyFilter.for_arm(kind, period, tcp_offset_m=<the TCP "
                "offset the controller reports its pose at>)"
            )

    def _limit_cartesian_speed(
        self, reference: np.ndarray, target: np.ndarray, path: _Path, window: _Window
    ) -> tuple[np.ndarray, tuple[float, float | None]]:
        """The target shortened along `path` (reference -> target) to the Cartesian caps, and the
        tool centre point's travel to it (metres, radians or None)."""
        limits = self.limits
        allowed_length = float(
            _allowed_step(
                self._linear_speed,
                window,
                limits.max_linear_velocity_m_s,
                limits.max_linear_acceleration_m_s2,
                limits.max_position_step_m,
            )
        )
        fraction = _largest_fraction(path.length, path.fractions, allowed_length)
        if path.angle is not None:
            allowed_angle = float(
                _allowed_step(
                    self._angular_speed,
                    window,
                    limits.max_angular_velocity_rad_s,
                    limits.max_angular_acceleration_rad_s2,
                    limits.max_rotation_step_rad,
                )
            )
            fraction = min(fraction, _largest_fraction(path.angle, path.fractions, allowed_angle))
        travel = (
            float(np.interp(fraction, path.fractions, path.length)),
            None if path.angle is None else float(np.interp(fraction, path.fractions, path.angle)),
        )
        if fraction >= 1.0:
            return target, travel
        logger.debug("joint step shortened to %.3f of itself for the Cartesian speed caps", fraction)
        return reference + fraction * (target - reference), travel

    def _violation(self, positions: np.ndarray) -> np.ndarray:
        """How far each position lies outside the workspace box (0 inside), metres."""
        outside = positions - np.clip(positions, self.limits.workspace_min, self.limits.workspace_max)
        return np.linalg.norm(outside, axis=-1)

    def _keep_path_inside(self, state: RobotState, target: np.ndarray, path: _Path | None) -> np.ndarray:
        """The target shortened along the path from the measured joints (`path`, if already known)
        so that the tool centre point stays inside the workspace and within the lead; checks the
        kinematics against the reported pose first."""
        limits = self.limits
        current = state.joint_positions
        if np.array_equal(current, target):
            self._check_kinematics(state, self._kinematics(current[None, :])[0][0])
            return target
        if path is None:
            path = self._path(current, target)
        self._check_kinematics(state, path.positions[0])
        violation = self._violation(path.positions)
        # An arm inside the box stays inside (violation exactly 0); one outside may not get further
        # out. No slack: a slack would let a stream of targets creep out by it at every step.
        tolerated = violation[0]
        if violation[0] > _OUTSIDE_WARNING_M and not self._warned_outside:
            logger.warning(
                "tool centre point %s is %.4f m outside the workspace %s..%s; joint targets may only "
                "bring it closer",
                path.positions[0].round(4).tolist(),
                violation[0],
                limits.workspace_min,
                limits.workspace_max,
            )
            self._warned_outside = True
        fraction = _largest_fraction(
            path.length, path.fractions, limits.max_lead_steps * limits.nominal_position_step_m
        )
        if fraction < 1.0:
            logger.info(
                "joint target's tool centre point leads the arm too far; pulled back to %.3f", fraction
            )
        outside = np.flatnonzero(violation > tolerated)
        if outside.size:
            low, high = path.fractions[outside[0] - 1], path.fractions[outside[0]]
            for _ in range(_BOUNDARY_REFINEMENTS):
                fractions = np.linspace(low, high, _SEGMENT_POINTS + 1)
                positions, _ = self._kinematics(current + fractions[:, None] * (target - current))
                first_out = int(np.flatnonzero(self._violation(positions) > tolerated)[0])
                low, high = fractions[first_out - 1], fractions[first_out]
            logger.info("joint target shortened to %.4f of its path to stay inside the workspace", low)
            fraction = min(fraction, float(low))
        if fraction >= 1.0:
            return target
        return current + fraction * (target - current)


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

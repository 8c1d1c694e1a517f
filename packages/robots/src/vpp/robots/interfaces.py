"""What every arm, simulated or real, looks like to the rest of vpp.

Conventions shared by all drivers:
- Positions in metres, angles in radians, all in the robot's base frame.
- End-effector orientation is a unit quaternion, scalar-last [x, y, z, w].
- End-effector rotation deltas are rotation vectors (axis * angle, radians) in the base frame,
  applied on the left: R_target = R(delta) @ R_current.
- Gripper opening is normalised to [0, 1]: 0 fully closed, 1 fully open.
- Camera frames are HxWx3 uint8 RGB arrays, keyed by camera name.

Every command a driver receives passes through its `SafetyFilter` first (see `Robot.send`), so
nothing a policy emits reaches a controller unchecked.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from vpp.robots.safety import SafetyFilter


class ActionPolicy(Protocol):
    """What the control loop, the simulated-time loop, the collectors' experts and the evaluation
    harness run: a torch `VideoPredictionPolicy`, an exported artifact (`vpp.runtime.Policy`), a
    policy server's client or a scripted policy. The chunk is the policy's next actions, earliest
    first; its width is the robot's action: 7 on the arms (see `vpp.robots.control_loop`), 4 on
    MetaWorld (`vpp.robots.envs.metaworld`)."""

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        """{camera name: uint8 (H, W, 3), "state": (state_dim,)} -> actions (chunk, action_dim)."""
        ...


class RobotError(Exception):
    """Base class of everything a robot driver raises on purpose."""


class RobotConnectionError(RobotError):
    """The controller could not be reached, or the connection to it was lost."""


class ControllerFaultError(RobotError):
    """The controller reported an error; the driver has stopped the arm.

    `code` is the controller's own error identifier (an integer for xArm, the libfranka error
    names for Franka); call `Robot.recover()` once the cause is removed.
    """

    def __init__(self, message: str, code: int | str | None = None):
        super().__init__(message)
        self.code = code


def _vector(name: str, values, length: int | None) -> np.ndarray:
    array = np.array(values, dtype=np.float64).reshape(-1)
    if length is not None and array.shape != (length,):
        raise ValueError(f"{name} has {array.size} values {array.tolist()}; expected {length}")
    return array


@dataclass(frozen=True)
class RobotState:
    """One observation of the arm. Arrays are float64 copies owned by the state."""

    joint_positions: np.ndarray
    ee_position: np.ndarray
    ee_quaternion: np.ndarray
    gripper_opening: float | None
    timestamp: float
    joint_velocities: np.ndarray | None = None
    images: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_positions", _vector("joint_positions", self.joint_positions, None))
        object.__setattr__(self, "ee_position", _vector("ee_position", self.ee_position, 3))
        object.__setattr__(self, "ee_quaternion", _vector("ee_quaternion", self.ee_quaternion, 4))
        if self.joint_velocities is not None:
            object.__setattr__(
                self,
                "joint_velocities",
                _vector("joint_velocities", self.joint_velocities, self.joint_positions.size),
            )

    def is_finite(self) -> bool:
        values = [self.joint_positions, self.ee_position, self.ee_quaternion]
        if self.joint_velocities is not None:
            values.append(self.joint_velocities)
        gripper_ok = self.gripper_opening is None or math.isfinite(self.gripper_opening)
        return gripper_ok and all(bool(np.all(np.isfinite(v))) for v in values)


@dataclass(frozen=True)
class EndEffectorDelta:
    """Relative end-effector motion: the policy's usual 6-DoF action (+ optional gripper)."""

    translation: np.ndarray
    rotation: np.ndarray
    gripper: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "translation", _vector("translation", self.translation, 3))
        object.__setattr__(self, "rotation", _vector("rotation", self.rotation, 3))


@dataclass(frozen=True)
class EndEffectorPose:
    """Absolute end-effector target (+ optional gripper opening)."""

    position: np.ndarray
    quaternion: np.ndarray
    gripper: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", _vector("position", self.position, 3))
        object.__setattr__(self, "quaternion", _vector("quaternion", self.quaternion, 4))


@dataclass(frozen=True)
class JointPositions:
    """Absolute joint-space target in radians (+ optional gripper opening)."""

    positions: np.ndarray
    gripper: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _vector("positions", self.positions, None))


@dataclass(frozen=True)
class GripperCommand:
    """Gripper-only target; opening in [0, 1]."""

    opening: float


Command = EndEffectorDelta | EndEffectorPose | JointPositions | GripperCommand


class Robot(ABC):
    """An arm that streams targets: `send` returns at once and the newest target wins.

    Subclasses implement the `_`-prefixed hooks; `send` is the only way commands reach them,
    and it always runs the safety filter against a fresh observation first.
    """

    def __init__(self, safety_filter: SafetyFilter):
        self.safety_filter = safety_filter

    @property
    @abstractmethod
    def num_joints(self) -> int: ...

    @abstractmethod
    def connect(self) -> None:
        """Open the connection and make the arm ready to follow targets."""

    @abstractmethod
    def observe(self) -> RobotState:
        """Read the current state; raises RobotConnectionError or ControllerFaultError."""

    def send(self, command: Command) -> Command:
        """Filter `command` against the current state and stream the result; returns what was sent."""
        state = self.observe()
        safe_command = self.safety_filter.filter(command, state)
        self._send_filtered(safe_command)
        return safe_command

    @abstractmethod
    def _send_filtered(self, command: EndEffectorPose | JointPositions | GripperCommand) -> None:
        """Hand an already filtered, absolute command to the controller."""

    @abstractmethod
    def stop(self) -> None:
        """Halt arm and gripper motion; must not raise when the connection is already gone."""

    @abstractmethod
    def recover(self) -> None:
        """Clear a controller fault so that targets are accepted again."""

    @abstractmethod
    def close(self) -> None:
        """Stop and release the connection; safe to call more than once."""

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Camera(ABC):
    """A named image source; `read` returns the newest HxWx3 uint8 RGB frame."""

    name: str

    @abstractmethod
    def read(self) -> np.ndarray: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Camera:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_cameras(cameras: list[Camera]) -> dict[str, np.ndarray]:
    """Frames from all cameras, keyed by name; duplicate names are a configuration error."""
    frames: dict[str, np.ndarray] = {}
    for camera in cameras:
        if camera.name in frames:
            raise ValueError(f"camera name {camera.name!r} is used twice; expected unique names")
        frames[camera.name] = camera.read()
    return frames

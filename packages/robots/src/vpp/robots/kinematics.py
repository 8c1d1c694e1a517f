"""Forward kinematics of the supported arms, from the manufacturers' published parameters.

Each arm is a chain of revolute joints in Craig's modified Denavit-Hartenberg convention: link i
is reached from link i-1 by `Rx(alpha[i-1]) Tx(a[i-1]) Rz(q_i + theta_offset[i]) Tz(d[i])`, and
the tool centre point (TCP) by a fixed transform from the last link. Every function takes joint
arrays of shape (..., 7) and returns one result per configuration, so that the safety filter can
check a whole joint-space segment in one call.

- Franka FR3 and Panda share one table ("Robot and interface specifications", Franka Robotics
  FCI documentation): d1 0.333, d3 0.316, a3 0.0825, a4 -0.0825, d5 0.384, a6 0.088, flange 0.107
  (metres). The TCP is libfranka's `O_T_EE` for the Franka Hand: 0.1034 m along the flange's z,
  turned by -pi/4 about it (Desk's default end-effector frame for the hand).
- UFACTORY xArm7 ("Kinematic and dynamic parameters of UFACTORY xArm series", modified D-H):
  d1 0.267, d3 0.293, a3 0.0525, a4 0.0775, d5 0.3425, a6 0.076, d7 0.097. The TCP is the
  controller's TCP offset along the flange's z: 0.172 m for the xArm Gripper (UFACTORY's value,
  and the sim model's `vpp_tcp` site), 0 for a bare flange.

The simulated arms load models of exactly these chains (franky-sim's `fr3.xml`, gym-xarm's
`xarm.xml`), so the same kinematics serve them; `tests/test_kinematics.py` checks both against
MuJoCo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRANKA_HAND_TCP_M = 0.1034
XARM_GRIPPER_TCP_M = 0.172


@dataclass(frozen=True)
class ArmKinematics:
    """A serial arm: modified D-H rows (one per joint) plus the fixed last-link-to-TCP transform."""

    name: str
    alpha: tuple[float, ...]
    a: tuple[float, ...]
    d: tuple[float, ...]
    theta_offset: tuple[float, ...]
    # 4x4 homogeneous transform from the last joint's frame to the tool centre point, row-major.
    tool: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        lengths = {len(self.alpha), len(self.a), len(self.d), len(self.theta_offset)}
        if len(lengths) != 1:
            raise ValueError(
                f"{self.name}: D-H rows of unequal length (alpha {len(self.alpha)}, a {len(self.a)}, "
                f"d {len(self.d)}, theta_offset {len(self.theta_offset)}); expected one value per joint"
            )
        tool = np.asarray(self.tool, dtype=np.float64)
        if tool.shape != (4, 4) or not np.allclose(tool[3], [0, 0, 0, 1]):
            raise ValueError(f"{self.name}: tool transform {self.tool}; expected a 4x4 homogeneous matrix")
        # Rx(alpha) Tx(a) of every row: the joint-independent half of each link transform.
        fixed = np.zeros((len(self.alpha), 4, 4))
        cos_alpha, sin_alpha = np.cos(self.alpha), np.sin(self.alpha)
        fixed[:, 0, 0] = 1.0
        fixed[:, 0, 3] = self.a
        fixed[:, 1, 1], fixed[:, 1, 2] = cos_alpha, -sin_alpha
        fixed[:, 2, 1], fixed[:, 2, 2] = sin_alpha, cos_alpha
        fixed[:, 3, 3] = 1.0
        object.__setattr__(self, "_fixed", fixed)
        object.__setattr__(self, "_tool", tool)

    @property
    def num_joints(self) -> int:
        return len(self.alpha)

    def poses(self, joints) -> np.ndarray:
        """TCP poses in the base frame, shape (..., 4, 4), for joints of shape (..., num_joints)."""
        joints = np.asarray(joints, dtype=np.float64)
        if joints.shape[-1:] != (self.num_joints,):
            raise ValueError(
                f"{self.name}: joints of shape {joints.shape}; expected (..., {self.num_joints})"
            )
        theta = joints + np.asarray(self.theta_offset)
        cos_theta, sin_theta = np.cos(theta), np.sin(theta)
        # Rz(theta) Tz(d) for every joint of every configuration at once.
        moving = np.zeros((*joints.shape, 4, 4))
        moving[..., 0, 0], moving[..., 0, 1] = cos_theta, -sin_theta
        moving[..., 1, 0], moving[..., 1, 1] = sin_theta, cos_theta
        moving[..., 2, 2] = 1.0
        moving[..., 2, 3] = self.d
        moving[..., 3, 3] = 1.0
        links = self._fixed @ moving
        pose = links[..., 0, :, :]
        for joint in range(1, self.num_joints):
            pose = pose @ links[..., joint, :, :]
        return pose @ self._tool

    def positions(self, joints) -> np.ndarray:
        """TCP positions in the base frame (metres), shape (..., 3)."""
        return self.poses(joints)[..., :3, 3]

    def __call__(self, joints) -> np.ndarray:
        return self.positions(joints)


def _tool_along_z(offset_m: float, yaw_rad: float = 0.0) -> tuple[tuple[float, ...], ...]:
    """The TCP `offset_m` along the flange's z axis, its frame turned by `yaw_rad` about that axis."""
    if not math.isfinite(offset_m):
        raise ValueError(f"TCP offset {offset_m} m; expected a finite distance along the flange's z")
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return ((c, -s, 0.0, 0.0), (s, c, 0.0, 0.0), (0.0, 0.0, 1.0, offset_m), (0.0, 0.0, 0.0, 1.0))


def franka(tcp_offset_m: float = FRANKA_HAND_TCP_M) -> ArmKinematics:
    """Franka FR3 / Panda to libfranka's `O_T_EE` (Franka Hand by default; the flange is 0.107 m
    beyond joint 7, the hand frame turned -pi/4 about z)."""
    half_pi = math.pi / 2
    flange = 0.107
    tool = np.asarray(_tool_along_z(flange)) @ np.asarray(_tool_along_z(tcp_offset_m, -math.pi / 4))
    return ArmKinematics(
        name="franka",
        alpha=(0.0, -half_pi, half_pi, half_pi, -half_pi, half_pi, half_pi),
        a=(0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088),
        d=(0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0),
        theta_offset=(0.0,) * 7,
        tool=tuple(tuple(float(v) for v in row) for row in tool),
    )


def xarm7(tcp_offset_m: float = XARM_GRIPPER_TCP_M) -> ArmKinematics:
    """UFACTORY xArm7 to the controller's TCP (`tcp_offset_m` along the flange's z; the xArm
    Gripper's 0.172 m by default, 0 for a bare flange)."""
    half_pi = math.pi / 2
    return ArmKinematics(
        name="xarm7",
        alpha=(0.0, -half_pi, half_pi, half_pi, half_pi, half_pi, -half_pi),
        a=(0.0, 0.0, 0.0, 0.0525, 0.0775, 0.0, 0.076),
        d=(0.267, 0.0, 0.293, 0.0, 0.3425, 0.0, 0.097),
        theta_offset=(0.0,) * 7,
        tool=_tool_along_z(tcp_offset_m),
    )


# Arm kinds, as `vpp-robot --robot` names them; each maps to its kinematics with the default TCP.
ARM_KINDS = ("franka", "xarm", "sim-panda", "sim-xarm")


def for_arm(kind: str, tcp_offset_m: float | None = None) -> ArmKinematics:
    """The kinematics of an arm kind; `tcp_offset_m` overrides its default tool length (metres
    along the flange's z: the Franka Hand's 0.1034, the xArm Gripper's 0.172)."""
    if kind in ("franka", "sim-panda"):
        return franka(FRANKA_HAND_TCP_M if tcp_offset_m is None else tcp_offset_m)
    if kind in ("xarm", "sim-xarm"):
        return xarm7(XARM_GRIPPER_TCP_M if tcp_offset_m is None else tcp_offset_m)
    raise ValueError(f"arm kind {kind!r}; expected one of {ARM_KINDS}")

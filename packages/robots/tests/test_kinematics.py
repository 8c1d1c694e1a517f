"""Analytic forward kinematics against hand-derived poses and against the MuJoCo arms' own frames."""

import importlib.util
import math

import numpy as np
import pytest

from vpp.robots import kinematics
from vpp.robots.drivers.sim import SimConfig, SimPanda, SimXArm

FRANKA_READY = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
# Gripper pointing straight down, fingers along the base's x axis: roll pi, pitch 0, yaw 0.
POINTING_DOWN = np.diag([1.0, -1.0, -1.0])


def test_franka_zero_and_ready_poses():
    franka = kinematics.franka()
    zero = franka.poses(np.zeros(7))
    # Straight up: x = a4 + a5 + a7 = 0.0825 - 0.0825 + 0.088; z = d1 + d3 + d5 - flange - hand.
    np.testing.assert_allclose(zero[:3, 3], [0.088, 0.0, 0.333 + 0.316 + 0.384 - 0.107 - 0.1034], atol=1e-12)
    # Joint 7 at 0 leaves the hand turned -pi/4 about the downward axis.
    turned = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, -math.sqrt(2.0)]]) / math.sqrt(2.0)
    np.testing.assert_allclose(zero[:3, :3], turned, atol=1e-12)
    # libfranka's O_T_EE in the "ready" pose of Franka's examples: (0.307, 0, 0.487), pointing down.
    ready = franka.poses(FRANKA_READY)
    np.testing.assert_allclose(ready[:3, 3], [0.30689, 0.0, 0.48688], atol=1e-5)
    np.testing.assert_allclose(ready[:3, :3], POINTING_DOWN, atol=1e-12)


def test_xarm7_zero_pose_and_tool_offset():
    flange = kinematics.xarm7(tcp_offset_m=0.0).poses(np.zeros(7))
    # Folded: x = a4 + a5 + a7 = 0.0525 + 0.0775 + 0.076; z = d1 + d3 - d5 - d7; the flange faces down.
    np.testing.assert_allclose(flange[:3, 3], [0.206, 0.0, 0.267 + 0.293 - 0.3425 - 0.097], atol=1e-12)
    np.testing.assert_allclose(flange[:3, :3], POINTING_DOWN, atol=1e-12)
    gripper = kinematics.xarm7().positions(np.zeros(7))
    np.testing.assert_allclose(gripper, flange[:3, 3] - [0.0, 0.0, kinematics.XARM_GRIPPER_TCP_M], atol=1e-12)


def test_batches_give_the_same_poses_as_single_configurations():
    rng = np.random.default_rng(3)
    franka = kinematics.franka()
    joints = rng.uniform(-2.5, 2.5, size=(4, 5, 7))
    batched = franka.poses(joints)
    assert batched.shape == (4, 5, 4, 4)
    np.testing.assert_allclose(batched[2, 3], franka.poses(joints[2, 3]), atol=1e-15)
    np.testing.assert_allclose(franka(joints), batched[..., :3, 3])


def test_bad_inputs_name_what_is_expected():
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 7\)"):
        kinematics.franka().positions(np.zeros(6))
    with pytest.raises(ValueError, match="expected one of"):
        kinematics.for_arm("ur5")
    with pytest.raises(ValueError, match="finite distance"):
        kinematics.xarm7(tcp_offset_m=math.nan)


def _mujoco_tcp_poses(arm, joints: np.ndarray) -> np.ndarray:
    """The `vpp_tcp` site's pose in the arm's base frame, from MuJoCo, for each row of `joints`."""
    import mujoco

    scratch = mujoco.MjData(arm.model)
    poses = np.zeros((len(joints), 4, 4))
    for row, configuration in enumerate(joints):
        scratch.qpos[arm._joint_qpos] = configuration
        mujoco.mj_kinematics(arm.model, scratch)
        base_rotation = scratch.xmat[arm._base_body].reshape(3, 3)
        base_position = scratch.xpos[arm._base_body]
        site_rotation = scratch.site_xmat[arm._ee_site].reshape(3, 3)
        poses[row, :3, :3] = base_rotation.T @ site_rotation
        poses[row, :3, 3] = base_rotation.T @ (scratch.site_xpos[arm._ee_site] - base_position)
        poses[row, 3, 3] = 1.0
    return poses


# Position / rotation (matrix entries) tolerances against each model. franky-sim's FR3 writes its
# links with the numbers of Franka's table and exact quaternions, the hand's -pi/4 turn to 7
# digits (0.9238795, -0.3826834): positions agree to rounding (1e-15 m measured), rotations to
# 4e-8. gym-xarm's xArm7 writes its 90-degree link turns as quaternions rounded to 6 digits
# (0.707105, 0.707108), each off by 4e-6 rad: 7e-6 m and 1.7e-5 measured over 500 draws.
MODELS = [
    pytest.param(SimPanda, kinematics.franka(), 1e-9, 1e-6, id="SimPanda"),
    pytest.param(
        SimXArm,
        kinematics.xarm7(),
        2e-5,
        5e-5,
        id="SimXArm",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("gym_xarm") is None, reason="gym-xarm (xArm7 model) not installed"
        ),
    ),
]


@pytest.mark.parametrize(("arm_class", "arm_kinematics", "position_tolerance", "rotation_tolerance"), MODELS)
def test_analytic_kinematics_match_the_mujoco_arm(
    arm_class, arm_kinematics, position_tolerance, rotation_tolerance
):
    arm = arm_class(SimConfig(realtime=False, image_height=16, image_width=16))
    try:
        limits = arm_class.default_limits()
        rng = np.random.default_rng(0)
        joints = rng.uniform(limits.joint_min, limits.joint_max, size=(500, 7))
        joints[0] = arm._home_joints()
        expected = _mujoco_tcp_poses(arm, joints)
        got = arm_kinematics.poses(joints)
        position_error = np.linalg.norm(got[:, :3, 3] - expected[:, :3, 3], axis=1).max()
        rotation_error = np.abs(got[:, :3, :3] - expected[:, :3, :3]).max()
        assert position_error < position_tolerance
        assert rotation_error < rotation_tolerance
        # And the pose the simulated arm reports at its start.
        arm.connect()
        state = arm.observe()
        np.testing.assert_allclose(
            arm_kinematics(state.joint_positions), state.ee_position, atol=position_tolerance
        )
    finally:
        arm.close()

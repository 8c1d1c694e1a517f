"""Simulated arms: stepping, both cameras, differential IK, joint targets and the gripper."""

import importlib.util
import math
from dataclasses import replace

import numpy as np
import pytest

from vpp.robots.drivers.sim import CAMERA_NAMES, SimConfig, SimPanda, SimXArm
from vpp.robots.interfaces import EndEffectorPose, GripperCommand, JointPositions
from vpp.robots.rotations import quaternion_multiply, rotation_angle_between, rotvec_to_quaternion
from vpp.robots.safety import SafetyFilter

ARMS = [
    SimPanda,
    pytest.param(
        SimXArm,
        marks=pytest.mark.skipif(
            importlib.util.find_spec("gym_xarm") is None, reason="gym-xarm (xArm7 model) not installed"
        ),
    ),
]
SERVO_PERIOD_S = 0.01


@pytest.fixture(params=ARMS, ids=lambda arm: arm.__name__)
def arm(request):
    arm_class = request.param
    robot = arm_class(SimConfig(realtime=False, image_height=64, image_width=80))
    # Physics only moves in advance(): the filter's rate limits must run on simulated time.
    limits = replace(arm_class.default_limits(), control_period_s=SERVO_PERIOD_S)
    robot.safety_filter = SafetyFilter(limits, robot.forward_kinematics, clock=lambda: robot.data.time)
    robot.connect()
    yield robot
    robot.close()


def stream(arm, command, seconds):
    for _ in range(round(seconds / SERVO_PERIOD_S)):
        arm.send(command)
        arm.advance(SERVO_PERIOD_S)


def test_the_arm_holds_its_pose_and_both_cameras_render(arm):
    before = arm.observe()
    arm.advance(0.3)
    after = arm.observe()
    assert after.timestamp == pytest.approx(before.timestamp + 0.3)
    np.testing.assert_allclose(after.ee_position, before.ee_position, atol=2e-3)
    frames = {camera.name: camera.read() for camera in arm.cameras()}
    assert set(frames) == set(CAMERA_NAMES)
    for frame in frames.values():
        assert frame.shape == (64, 80, 3) and frame.dtype == np.uint8
        assert frame.std() > 5, "a blank frame"
    assert np.abs(frames["scene"].astype(int) - frames["wrist"].astype(int)).mean() > 5


def test_differential_ik_reaches_a_nearby_target(arm):
    start = arm.observe()
    target_position = start.ee_position + np.array([0.04, -0.03, -0.05])
    target_quaternion = quaternion_multiply(rotvec_to_quaternion([0.0, 0.0, 0.2]), start.ee_quaternion)
    stream(arm, EndEffectorPose(target_position, target_quaternion), seconds=2.0)
    reached = arm.observe()
    assert np.linalg.norm(reached.ee_position - target_position) < 0.005
    assert rotation_angle_between(reached.ee_quaternion, target_quaternion) < 0.03


def test_joint_targets_and_the_gripper(arm):
    start = arm.observe()
    target = start.joint_positions + np.array([0.1, -0.05, 0.0, 0.05, 0.0, -0.05, 0.1])
    stream(arm, JointPositions(target, gripper=0.0), seconds=1.5)
    reached = arm.observe()
    np.testing.assert_allclose(reached.joint_positions, target, atol=0.01)
    # The Franka hand model is slow (about 0.4 of its travel per second), like the real one.
    assert reached.gripper_opening < start.gripper_opening - 0.3
    stream(arm, GripperCommand(1.0), seconds=1.5)
    assert arm.observe().gripper_opening > reached.gripper_opening + 0.15


def test_forward_kinematics_matches_the_observed_pose(arm):
    state = arm.observe()
    np.testing.assert_allclose(arm.forward_kinematics(state.joint_positions), state.ee_position, atol=1e-9)
    assert math.isclose(float(np.linalg.norm(state.ee_quaternion)), 1.0)

"""Simulated arms: stepping, both cameras, differential IK, joint targets, the gripper, and what the
safety filter lets through to them."""

import importlib.util
import itertools
import math

import numpy as np
import pytest

from vpp.robots import kinematics
from vpp.robots.drivers.sim import CAMERA_NAMES, SimConfig, SimPanda, SimXArm, build_sim_arm
from vpp.robots.interfaces import EndEffectorDelta, EndEffectorPose, GripperCommand, JointPositions
from vpp.robots.rotations import quaternion_multiply, rotation_angle_between, rotvec_to_quaternion
from vpp.robots.safety import SafetyLimits, SafetyViolationError

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
    robot.safety_filter = robot.make_safety_filter(SERVO_PERIOD_S)
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


def _tcp_of(command, arm_kinematics) -> np.ndarray:
    return command.position if isinstance(command, EndEffectorPose) else arm_kinematics(command.positions)


def _fuzz_commands(arm, rng):
    """Garbage of every kind, then streams far outside the box: pose targets, then joint targets."""
    limits = arm.safety_filter.limits
    down = arm.observe().ee_quaternion
    for _ in range(300):
        kind = rng.integers(7)
        if kind == 0:
            yield EndEffectorPose(
                rng.uniform(-3, 3, 3), rng.normal(size=4) + 1e-3, gripper=rng.uniform(-2, 3)
            )
        elif kind == 1:
            yield EndEffectorDelta(rng.uniform(-1, 1, 3), rng.uniform(-3, 3, 3), gripper=rng.uniform(-2, 3))
        elif kind == 2:
            yield JointPositions(rng.uniform(-7, 7, 7), gripper=rng.uniform(-2, 3))
        elif kind == 3:
            yield JointPositions(rng.uniform(-1, 1, int(rng.choice([6, 8]))))
        elif kind == 4:
            bad = rng.choice([math.nan, math.inf, -math.inf])
            yield rng.choice(
                [
                    EndEffectorPose([0.5, bad, 0.3], down),
                    EndEffectorDelta([0, 0, 0], [bad, 0, 0]),
                    JointPositions(np.full(7, bad)),
                    GripperCommand(bad),
                ]
            )
        elif kind == 5:
            yield GripperCommand(rng.uniform(-5, 5))
        else:
            yield EndEffectorPose(arm.observe().ee_position + rng.normal(0, 0.05, 3), down)
    # Down through the table and out beyond the box's corner.
    beyond = np.array(
        [limits.workspace_max[0] + 0.5, limits.workspace_max[1] + 0.5, limits.workspace_min[2] - 0.5]
    )
    for _ in range(300):
        yield EndEffectorPose(beyond, down)
    # From wherever that left the arm, a joint-space line that drives the TCP straight down
    # (along the gradient of its height), to the joint limits.
    joints = arm.observe().joint_positions
    arm_kinematics = kinematics.for_arm(arm.safety_kind)
    gradient = np.array([arm_kinematics(joints + 1e-6 * np.eye(7)[j])[2] for j in range(7)])
    gradient -= arm_kinematics(joints)[2]
    downwards = np.clip(
        joints - 3.0 * gradient / np.linalg.norm(gradient), limits.joint_min, limits.joint_max
    )
    for _ in range(300):
        yield JointPositions(downwards)
    for _ in range(3):
        goal = rng.uniform(limits.joint_min, limits.joint_max)
        for _ in range(100):
            yield JointPositions(goal)


def test_no_bad_command_reaches_a_simulated_arm_under_garbage_and_streams(arm):
    """What reaches the simulated arm's controller (after the filter, at 100 Hz of simulated time)
    under 300 garbage commands, 3 s of a pose target 0.5 m below the table and beyond the box's
    corner, 3 s of a joint target that drives the TCP straight down through the table, and 3 s of
    joint targets drawn anywhere within the joint limits: every target finite and within the joint
    and gripper limits, its TCP inside the box (a joint target's by the kinematics) or, were the
    arm itself outside, no further out than the arm; every step within speed x simulated time.
    Measured (seed 0; counts include gripper commands; the box floor is z = 0.02 on the Panda,
    -0.09 on the xArm, whose base stands 0.11 m above its table):
      SimPanda: 1116 commands reached the arm, 84 refused (non-finite, wrong length); targets at
        most 0.164 m/s (cap 0.2; the lead holds them to what the arm follows), the arm's TCP at
        most 0.158 m/s and never lower than z = 0.0235; no target or arm pose outside the box.
      SimXArm: 1116 reached, 84 refused; targets at most 0.142 m/s, the TCP at most 0.089 m/s,
        lowest z = -0.0557; nothing outside the box."""
    limits = arm.safety_filter.limits
    arm_kinematics = kinematics.for_arm(arm.safety_kind)
    received = []
    send_to_controller = arm._send_filtered

    def record(command):
        received.append((arm.simulated_time(), command, arm.observe()))
        send_to_controller(command)

    arm._send_filtered = record
    refused, observed = 0, [arm.observe()]
    for command in _fuzz_commands(arm, np.random.default_rng(0)):
        try:
            arm.send(command)
        except SafetyViolationError:
            refused += 1
        arm.advance(SERVO_PERIOD_S)
        observed.append(arm.observe())

    low, high = np.array(limits.workspace_min), np.array(limits.workspace_max)

    def outside(position):
        return float(np.linalg.norm(position - np.clip(position, low, high)))

    motions = [(t, c, s) for t, c, s in received if not isinstance(c, GripperCommand)]
    assert len(motions) > 700 and refused > 50
    target_speeds = []
    for (t0, c0, _), (t1, c1, s1) in itertools.pairwise(motions):
        values = [c1.position, c1.quaternion] if isinstance(c1, EndEffectorPose) else [c1.positions]
        assert all(np.all(np.isfinite(v)) for v in values)
        assert c1.gripper is None or limits.gripper_min <= c1.gripper <= limits.gripper_max
        if isinstance(c1, JointPositions):
            assert np.all(c1.positions >= limits.joint_min) and np.all(c1.positions <= limits.joint_max)
        assert outside(_tcp_of(c1, arm_kinematics)) <= outside(s1.ee_position) + 1e-9
        if type(c0) is type(c1):  # a switch of kind restarts from the measured state
            if isinstance(c1, JointPositions):
                fractions = np.linspace(0, 1, 33)[:, None]
                path = arm_kinematics(c0.positions + fractions * (c1.positions - c0.positions))
                step = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
            else:
                step = np.linalg.norm(c1.position - c0.position)
            assert (
                step <= limits.max_linear_velocity_m_s * min(t1 - t0, limits.max_budget_s) * (1 + 1e-3) + 1e-9
            )
            target_speeds.append(step / (t1 - t0))
    arm_positions = np.array([state.ee_position for state in observed])
    arm_speeds = np.linalg.norm(np.diff(arm_positions, axis=0), axis=1) / SERVO_PERIOD_S
    assert max(target_speeds) <= limits.max_linear_velocity_m_s * (1 + 1e-3)
    # The arm itself: under the cap (with a margin for the servos' own dynamics), never through
    # the box's floor although the streams drove it down to within a few centimetres of it.
    assert arm_speeds.max() <= 1.1 * limits.max_linear_velocity_m_s
    assert max(map(outside, arm_positions)) < 1e-3
    assert low[2] - 1e-3 <= arm_positions[:, 2].min() < low[2] + 0.05


def test_build_sim_arm_gives_the_filter_the_arms_kinematics_and_simulated_time():
    with pytest.raises(ValueError, match="servo_rate_hz=0"):
        build_sim_arm("sim-panda", SimConfig(realtime=False), 0.0)
    arm = build_sim_arm("sim-panda", SimConfig(realtime=False, image_height=16, image_width=16), 50.0)
    try:
        safety = arm.safety_filter
        assert safety.limits == SafetyLimits.for_arm("sim-panda", control_period_s=0.02)
        assert safety.forward_kinematics == kinematics.for_arm("sim-panda")
        before = safety._clock()
        arm.advance(0.3)
        assert safety._clock() == pytest.approx(before + 0.3)
    finally:
        arm.close()

"""XArmRobot against the loopback fake controller: nothing outside the limits reaches it."""

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_xarm_controller import (
    CLEAN_ERR,
    END_EFFECTOR_COMMUNICATION_ERROR,
    MOTION_EN,
    SET_MODE,
    SET_STATE,
    STATE_STOPPED,
    serving_fake_xarm,
)

from vpp.robots.drivers.xarm import XArmConfig, XArmRobot
from vpp.robots.interfaces import (
    ControllerFaultError,
    EndEffectorDelta,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    RobotConnectionError,
)
from vpp.robots.safety import SafetyFilter, SafetyLimits, SafetyViolationError

LIMITS = SafetyLimits.xarm7(
    workspace_min=(0.3, -0.2, 0.1),
    workspace_max=(0.5, 0.2, 0.4),
    control_period_s=0.01,
    max_position_step_m=0.005,
    max_linear_velocity_m_s=0.5,
    max_linear_acceleration_m_s2=50.0,
    max_rotation_step_rad=0.02,
    max_joint_step_rad=0.01,
    max_joint_velocity_rad_s=1.0,
    max_joint_acceleration_rad_s2=50.0,
)
TOLERANCE = 1e-4  # fp32 on the wire


@pytest.fixture(scope="module")
def fake_controller():
    with serving_fake_xarm() as fake:
        yield fake


@pytest.fixture
def robot(fake_controller):
    fake_controller.inject_error(0)
    fake_controller.inject_warning(0)
    fake_controller.reset_gripper()
    fake_controller.joints = [0.0, -0.3, 0.0, 0.6, 0.0, 0.9, 0.0]
    fake_controller.pose = [400.0, 0.0, 300.0, math.pi, 0.0, 0.0]
    # The fake's report thread shares this process (and its GIL): on a loaded machine its 100 Hz
    # reports can stall past the 0.3 s default, which would read as a lost link.
    arm = XArmRobot(XArmConfig("127.0.0.1", report_timeout_s=1.0), SafetyFilter(LIMITS))
    arm.connect()
    fake_controller.received.clear()
    yield arm
    arm.close()


def stream(robot, commands, period_s=0.01):
    for command in commands:
        robot.send(command)
        time.sleep(period_s)


def send_for(robot, command, seconds, pause_s):
    """Sends ``command`` every ``pause_s`` for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        robot.send(command)
        time.sleep(pause_s)


def test_connect_enables_servo_mode_over_loopback_tcp(fake_controller, robot):
    assert fake_controller.enabled and fake_controller.mode == 1
    assert {MOTION_EN, SET_MODE, SET_STATE} <= set(fake_controller.function_codes)
    state = robot.observe()
    np.testing.assert_allclose(state.ee_position, [0.4, 0.0, 0.3], atol=TOLERANCE)
    np.testing.assert_allclose(state.joint_positions, fake_controller.joints, atol=TOLERANCE)
    assert abs(np.linalg.norm(state.ee_quaternion) - 1) < 1e-9


def test_wild_cartesian_actions_never_leave_the_limits(fake_controller, robot):
    rng = np.random.default_rng(0)
    actions = [EndEffectorDelta(rng.uniform(-0.5, 0.5, 3), rng.uniform(-1.0, 1.0, 3)) for _ in range(40)] + [
        EndEffectorPose([2.0, -3.0, -1.0], [0, 0, 0, 1])
    ] * 20
    stream(robot, actions)

    received = [m for m in fake_controller.received if m.kind == "servo_cartesian"]
    assert len(received) == len(actions)
    positions_m = np.array([m.values[:3] for m in received]) / 1000.0
    assert np.all(positions_m >= np.array(LIMITS.workspace_min) - TOLERANCE)
    assert np.all(positions_m <= np.array(LIMITS.workspace_max) + TOLERANCE)
    steps = np.linalg.norm(np.diff(np.vstack([[0.4, 0.0, 0.3], positions_m]), axis=0), axis=1)
    assert steps.max() <= LIMITS.position_step_limit_m + TOLERANCE
    # The unreachable absolute target ends up pulling the arm to the nearest box corner.
    assert positions_m[-1, 1] < positions_m[-20, 1] and positions_m[-1, 2] < positions_m[-20, 2]


def test_nan_action_is_rejected_before_the_controller(fake_controller, robot):
    robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0]))
    before = len(fake_controller.received)
    for bad in ([math.nan, 0, 0], [0, math.inf, 0]):
        with pytest.raises(SafetyViolationError, match="translation"):
            robot.send(EndEffectorDelta(bad, [0, 0, 0]))
    assert len(fake_controller.received) == before


def test_joint_targets_are_clamped_and_rate_limited(fake_controller, robot):
    far = np.array(LIMITS.joint_max) + 1.0
    stream(robot, [JointPositions(far)] * 30)
    received = np.array([m.values for m in fake_controller.received if m.kind == "servo_joint"])
    assert len(received) == 30
    assert np.all(received <= np.array(LIMITS.joint_max) + TOLERANCE)
    start = np.array([0.0, -0.3, 0.0, 0.6, 0.0, 0.9, 0.0])
    steps = np.abs(np.diff(np.vstack([start, received]), axis=0))
    assert steps.max() <= LIMITS.joint_step_limit_rad + TOLERANCE


def test_controller_error_raises_stops_and_recovers(fake_controller, robot):
    robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0]))
    fake_controller.inject_error(22)
    fake_controller.state = 2  # a stop issued by the driver must be seen, not inherited
    time.sleep(0.05)
    with pytest.raises(ControllerFaultError, match=r"22.*Self-Collision") as fault:
        robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0]))
    assert fault.value.code == 22
    assert fake_controller.state == STATE_STOPPED
    assert all(m.executed for m in fake_controller.received)

    robot.recover()
    assert CLEAN_ERR in fake_controller.function_codes
    robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0]))
    assert fake_controller.received[-1].executed


def test_lost_connection_raises_within_the_report_timeout(fake_controller, robot):
    robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0]))
    fake_controller.drop_connections()
    started = time.monotonic()
    with pytest.raises(RobotConnectionError, match="lost connection"):
        send_for(robot, EndEffectorDelta([0.001, 0, 0], [0, 0, 0]), seconds=3.0, pause_s=0.01)
    assert time.monotonic() - started < 2.5


def wait_for_opening(robot, opening, seconds=3.0, tolerance=0.01):
    deadline = time.monotonic() + seconds
    while abs(robot.observe().gripper_opening - opening) > tolerance and time.monotonic() < deadline:
        time.sleep(0.02)
    return robot.observe().gripper_opening


def test_connect_enables_the_gripper_in_position_mode(fake_controller, robot):
    gripper = fake_controller.gripper
    assert gripper.enabled and gripper.mode == 0 and gripper.speed_rpm == 5000
    assert robot.observe().gripper_opening == pytest.approx(1.0)  # the fake starts fully open (850)


def test_gripper_targets_drive_the_fingers_and_the_width_reads_back(fake_controller, robot):
    sent = robot.send(GripperCommand(0.2))
    assert sent.opening == 0.2
    assert fake_controller.gripper.targets == [170]  # 0.2 of 0..850 pulses
    # The fingers take a while (about 0.6 s for the full stroke in the fake), and observe reads it.
    openings = [robot.observe().gripper_opening]
    time.sleep(0.2)
    openings.append(robot.observe().gripper_opening)
    assert 0.2 < openings[1] < openings[0] == pytest.approx(1.0)
    assert wait_for_opening(robot, 0.2) == pytest.approx(0.2, abs=0.01)
    # The arm's own targets carry a gripper opening too.
    robot.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0], gripper=0.9))
    assert fake_controller.gripper.targets[-1] == 765
    assert wait_for_opening(robot, 0.9) == pytest.approx(0.9, abs=0.01)


def test_streamed_gripper_targets_are_sent_only_when_they_change(fake_controller, robot):
    robot.send(GripperCommand(0.5))
    started = time.monotonic()
    for opening in [0.5] * 20 + [0.505] * 5 + [0.53]:  # 0.505 is inside the 0.01 deadband
        robot.send(EndEffectorDelta([0.0005, 0, 0], [0, 0, 0], gripper=opening))
    per_send = (time.monotonic() - started) / 26
    assert fake_controller.gripper.targets == [425, 450]
    assert per_send < 0.02, "a gripper target must not wait for the fingers"


def test_gripper_error_is_a_fault_with_its_code_and_recover_clears_it(fake_controller, robot):
    robot.send(GripperCommand(0.0))
    fake_controller.inject_gripper_error(11)
    time.sleep(0.06)  # past the gripper poll period, so observe reads the gripper again
    with pytest.raises(ControllerFaultError, match=r"gripper error 11: Gripper Current Overlimit") as fault:
        robot.observe()
    assert fault.value.code == 11
    assert fake_controller.state == STATE_STOPPED
    assert not fake_controller.gripper.enabled

    robot.recover()
    assert fake_controller.gripper.error_code == 0 and fake_controller.gripper.enabled
    robot.send(GripperCommand(1.0))
    assert wait_for_opening(robot, 1.0) == pytest.approx(1.0, abs=0.01)


def test_a_missing_gripper_fails_connect_with_how_to_run_without_it(fake_controller):
    fake_controller.inject_error(0)
    fake_controller.reset_gripper(installed=False)
    arm = XArmRobot(XArmConfig("127.0.0.1"), SafetyFilter(LIMITS))
    try:
        with pytest.raises(
            ControllerFaultError, match=r"End Effector Communication.*use_gripper=False"
        ) as fault:
            arm.connect()
        assert fault.value.code == END_EFFECTOR_COMMUNICATION_ERROR
    finally:
        arm.close()
    fake_controller.inject_error(0)
    without = XArmRobot(XArmConfig("127.0.0.1", use_gripper=False), SafetyFilter(LIMITS))
    without.connect()
    try:
        assert without.observe().gripper_opening is None
        without.send(EndEffectorDelta([0.001, 0, 0], [0, 0, 0], gripper=0.3))  # ignored, with a warning
        assert fake_controller.received[-1].executed
    finally:
        without.close()


def test_gripper_config_is_checked():
    with pytest.raises(ValueError, match="gripper_open_pulses"):
        XArmConfig("127.0.0.1", gripper_open_pulses=0.0)
    with pytest.raises(ValueError, match="gripper_deadband"):
        XArmConfig("127.0.0.1", gripper_deadband=1.5)


def test_lost_connection_during_gripper_targets_is_a_connection_error(fake_controller, robot):
    robot.send(GripperCommand(0.5))
    fake_controller.drop_connections()
    with pytest.raises(RobotConnectionError, match="lost connection"):
        sweep_gripper(robot, seconds=2.5)


def sweep_gripper(robot, seconds):
    """Sends a new gripper target every 10 ms for ``seconds``."""
    openings = iter(np.linspace(0.0, 1.0, 1000))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        robot.send(GripperCommand(next(openings)))
        time.sleep(0.01)

"""SafetyFilter and rotation helpers, without any controller."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from vpp.robots.interfaces import (
    EndEffectorDelta,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    RobotState,
)
from vpp.robots.rotations import (
    quaternion_to_rotvec,
    quaternion_to_rpy,
    rotation_angle_between,
    rotvec_to_quaternion,
    rpy_to_quaternion,
)
from vpp.robots.safety import SafetyFilter, SafetyLimits, SafetyViolationError

DOWN = rpy_to_quaternion([math.pi, 0.0, 0.0])


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_state(position=(0.5, 0.0, 0.3), joints=(0.0,) * 7, quaternion=DOWN) -> RobotState:
    return RobotState(
        np.array(joints), np.array(position), np.array(quaternion), gripper_opening=0.5, timestamp=0.0
    )


def follow(safety, clock, command, state, steps):
    """Applies `command` repeatedly to an ideal arm that reaches each target within one period."""
    targets = []
    for _ in range(steps):
        target = safety.filter(command, state)
        targets.append(target)
        if isinstance(target, EndEffectorPose):
            state = make_state(target.position, state.joint_positions, target.quaternion)
        else:
            state = make_state(state.ee_position, target.positions, state.ee_quaternion)
        clock.now += safety.limits.control_period_s
    return targets, state


def test_nonfinite_actions_raise_with_the_offending_field():
    safety = SafetyFilter(SafetyLimits())
    with pytest.raises(SafetyViolationError, match=r"rotation=\[0.0, inf, 0.0\]"):
        safety.filter(EndEffectorDelta([0, 0, 0], [0, math.inf, 0]), make_state())
    with pytest.raises(SafetyViolationError, match="gripper=nan"):
        safety.filter(JointPositions(np.zeros(7), gripper=math.nan), make_state())


def test_nonfinite_actions_hold_position_when_configured():
    state = make_state()
    held = SafetyFilter(SafetyLimits(on_nonfinite="hold")).filter(
        EndEffectorDelta([math.nan, 0, 0], [0, 0, 0]), state
    )
    np.testing.assert_array_equal(held.position, state.ee_position)
    assert rotation_angle_between(held.quaternion, state.ee_quaternion) < 1e-9


def test_nonfinite_state_is_refused():
    state = make_state(position=(0.5, math.nan, 0.3))
    with pytest.raises(SafetyViolationError, match="state is not finite"):
        SafetyFilter(SafetyLimits()).filter(GripperCommand(0.5), state)


def test_targets_are_clamped_into_the_workspace_and_step_limited():
    clock = ManualClock()
    limits = SafetyLimits(max_linear_acceleration_m_s2=100.0)
    safety = SafetyFilter(limits, clock=clock)
    targets, final = follow(safety, clock, EndEffectorPose([5.0, 5.0, -5.0], DOWN), make_state(), 100)
    positions = np.array([t.position for t in targets])
    assert np.all(positions >= np.array(limits.workspace_min) - 1e-12)
    assert np.all(positions <= np.array(limits.workspace_max) + 1e-12)
    steps = np.linalg.norm(np.diff(np.vstack([[0.5, 0.0, 0.3], positions]), axis=0), axis=1)
    assert steps.max() <= limits.position_step_limit_m + 1e-12
    np.testing.assert_allclose(final.ee_position, [0.75, 0.4, 0.05], atol=1e-9)


def test_rotation_steps_are_limited_and_reach_the_target():
    clock = ManualClock()
    limits = SafetyLimits(max_angular_acceleration_rad_s2=1000.0)
    safety = SafetyFilter(limits, clock=clock)
    goal = rpy_to_quaternion([math.pi, 0.0, 1.0])
    targets, final = follow(safety, clock, EndEffectorPose([0.5, 0.0, 0.3], goal), make_state(), 20)
    angles = [rotation_angle_between(a.quaternion, b.quaternion) for a, b in itertools.pairwise(targets)]
    assert max(angles) <= limits.rotation_step_limit_rad + 1e-9
    assert rotation_angle_between(final.ee_quaternion, goal) < 1e-9


def test_step_grows_at_the_acceleration_limit_and_restarts_after_a_pause():
    clock = ManualClock()
    limits = SafetyLimits(max_linear_acceleration_m_s2=0.5)
    safety = SafetyFilter(limits, clock=clock)
    growth = limits.max_linear_acceleration_m_s2 * limits.control_period_s**2
    targets, state = follow(safety, clock, EndEffectorDelta([0.0, 0.1, 0.0], [0, 0, 0]), make_state(), 3)
    steps = np.diff(np.array([[0.5, 0.0, 0.3]] + [t.position for t in targets]), axis=0)[:, 1]
    np.testing.assert_allclose(steps, [growth, 2 * growth, 3 * growth])
    clock.now += 10 * limits.control_period_s
    restarted = safety.filter(EndEffectorDelta([0.0, 0.1, 0.0], [0, 0, 0]), state)
    assert restarted.position[1] - state.ee_position[1] == pytest.approx(growth)


def test_targets_cannot_run_away_from_a_blocked_arm():
    clock = ManualClock()
    limits = SafetyLimits(max_linear_acceleration_m_s2=100.0)
    safety = SafetyFilter(limits, clock=clock)
    blocked = make_state()
    for _ in range(20):
        target = safety.filter(EndEffectorDelta([0.0, 0.1, 0.0], [0, 0, 0]), blocked)
        clock.now += limits.control_period_s
    lead = np.linalg.norm(target.position - blocked.ee_position)
    assert lead == pytest.approx(limits.max_lead_steps * limits.position_step_limit_m)


def test_joint_targets_clamp_to_limits_and_keep_their_direction():
    clock = ManualClock()
    limits = SafetyLimits.franka_fr3(max_joint_acceleration_rad_s2=1000.0)
    safety = SafetyFilter(limits, clock=clock)
    start = np.array([0.0, 0.0, 0.0, -1.5, 0.0, 1.5, 0.0])
    wish = start + np.array([0.4, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    first = safety.filter(JointPositions(wish), make_state(joints=start)).positions
    step = first - start
    assert np.abs(step).max() == pytest.approx(limits.joint_step_limit_rad)
    assert step[0] == pytest.approx(2 * step[1])
    _, final = follow(safety, clock, JointPositions(np.full(7, 9.0)), make_state(joints=start), 200)
    np.testing.assert_allclose(final.joint_positions, limits.joint_max)


def test_forward_kinematics_keeps_joint_targets_in_the_workspace():
    limits = SafetyLimits(
        max_joint_step_rad=1.0, max_joint_velocity_rad_s=100.0, max_joint_acceleration_rad_s2=1e4
    )

    def toy_kinematics(joints):
        return np.array([0.5, 0.0, 0.3]) + np.array([joints[0], 0.0, 0.0])

    safety = SafetyFilter(limits, forward_kinematics=toy_kinematics)
    target = safety.filter(JointPositions(np.array([0.9, 0.0])), make_state(joints=(0.0, 0.0))).positions
    assert toy_kinematics(target)[0] <= limits.workspace_max[0]
    assert toy_kinematics(target)[0] == pytest.approx(limits.workspace_max[0], abs=1e-5)


def test_gripper_is_clamped_to_its_range():
    safety = SafetyFilter(SafetyLimits(gripper_min=0.1, gripper_max=0.9))
    assert safety.filter(GripperCommand(1.5), make_state()).opening == 0.9
    assert safety.filter(EndEffectorDelta([0, 0, 0], [0, 0, 0], gripper=-1.0), make_state()).gripper == 0.1


def test_limits_round_trip_through_json_and_reject_nonsense(tmp_path):
    limits = SafetyLimits.xarm7(max_position_step_m=0.004)
    limits.to_json(tmp_path / "safety.json")
    assert SafetyLimits.from_json(tmp_path / "safety.json") == limits
    with pytest.raises(ValueError, match="max_position_step_m=-1"):
        SafetyLimits(max_position_step_m=-1)
    with pytest.raises(ValueError, match="workspace_min"):
        SafetyLimits(workspace_min=(1, 0, 0), workspace_max=(0, 1, 1))


def test_rotation_conversions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        np.testing.assert_allclose(quaternion_to_rpy(rpy_to_quaternion(rpy)), rpy, atol=1e-9)
        rotvec = rng.uniform(-1.5, 1.5, 3)
        np.testing.assert_allclose(quaternion_to_rotvec(rotvec_to_quaternion(rotvec)), rotvec, atol=1e-9)


def test_robot_modules_do_not_import_ml_frameworks():
    code = (
        "import sys, vpp.robots.interfaces, vpp.robots.safety, vpp.robots.drivers.franka, vpp.robots.drivers.xarm,"
        " vpp.robots.drivers.sim, vpp.robots.control_loop, vpp.robots.policies, vpp.robots.cli,"
        " vpp.robots.experts, vpp.robots.collect, vpp.robots.evaluate, vpp.robots.envs.metaworld;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"

"""Franka link loss and stalls: each test owns a simulator (franky-sim's ports are fixed, and
these tests leave the connection unusable), so they live apart from the main Franka module."""

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from franky_sim_process import FrankySimProcess

from vpp.robots.control_loop import ControlLoop, ControlLoopConfig
from vpp.robots.drivers.franka import FrankaConfig, FrankaRobot
from vpp.robots.interfaces import EndEffectorDelta, RobotConnectionError, RobotError
from vpp.robots.policies import SinePolicy
from vpp.robots.safety import SafetyFilter, SafetyLimits


def observe_for(arm: FrankaRobot, seconds: float, pause_s: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        arm.observe()
        time.sleep(pause_s)


def test_lost_connection_raises_connection_error():
    sim = FrankySimProcess()
    arm = FrankaRobot(FrankaConfig(sim.host, enforce_realtime=False), SafetyFilter(SafetyLimits.franka_fr3()))
    try:
        arm.connect()
        arm.observe()
        sim.stop()
        with pytest.raises(RobotConnectionError, match="lost connection"):
            arm.observe()
    finally:
        arm.close()
        sim.stop()


def test_reflex_as_a_motion_ends_is_never_silent():
    """With this timing franky's control loop stalls and keeps serving one cached state; the
    driver must notice (robot clock frozen) instead of streaming targets into the void."""
    sim = FrankySimProcess()
    arm = FrankaRobot(
        FrankaConfig(sim.host, enforce_realtime=False, relative_dynamics_factor=0.3),
        SafetyFilter(SafetyLimits.franka_fr3(control_period_s=0.1)),
    )
    try:
        arm.connect()
        for _ in range(10):
            arm.send(EndEffectorDelta([0.0, 0.05, 0.0], [0, 0, 0], gripper=0.2))
            time.sleep(0.1)
        time.sleep(0.5)
        arm.send(EndEffectorDelta([0.0, 0.05, 0.0], [0, 0, 0]))
        sim.inject_reflex()
        with pytest.raises(RobotError):
            observe_for(arm, seconds=2.0, pause_s=0.05)
    finally:
        arm.close()
        sim.stop()


def test_every_read_after_a_lost_link_is_a_connection_error():
    """franky raises NetworkException on the first read after the link dies and a bare
    RuntimeError("Net Exception") on every later one (arm state and gripper width alike)."""
    sim = FrankySimProcess()
    arm = FrankaRobot(FrankaConfig(sim.host, enforce_realtime=False), SafetyFilter(SafetyLimits.franka_fr3()))
    try:
        arm.connect()
        arm.observe()
        sim.kill()
        for _ in range(3):
            with pytest.raises(RobotConnectionError, match="lost connection"):
                arm.observe()
        with pytest.raises(RobotConnectionError, match="lost connection"):
            arm.send(EndEffectorDelta([0.0, 0.0, 0.01], [0, 0, 0]))
    finally:
        arm.close()
        sim.stop()


@pytest.fixture
def thread_crashes(monkeypatch):
    """Exceptions that escaped a thread (the traceback Python prints for them)."""
    crashes = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    return crashes


def test_killing_the_simulator_mid_run_ends_the_loop_with_a_connection_error(thread_crashes, capfd):
    sim = FrankySimProcess()
    arm = FrankaRobot(
        FrankaConfig(sim.host, enforce_realtime=False),
        SafetyFilter(SafetyLimits.franka_fr3(control_period_s=0.01)),
    )
    killer = threading.Timer(1.5, sim.kill)
    try:
        arm.connect()
        loop = ControlLoop(arm, [], SinePolicy(), ControlLoopConfig(policy_rate_hz=10.0, servo_rate_hz=100.0))
        killer.start()
        started = time.monotonic()
        report = loop.run("circle", seconds=10.0)
        elapsed = time.monotonic() - started
    finally:
        killer.cancel()
        arm.close()
        sim.stop()
    assert report.stop_reason.startswith("RobotConnectionError: lost connection to Franka"), (
        report.stop_reason
    )
    assert report.ticks >= 10 and elapsed < 6.0
    assert thread_crashes == []
    assert "Traceback" not in capfd.readouterr().err

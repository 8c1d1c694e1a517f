"""Franka link loss: its own module, because franky-sim's ports are fixed and the main Franka
module keeps a simulator running for all of its tests."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from franky_sim_process import FrankySimProcess  # noqa: E402
from vpp.robots.drivers.franka import FrankaConfig, FrankaRobot  # noqa: E402
from vpp.robots.interfaces import RobotConnectionError  # noqa: E402
from vpp.robots.safety import SafetyFilter, SafetyLimits  # noqa: E402


def test_lost_connection_raises_connection_error():
    sim = FrankySimProcess()
    arm = FrankaRobot(FrankaConfig("127.0.0.1", enforce_realtime=False), SafetyFilter(SafetyLimits.franka_fr3()))
    try:
        arm.connect()
        arm.observe()
        sim.stop()
        with pytest.raises(RobotConnectionError, match="lost connection"):
            arm.observe()
    finally:
        arm.close()
        sim.stop()

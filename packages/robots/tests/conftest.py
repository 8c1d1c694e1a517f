"""Fixtures shared by this folder's tests."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def fake_xarm():
    """A loopback fake xArm controller that XArmAPI("127.0.0.1") connects to, at its home pose."""
    from fake_xarm_controller import serving_fake_xarm

    with serving_fake_xarm(
        joints=[0.0, -0.3, 0.0, 0.6, 0.0, 0.9, 0.0], pose=[400.0, 0.0, 300.0, np.pi, 0.0, 0.0]
    ) as fake:
        yield fake

"""Fixtures shared by this folder's tests."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def fake_xarm():
    """A loopback fake xArm controller that XArmAPI("127.0.0.1") connects to, at its home pose."""
    from fake_xarm_controller import FakeXArmController
    from xarm.core.config.x_config import XCONF
    from xarm.x3.report import ReportDataStructure

    fake = FakeXArmController().start()
    fake.joints = [0.0, -0.3, 0.0, 0.6, 0.0, 0.9, 0.0]
    fake.pose = [400.0, 0.0, 300.0, np.pi, 0.0, 0.0]
    original_create = ReportDataStructure.create.__func__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XCONF.SocketConf, "TCP_CONTROL_PORT", fake.control_port)
        patch.setattr(XCONF.SocketConf, "TCP_REPORT_NORM_PORT", fake.report_port)
        # The SDK picks the report layout by the well-known port number; map ours onto it.
        patch.setattr(
            ReportDataStructure,
            "create",
            classmethod(
                lambda cls, port, **kw: original_create(
                    cls, 30001 if port == fake.report_port else port, **kw
                )
            ),
        )
        yield fake
    fake.stop()

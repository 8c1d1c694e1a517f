"""Fixtures the policy tests share.

``one_thread`` (root conftest.py) pins torch to one thread; the model-level modules use it for
every test (``pytestmark``), since tiny models gain nothing from a second thread, and on a shared
2-core machine two spinning OpenMP threads slow them down 30-100x when another process holds a core.
"""

import pytest
import torch

from vpp.tvp.model import TextGuidedVideoPredictor


@pytest.fixture
def tvp() -> TextGuidedVideoPredictor:
    """A fresh tiny TVP with seed-0 weights (building one takes well under a second)."""
    torch.manual_seed(0)
    return TextGuidedVideoPredictor.from_preset("tiny")

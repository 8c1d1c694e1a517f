"""Suite-wide test settings.

Triton reads TRITON_INTERPRET once, when it is first imported, and diffusers (like the MuJoCo
rendering set-up) imports it early; without a GPU the Triton parity tests can only run in the
interpreter, so it is switched on for the whole process before anything imports triton.

accelerate keeps one process-wide state, and a trainer built with other settings needs a fresh
one: every test that imported accelerate resets it when it ends (``fresh_accelerator_state``).
``one_thread`` pins torch to one thread for a test (``pytest.mark.usefixtures("one_thread")``),
for the trainings whose measured margins were recorded that way.

MuJoCo binds its GL backend when first imported, and some test modules import it (through
franky-sim) at collection time, so the off-screen backend is chosen here, before collection.
"""

import os
import sys

import pytest

if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vpp.data.offscreen_gl import ensure_offscreen_gl

ensure_offscreen_gl()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    state = sys.modules.get("accelerate.state")  # a test that never imported accelerate has none
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

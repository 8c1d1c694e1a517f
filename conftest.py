"""Suite-wide test settings.

Triton reads TRITON_INTERPRET once, when it is first imported, and diffusers (like the MuJoCo
rendering set-up) imports it early; without a GPU the Triton parity tests can only run in the
interpreter, so it is switched on for the whole process before anything imports triton.

MuJoCo binds its GL backend when first imported, and some test modules import it (through
franky-sim) at collection time, so the off-screen backend is chosen here, before collection.
"""

import os

if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vpp.data.offscreen_gl import ensure_offscreen_gl  # noqa: E402

ensure_offscreen_gl()

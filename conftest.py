"""Suite-wide test settings.

Triton reads TRITON_INTERPRET once, when it is first imported, and diffusers (like the MuJoCo
rendering set-up) imports it early; without a GPU the Triton parity tests can only run in the
interpreter, so it is switched on for the whole process before anything imports triton.
"""

import os

if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

"""Choosing MuJoCo's off-screen GL backend before anything loads GL.

MuJoCo renders without a display through EGL or OSMesa, chosen by MUJOCO_GL before GL is first
loaded. EGL is faster but fails to create a context on some machines, so it is probed in a child
process (a failed attempt cannot be undone in this one) and OSMesa is the fallback.

Mesa's software rasteriser and Triton each load their own LLVM: Triton loaded after Mesa has
rendered crashes the process (a segfault importing triton, e.g. through diffusers), while loaded
first both work. So Triton, where installed, is imported here first.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

_EGL_PROBE = "from mujoco.egl import GLContext; c = GLContext(8, 8); c.make_current(); c.free()"


def ensure_offscreen_gl() -> str:
    """Sets MUJOCO_GL (unless the user did) and PYOPENGL_PLATFORM; returns the backend."""
    if "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        # mujoco binds its GL backend when imported: too late to choose now
        raise RuntimeError(
            "mujoco was imported before an off-screen GL backend was chosen, and there is no display; "
            "call vpp.data.offscreen_gl.ensure_offscreen_gl() (or set MUJOCO_GL=egl/osmesa) before importing mujoco"
        )
    if "MUJOCO_GL" not in os.environ:
        probe = subprocess.run(
            [sys.executable, "-c", _EGL_PROBE],
            env={**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"},
            check=False,
            capture_output=True,
            timeout=120,
        )
        os.environ["MUJOCO_GL"] = "egl" if probe.returncode == 0 else "osmesa"
        if probe.returncode != 0:
            logger.info(
                "EGL unavailable (%s); rendering with OSMesa",
                probe.stderr.decode(errors="replace").strip()[-200:],
            )
    backend = os.environ["MUJOCO_GL"]
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")
    return backend

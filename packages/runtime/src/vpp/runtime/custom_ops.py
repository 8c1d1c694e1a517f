"""vpp-runtime's ONNX Runtime custom ops (domain ``vpp.fused``), and where their library is.

``libvpp_ort_ops.so`` holds the fused GroupNorm(+SiLU) and GeGLU ops. scikit-build-core builds
it into the vpp-runtime wheel from the package's C++ sources (``packages/runtime/cpp``:
``src/ort_ops.cpp`` and the kernels it calls), against ONNX Runtime's C API header; a build
that finds no header stops, unless ``-Ccmake.define.VPP_REQUIRE_ORT_OPS=OFF`` asks for a wheel
without the library (``scripts/ort-headers.sh`` fetches the header into a checkout). It has no
Python in it: C++ deployments can register the same file. Graphs exported with fused kernels
(``vpp-export``, the default) name their ops in the manifest (``graphs.<name>.custom_ops``);
:class:`vpp.runtime.Policy` registers the library for them, and nothing else needs it.
``VPP_ORT_OPS_LIBRARY=/path/to/libvpp_ort_ops.so`` overrides where it is looked for. No torch,
no onnx: ctypes and the standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

DOMAIN = "vpp.fused"
LIBRARY_NAMES = {"linux": "libvpp_ort_ops.so", "darwin": "libvpp_ort_ops.dylib", "win32": "vpp_ort_ops.dll"}
ENVIRONMENT_VARIABLE = "VPP_ORT_OPS_LIBRARY"


class CustomOpsUnavailableError(RuntimeError):
    """An artifact needs ``vpp.fused`` ops that this vpp-runtime installation does not have."""


def library_name() -> str:
    return LIBRARY_NAMES.get(sys.platform, LIBRARY_NAMES["linux"])


def ort_ops_library() -> Path | None:
    """The custom-op library's path, or None when this installation was built without it.
    ``$VPP_ORT_OPS_LIBRARY``, when set, must name an existing file."""
    override = os.environ.get(ENVIRONMENT_VARIABLE)
    if override:
        path = Path(override)
        if not path.is_file():
            raise CustomOpsUnavailableError(f"{ENVIRONMENT_VARIABLE}={override}: no such file")
        return path
    import vpp.runtime

    # vpp.runtime may span the source tree and site-packages (editable installs): look in each.
    for folder in vpp.runtime.__path__:
        candidate = Path(folder) / library_name()
        if candidate.is_file():
            return candidate
    return None


def library_ops(path: Path) -> dict[str, list[str]]:
    """{op name: execution providers it has a kernel for} as the library itself reports."""
    handle = ctypes.CDLL(str(path))
    describe = handle.vpp_fused_ops
    describe.restype = ctypes.c_char_p
    ops = {}
    for entry in describe().decode().split(";"):
        name, _, providers = entry.partition(":")
        ops[name] = providers.split(",") if providers else []
    return ops


def require_library(needed: dict[str, int], what: str) -> Path:
    """The library's path, checked to hold every op in ``needed`` ({op: node count}); raises
    :class:`CustomOpsUnavailableError` naming the fixes otherwise."""
    path = ort_ops_library()
    if path is None:
        raise CustomOpsUnavailableError(
            f"{what} uses {DOMAIN} custom ops ({', '.join(sorted(needed))}), "
            f"and this vpp-runtime was built without {library_name()} (with VPP_REQUIRE_ORT_OPS=OFF, "
            "or from a copy that had no onnxruntime_c_api.h). Rebuild it with ONNX Runtime's include "
            "folder (VPP_ORT_INCLUDE_DIR=<folder> pip install ..., or scripts/ort-headers.sh in a "
            f"checkout), set {ENVIRONMENT_VARIABLE}, or re-export the policy "
            "with `vpp-export --standard-ops-only`"
        )
    missing = sorted(set(needed) - set(library_ops(path)))
    if missing:
        raise CustomOpsUnavailableError(
            f"{what} uses {DOMAIN} ops {missing} that {path} does not have; update vpp-runtime"
        )
    return path

"""vpp-kernels: the fused kernels on numpy arrays, for parity tests and benchmarks (development only).

The artifact never calls these: ONNX Runtime runs the exported graphs, and the GroupNorm+SiLU and
GEGLU kernels reach it as vpp-runtime's custom-op library (``libvpp_ort_ops``), compiled from
the same C++ files (packages/runtime/cpp). The sampler steps and the attention kernel stay here:
measured against ORT's own nodes they did not win (packages/kernels/README.md).

Each function checks its inputs here (dtype float32, C-contiguous, shapes) and raises a
ValueError that names the offending value, then calls the compiled extension
``vpp.kernels._kernels`` (C++, a pool of std::threads over all cores, GIL released). Nothing
here imports torch: the Triton versions live in :mod:`vpp.kernels.triton_kernels`;
:mod:`vpp.kernels.reference` holds the unfused numpy versions that tests and benchmarks
compare against.

- :func:`group_norm_silu`: GroupNorm with affine weight/bias followed by SiLU, in two passes
  over memory (statistics, then normalise + affine + SiLU), for (N, C, ...) inputs: NCHW
  ResNet blocks and (N, C, T) / (N, C, T, H, W) temporal blocks of the SVD UNet alike.
- :func:`geglu`: value * GELU(gate), the GEGLU feed-forward's activation, in one pass (exact erf
  GELU from a vectorised erf, ~2e-7 absolute).
- :func:`edm_denoise`, :func:`ddim_step`, :func:`euler_step`: the denoiser's output
  preconditioning D = c_skip x + c_out F fused with the sampler update, one pass over memory.
- :func:`scaled_dot_product_attention`: softmax(q k^T * scale) v with an online softmax,
  optional boolean mask and causal masking.
"""

from __future__ import annotations

import importlib.util
import logging
from types import ModuleType
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Parameterisation = Literal["edm", "v"]
Backend = Literal["cpu", "cuda"]

__all__ = [
    "BackendUnavailableError",
    "available",
    "ddim_step",
    "edm_denoise",
    "euler_step",
    "geglu",
    "group_norm_silu",
    "num_threads",
    "preconditioning",
    "scaled_dot_product_attention",
    "set_num_threads",
]


class BackendUnavailableError(RuntimeError):
    """A kernel backend was asked for that this installation does not have."""


def _load_extension() -> tuple[ModuleType | None, str | None]:
    try:
        from vpp.kernels import _kernels
    except ImportError as error:
        return None, str(error)
    return _kernels, None


_extension, _extension_error = _load_extension()
if _extension is None:
    logger.warning("vpp.kernels._kernels is not built (%s); only available() works", _extension_error)


def _cuda_device_count() -> int:
    if _extension is None or not _extension.built_with_cuda:
        return 0
    return int(_extension.cuda_device_count())


def available() -> dict[str, bool]:
    """Which kernel backends this installation can run.

    ``cpu``: the compiled extension imports. ``cuda``: it was built with VPP_WITH_CUDA and sees
    a device. ``triton``: triton and torch are installed (they run on a GPU, or on CPU tensors
    under ``TRITON_INTERPRET=1`` for tests); checked without importing either.
    """
    return {
        "cpu": _extension is not None,
        "cuda": _cuda_device_count() > 0,
        "triton": importlib.util.find_spec("triton") is not None
        and importlib.util.find_spec("torch") is not None,
    }


def _require_extension() -> ModuleType:
    if _extension is None:
        raise BackendUnavailableError(
            f"the compiled extension vpp.kernels._kernels is missing ({_extension_error}); "
            "reinstall vpp-kernels (pip install -e packages/kernels) so that CMake builds it"
        )
    return _extension


def _require_backend(backend: str) -> ModuleType:
    extension = _require_extension()
    if backend == "cpu":
        return extension
    if backend == "cuda":
        if not available()["cuda"]:
            raise BackendUnavailableError(
                "backend 'cuda' needs vpp-kernels built with -DVPP_WITH_CUDA=ON and a visible GPU; "
                f"built_with_cuda={extension.built_with_cuda}"
            )
        return extension
    raise ValueError(f"backend must be 'cpu' or 'cuda', got {backend!r}")


def _check_float32_array(name: str, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray of float32, got {type(value).__name__}")
    if value.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {value.dtype}")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (strides {value.strides} for shape {value.shape}); "
            "pass np.ascontiguousarray(...)"
        )
    return value


def _check_same_shape(name: str, value: np.ndarray, reference_name: str, reference: np.ndarray) -> None:
    if value.shape != reference.shape:
        raise ValueError(
            f"{name} has shape {value.shape}, expected the shape of {reference_name} {reference.shape}"
        )


def _check_parameterisation(parameterisation: str) -> None:
    if parameterisation not in ("edm", "v"):
        raise ValueError(f"parameterisation must be 'edm' or 'v', got {parameterisation!r}")


def group_norm_silu(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    num_groups: int = 32,
    eps: float = 1e-5,
    *,
    silu: bool = True,
    backend: Backend = "cpu",
) -> np.ndarray:
    """SiLU(GroupNorm(x) * weight + bias) for x of shape (N, C, ...); ``silu=False`` gives GroupNorm.

    Statistics are per (sample, group) over C/num_groups channels and every trailing position,
    as torch.nn.GroupNorm (biased variance). weight/bias of shape (C,), or None for identity.
    """
    extension = _require_backend(backend)
    _check_float32_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, C, ...), got {x.shape}")
    channels = x.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if channels % num_groups != 0:
        raise ValueError(f"channels ({channels}) must be divisible by num_groups ({num_groups})")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            _check_float32_array(name, param)
            if param.shape != (channels,):
                raise ValueError(f"{name} has shape {param.shape}, expected ({channels},)")
    kernel = extension.cuda_group_norm_silu if backend == "cuda" else extension.group_norm_silu
    return kernel(x, weight, bias, int(num_groups), float(eps), bool(silu))


def geglu(value: np.ndarray, gate: np.ndarray, *, backend: Backend = "cpu") -> np.ndarray:
    """value * GELU(gate) (the exact erf GELU, as torch's ``gelu(approximate="none")``),
    elementwise over two float32 arrays of the same shape."""
    extension = _require_backend(backend)
    _check_float32_array("value", value)
    _check_float32_array("gate", gate)
    _check_same_shape("gate", gate, "value", value)
    kernel = extension.cuda_geglu if backend == "cuda" else extension.geglu
    return kernel(value, gate)


def preconditioning(
    sigma: float, *, sigma_data: float, parameterisation: Parameterisation = "edm"
) -> tuple[float, float]:
    """(c_skip, c_out) of the EDM denoiser D = c_skip x + c_out F at noise level ``sigma``.

    ``edm``: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2) (Karras et al., the DiT head);
    ``v``: the same with c_out negated (v-prediction, SVD with sd = 1).
    """
    _check_parameterisation(parameterisation)
    total = sigma * sigma + sigma_data * sigma_data
    c_out = sigma * sigma_data / np.sqrt(total)
    return sigma_data * sigma_data / total, float(-c_out if parameterisation == "v" else c_out)


def _sampler_update(
    kernel_name: str,
    x: np.ndarray,
    f: np.ndarray,
    sigma: float,
    sigma_next: float,
    sigma_data: float,
    parameterisation: str,
    out: np.ndarray | None,
    backend: str,
) -> np.ndarray:
    extension = _require_backend(backend)
    _check_float32_array("x", x)
    _check_float32_array("f", f)
    _check_same_shape("f", f, "x", x)
    _check_parameterisation(parameterisation)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    if not (np.isfinite(sigma_next) and sigma_next >= 0):
        raise ValueError(f"sigma_next must be finite and >= 0, got {sigma_next}")
    if not (np.isfinite(sigma_data) and sigma_data > 0):
        raise ValueError(f"sigma_data must be finite and > 0, got {sigma_data}")
    if out is not None:
        _check_float32_array("out", out)
        _check_same_shape("out", out, "x", x)
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
    if backend == "cuda":
        kernel_name = "cuda_" + kernel_name
    kernel = getattr(extension, kernel_name)
    if kernel_name.endswith("edm_denoise"):
        return kernel(x, f, float(sigma), float(sigma_data), parameterisation, out)
    return kernel(x, f, float(sigma), float(sigma_next), float(sigma_data), parameterisation, out)


def edm_denoise(
    x: np.ndarray,
    f: np.ndarray,
    sigma: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: np.ndarray | None = None,
    backend: Backend = "cpu",
) -> np.ndarray:
    """The denoised estimate D = c_skip x + c_out F from the sample x and the network output F."""
    return _sampler_update("edm_denoise", x, f, sigma, 0.0, sigma_data, parameterisation, out, backend)


def ddim_step(
    x: np.ndarray,
    f: np.ndarray,
    sigma: float,
    sigma_next: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: np.ndarray | None = None,
    backend: Backend = "cpu",
) -> np.ndarray:
    """DDIM / DPM-Solver-1 step in sigma: x_next = r x + (1 - r) D, r = sigma_next / sigma.

    D is the preconditioned denoiser output (see :func:`edm_denoise`); ``out`` may be ``x``
    itself for an in-place update.
    """
    return _sampler_update("ddim_step", x, f, sigma, sigma_next, sigma_data, parameterisation, out, backend)


def euler_step(
    x: np.ndarray,
    f: np.ndarray,
    sigma: float,
    sigma_next: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: np.ndarray | None = None,
    backend: Backend = "cpu",
) -> np.ndarray:
    """Euler step of the EDM probability-flow ODE: x_next = x + (sigma_next - sigma) (x - D) / sigma.

    With x in sigma units (x = x0 + sigma n, as EDM and SVD's Euler scheduler keep it) this is
    algebraically the DDIM step; it is kept as its own entry so that samplers name the method
    they implement, and its coefficients are derived independently (a cross-check in tests).
    """
    return _sampler_update("euler_step", x, f, sigma, sigma_next, sigma_data, parameterisation, out, backend)


def scaled_dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: Backend = "cpu",
) -> np.ndarray:
    """softmax(q k^T * scale) v for q (B, H, Lq, d), k (B, H, Lk, d), v (B, H, Lk, dv).

    ``mask``: boolean, True where a query may attend to a key, of any shape that broadcasts to
    (B, H, Lq, Lk) (e.g. (Lq, Lk) or (B, 1, 1, Lk)); it is read through its broadcast strides,
    never copied. ``causal``: key j only for query i with j <= i (top-left aligned, as torch's
    ``is_causal``). ``scale`` defaults to 1/sqrt(d). A query that may attend to no key gets a
    zero row (torch's math backend would give NaN there).
    """
    extension = _require_backend(backend)
    for name, value in (("q", q), ("k", k), ("v", v)):
        _check_float32_array(name, value)
        if value.ndim != 4:
            raise ValueError(f"{name} must be 4-D (B, heads, L, d), got shape {value.shape}")
    batch, heads, lq, d = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != d:
        raise ValueError(f"k has shape {k.shape}, expected ({batch}, {heads}, Lk, {d}) to match q {q.shape}")
    lk = k.shape[2]
    if v.shape[:3] != (batch, heads, lk):
        raise ValueError(f"v has shape {v.shape}, expected ({batch}, {heads}, {lk}, dv) to match k {k.shape}")
    if scale is not None and not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    mask_view = None
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
            raise ValueError(f"mask must be a numpy bool array, got {got}")
        try:
            mask_view = np.broadcast_to(mask, (batch, heads, lq, lk))
        except ValueError:
            raise ValueError(
                f"mask of shape {mask.shape} does not broadcast to {(batch, heads, lq, lk)}"
            ) from None
    kernel = (
        extension.cuda_scaled_dot_product_attention
        if backend == "cuda"
        else extension.scaled_dot_product_attention
    )
    return kernel(q, k, v, mask_view, bool(causal), None if scale is None else float(scale))


def set_num_threads(num_threads: int) -> None:
    """Threads the CPU kernels use on large problems; 0 restores the default (all cores)."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    _require_extension().set_num_threads(int(num_threads))


def num_threads() -> int:
    """Threads the CPU kernels use on large problems."""
    return int(_require_extension().num_threads())

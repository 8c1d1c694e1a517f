"""Unfused numpy versions of the fused kernels: one array operation at a time, as one would
write them without the extension. The tests compare the fused kernels with them (called on
float64 copies for an exact-as-possible reference) and the benchmarks time them side by side
(on float32). They compute in the dtype they are given.
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def group_norm_silu(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    num_groups: int,
    eps: float,
    silu: bool = True,
) -> np.ndarray:
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, num_groups, -1)
    mean = grouped.mean(axis=-1, keepdims=True)
    variance = grouped.var(axis=-1, keepdims=True)
    normalised = ((grouped - mean) / np.sqrt(variance + eps)).reshape(x.shape)
    affine_shape = (1, channels) + (1,) * (x.ndim - 2)
    if weight is not None:
        normalised = normalised * weight.reshape(affine_shape)
    if bias is not None:
        normalised = normalised + bias.reshape(affine_shape)
    if silu:
        normalised = normalised / (1.0 + np.exp(-normalised))
    return normalised


def geglu(value: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """value * GELU(gate), the exact (erf) GELU."""
    gelu = 0.5 * gate * (1.0 + _erf(gate / math.sqrt(2.0)).astype(gate.dtype))
    return value * gelu


def edm_denoise(
    x: np.ndarray, f: np.ndarray, sigma: float, sigma_data: float, parameterisation: str
) -> np.ndarray:
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / np.sqrt(total) * (-1.0 if parameterisation == "v" else 1.0)
    return c_skip * x + c_out * f


def ddim_step(
    x: np.ndarray, f: np.ndarray, sigma: float, sigma_next: float, sigma_data: float, parameterisation: str
) -> np.ndarray:
    denoised = edm_denoise(x, f, sigma, sigma_data, parameterisation)
    ratio = sigma_next / sigma
    return ratio * x + (1.0 - ratio) * denoised


def euler_step(
    x: np.ndarray, f: np.ndarray, sigma: float, sigma_next: float, sigma_data: float, parameterisation: str
) -> np.ndarray:
    denoised = edm_denoise(x, f, sigma, sigma_data, parameterisation)
    derivative = (x - denoised) / sigma
    return x + (sigma_next - sigma) * derivative


def scaled_dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """Materialises the (B, H, Lq, Lk) score matrix; fully masked rows give zeros, as the kernel."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    allowed = None
    if mask is not None:
        allowed = np.broadcast_to(mask, scores.shape)
    if causal:
        lower = np.tril(np.ones(scores.shape[-2:], dtype=bool))
        allowed = lower if allowed is None else allowed & lower
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(scores - row_max)
    totals = weights.sum(axis=-1, keepdims=True)
    weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
    return weights @ v

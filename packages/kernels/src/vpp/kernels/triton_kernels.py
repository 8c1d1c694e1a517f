"""Triton versions of the fused GroupNorm+SiLU, GEGLU and sampler-step kernels, on torch tensors.

Development only, like the rest of vpp-kernels: importing it imports torch and triton, and
nothing in vpp.runtime imports it. Without a GPU the kernels run under ``TRITON_INTERPRET=1``
(set before this module is first imported: triton decides at decoration time), which is how
the parity tests exercise them on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vpp.kernels import Parameterisation, preconditioning

_GROUP_NORM_BLOCK = 1024
_ELEMENTWISE_BLOCK = 1024


@triton.jit
def _group_norm_silu_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    y_ptr,
    num_groups,
    channels_per_group,
    spatial,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    APPLY_SILU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per (sample, group): mean, then the variance around it (two reads keep float32
    # accurate under large offsets), then normalise + affine + SiLU in the write pass.
    item = tl.program_id(0).to(tl.int64)
    group = item % num_groups
    group_size = channels_per_group * spatial
    base = item * group_size
    offsets = tl.arange(0, BLOCK)

    sum_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_size, BLOCK):
        idx = start + offsets
        sum_acc += tl.load(x_ptr + base + idx, mask=idx < group_size, other=0.0)
    mean = tl.sum(sum_acc, axis=0) / group_size

    square_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_size, BLOCK):
        idx = start + offsets
        valid = idx < group_size
        centred = tl.where(valid, tl.load(x_ptr + base + idx, mask=valid, other=0.0) - mean, 0.0)
        square_acc += centred * centred
    inv_std = 1.0 / tl.sqrt(tl.sum(square_acc, axis=0) / group_size + eps)

    for start in range(0, group_size, BLOCK):
        idx = start + offsets
        valid = idx < group_size
        value = (tl.load(x_ptr + base + idx, mask=valid, other=0.0) - mean) * inv_std
        channel = group * channels_per_group + idx // spatial
        if HAS_WEIGHT:
            value = value * tl.load(weight_ptr + channel, mask=valid, other=1.0)
        if HAS_BIAS:
            value = value + tl.load(bias_ptr + channel, mask=valid, other=0.0)
        if APPLY_SILU:
            value = value / (1.0 + tl.exp(-value))
        tl.store(y_ptr + base + idx, value, mask=valid)


@triton.jit
def _axpby_kernel(x_ptr, f_ptr, out_ptr, count, a, b, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < count
    x = tl.load(x_ptr + idx, mask=valid)
    f = tl.load(f_ptr + idx, mask=valid)
    tl.store(out_ptr + idx, a * x + b * f, mask=valid)


@triton.jit
def _geglu_kernel(value_ptr, gate_ptr, out_ptr, count, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < count
    value = tl.load(value_ptr + idx, mask=valid)
    gate = tl.load(gate_ptr + idx, mask=valid)
    gelu = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    tl.store(out_ptr + idx, value * gelu, mask=valid)


def _check_tensor(name: str, value: object, device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of float32, got {type(value).__name__}")
    if value.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {value.dtype}")
    if not value.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous (strides {tuple(value.stride())} for shape {tuple(value.shape)})"
        )
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device}, expected {device} like x")
    return value


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int = 32,
    eps: float = 1e-5,
    *,
    silu: bool = True,
) -> torch.Tensor:
    """SiLU(GroupNorm(x) * weight + bias) for x of shape (N, C, ...), as vpp.kernels.group_norm_silu."""
    _check_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C, ...), got {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups <= 0 or channels % num_groups != 0:
        raise ValueError(f"channels ({channels}) must be divisible by num_groups ({num_groups})")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            _check_tensor(name, param, x.device)
            if tuple(param.shape) != (channels,):
                raise ValueError(f"{name} has shape {tuple(param.shape)}, expected ({channels},)")
    y = torch.empty_like(x)
    items = x.shape[0] * num_groups
    if x.numel() == 0:
        return y
    spatial = x.numel() // (x.shape[0] * channels)
    _group_norm_silu_kernel[(items,)](
        x,
        weight if weight is not None else x,
        bias if bias is not None else x,
        y,
        num_groups,
        channels // num_groups,
        spatial,
        float(eps),
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        APPLY_SILU=silu,
        BLOCK=_GROUP_NORM_BLOCK,
    )
    return y


def geglu(value: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """value * GELU(gate) (exact erf GELU), as vpp.kernels.geglu."""
    _check_tensor("value", value)
    _check_tensor("gate", gate, value.device)
    if gate.shape != value.shape:
        raise ValueError(
            f"gate has shape {tuple(gate.shape)}, expected the shape of value {tuple(value.shape)}"
        )
    out = torch.empty_like(value)
    count = value.numel()
    if count:
        _geglu_kernel[(triton.cdiv(count, _ELEMENTWISE_BLOCK),)](
            value, gate, out, count, BLOCK=_ELEMENTWISE_BLOCK
        )
    return out


def _axpby(x: torch.Tensor, f: torch.Tensor, a: float, b: float, out: torch.Tensor | None) -> torch.Tensor:
    _check_tensor("x", x)
    _check_tensor("f", f, x.device)
    if f.shape != x.shape:
        raise ValueError(f"f has shape {tuple(f.shape)}, expected the shape of x {tuple(x.shape)}")
    if out is None:
        out = torch.empty_like(x)
    else:
        _check_tensor("out", out, x.device)
        if out.shape != x.shape:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected the shape of x {tuple(x.shape)}")
    count = x.numel()
    if count:
        _axpby_kernel[(triton.cdiv(count, _ELEMENTWISE_BLOCK),)](
            x, f, out, count, a, b, BLOCK=_ELEMENTWISE_BLOCK
        )
    return out


def _check_sigmas(sigma: float, sigma_next: float) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not sigma_next >= 0:
        raise ValueError(f"sigma_next must be >= 0, got {sigma_next}")


def edm_denoise(
    x: torch.Tensor,
    f: torch.Tensor,
    sigma: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """D = c_skip x + c_out F, as vpp.kernels.edm_denoise."""
    _check_sigmas(sigma, 0.0)
    c_skip, c_out = preconditioning(sigma, sigma_data=sigma_data, parameterisation=parameterisation)
    return _axpby(x, f, c_skip, c_out, out)


def ddim_step(
    x: torch.Tensor,
    f: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = r x + (1 - r) D with r = sigma_next / sigma, as vpp.kernels.ddim_step."""
    _check_sigmas(sigma, sigma_next)
    c_skip, c_out = preconditioning(sigma, sigma_data=sigma_data, parameterisation=parameterisation)
    ratio = sigma_next / sigma
    return _axpby(x, f, ratio + (1.0 - ratio) * c_skip, (1.0 - ratio) * c_out, out)


def euler_step(
    x: torch.Tensor,
    f: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    sigma_data: float,
    parameterisation: Parameterisation = "edm",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = x + (sigma_next - sigma) (x - D) / sigma, as vpp.kernels.euler_step."""
    _check_sigmas(sigma, sigma_next)
    c_skip, c_out = preconditioning(sigma, sigma_data=sigma_data, parameterisation=parameterisation)
    step = (sigma_next - sigma) / sigma
    return _axpby(x, f, 1.0 + step * (1.0 - c_skip), -step * c_out, out)

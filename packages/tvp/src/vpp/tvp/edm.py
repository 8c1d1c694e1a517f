"""EDM preconditioning as Stable Video Diffusion uses it (v-parameterisation, sigma_data = 1).

The network F sees ``c_in * x`` and ``c_noise``; the denoised estimate is
``D(x) = c_skip * x + c_out * F``. With sigma_data = 1:
c_in = 1/sqrt(s^2+1), c_out = -s/sqrt(s^2+1), c_skip = 1/(s^2+1), c_noise = ln(s)/4,
and the loss weight (s^2+1)/s^2 makes every noise level contribute equally.
"""

from __future__ import annotations

import torch


def preconditioning(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (c_in, c_out, c_skip, c_noise), each shaped like ``sigma``."""
    sigma = torch.as_tensor(sigma)
    norm = torch.sqrt(sigma**2 + 1.0)
    c_in = 1.0 / norm
    c_out = -sigma / norm
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_noise = torch.log(sigma) / 4.0
    return c_in, c_out, c_skip, c_noise


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    return (sigma**2 + 1.0) / sigma**2


def sample_training_sigmas(
    batch: int, p_mean: float, p_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """sigma = exp(p_mean + p_std * N(0, 1)), one per video."""
    normal = torch.randn(batch, generator=generator)
    return torch.exp(p_mean + p_std * normal)


def text_keep_mask(batch: int, dropout: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """1.0 where a video keeps its text, 0.0 (probability ``dropout``) where it trains unconditioned."""
    return (torch.rand(batch, generator=generator) >= dropout).float()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The Karras et al. schedule, descending from sigma_max to sigma_min, with a final 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; expected >= 1")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def cfg_scales(num_frames: int, cfg_min: float, cfg_max: float) -> torch.Tensor:
    """Guidance ramped linearly over frames: the first frame is given, later ones need more."""
    return torch.linspace(cfg_min, cfg_max, num_frames)


def feature_sigma(
    schedule_steps: int, schedule_index: int, sigma_min: float, sigma_max: float, rho: float
) -> float:
    return float(karras_sigmas(schedule_steps, sigma_min, sigma_max, rho)[schedule_index])


def expand_like(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reshape per-video values (B,) to broadcast over a (B, ...) tensor."""
    return values.reshape(values.shape[0], *([1] * (target.ndim - 1))).to(target)

"""EDM (Karras et al. 2022) diffusion over action chunks, as the VPP/MDT action head uses it.

- Preconditioning with sigma_data (0.5): c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
  c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4; denoiser D(x; s) = c_skip x + c_out F(c_in x, c_noise).
- Training noise levels: log-logistic (loc ln 0.5, scale 0.5) truncated to [sigma_min, sigma_max]
  by inverse-CDF sampling, so the bounds hold without piling mass on them.
- Loss: ||F - (a - c_skip x) / c_out||^2, i.e. the EDM loss with weight 1 / c_out^2.
- Sampling: DDIM, which is DPM-Solver-1 in the sigma parameterisation, over an exponential schedule
  sigma_max -> sigma_min followed by 0 (the last step returns the denoised estimate), starting
  from x_T = randn * sigma_max. Every random draw comes from the given ``torch.Generator``.

The network is any callable ``network(scaled_noisy_actions, c_noise) -> F``, so the condition
encoding can be computed once per sample and closed over.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vpp.policy.config import DiffusionConfig

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Drawn on the generator's device, so a CPU generator gives the same numbers whatever the
    model's device."""
    return torch.randn(
        shape,
        generator=generator,
        dtype=torch.float32,
        device=generator.device if generator is not None else None,
    )


def karras_scalings(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def sample_log_logistic(
    shape: tuple[int, ...],
    loc: float,
    scale: float,
    min_value: float,
    max_value: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-logistic samples truncated to [min_value, max_value] (float32)."""
    low = 1.0 / (1.0 + math.exp(-(math.log(min_value) - loc) / scale))
    high = 1.0 / (1.0 + math.exp(-(math.log(max_value) - loc) / scale))
    device = generator.device if generator is not None else None
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device) * (high - low) + low
    sigma = (torch.logit(uniform) * scale + loc).exp()
    # Rounding in logit/exp can step a hair outside the bounds.
    return sigma.clamp(min_value, max_value).float()


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """``num_steps`` log-uniformly spaced levels from sigma_max down to sigma_min, then 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; expected >= 1")
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma range [{sigma_min}, {sigma_max}]; expected 0 < sigma_min <= sigma_max")
    levels = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64).exp()
    return torch.cat([levels, levels.new_zeros(1)])


class ActionDiffusion:
    """Preconditioning, training loss and DDIM sampler for one :class:`DiffusionConfig`."""

    def __init__(self, config: DiffusionConfig) -> None:
        config.validate()
        self.config = config

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return karras_scalings(sigma, self.config.sigma_data)

    def denoise(self, network: Network, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) for noisy actions (B, ...) and per-item noise levels (B,)."""
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        expand = (-1,) + (1,) * (noisy.ndim - 1)
        c_skip, c_out, c_in = (c.view(expand).to(noisy.dtype) for c in (c_skip, c_out, c_in))
        return c_skip * noisy + c_out * network(noisy * c_in, c_noise.to(noisy.dtype))

    def training_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.config
        return sample_log_logistic(
            (batch,), cfg.train_sigma_loc, cfg.train_sigma_scale, cfg.sigma_min, cfg.sigma_max, generator
        )

    def loss(
        self,
        network: Network,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error between F and its EDM target at random (or given) noise levels."""
        batch = actions.shape[0]
        if sigma is None:
            sigma = self.training_sigmas(batch, generator)
        if noise is None:
            noise = standard_normal(tuple(actions.shape), generator)
        sigma = sigma.to(actions.device, actions.dtype)
        noise = noise.to(actions.device, actions.dtype)
        expand = (-1,) + (1,) * (actions.ndim - 1)
        noisy = actions + noise * sigma.view(expand)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        c_skip, c_out, c_in = (c.view(expand) for c in (c_skip, c_out, c_in))
        target = (actions - c_skip * noisy) / c_out
        return (network(noisy * c_in, c_noise) - target).pow(2).mean()

    def sigmas(self, num_steps: int | None = None, sigma_min: float | None = None) -> torch.Tensor:
        cfg = self.config
        return exponential_sigmas(
            num_steps or cfg.num_steps, cfg.eval_sigma_min if sigma_min is None else sigma_min, cfg.sigma_max
        )

    @torch.no_grad()
    def sample(
        self,
        network: Network,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        sigma_min: float | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM from x_T = ``noise`` (or randn from ``generator``) * sigma_max; returns x_0."""
        sigmas = self.sigmas(num_steps, sigma_min)
        if noise is None:
            noise = standard_normal(tuple(shape), generator)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(shape)}")
        x = noise.to(device, dtype) * float(sigmas[0])
        batch = shape[0]
        for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            denoised = self.denoise(network, x, torch.full((batch,), sigma, device=device, dtype=dtype))
            # x_next = x + (sigma_next/sigma - 1)(x - D): the exact step of the probability-flow
            # ODE when D is constant over the step; sigma_next = 0 returns D itself.
            ratio = sigma_next / sigma
            x = ratio * x + (1.0 - ratio) * denoised
        return x

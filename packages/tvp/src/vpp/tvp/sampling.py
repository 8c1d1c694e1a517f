"""Video generation: Euler sampling of the EDM ODE with frame-ramped classifier-free guidance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from vpp.tvp import edm
from vpp.tvp.model import TextGuidedVideoPredictor


@torch.no_grad()
def generate_latents(
    model: TextGuidedVideoPredictor,
    first_frame: torch.Tensor,
    instructions: Sequence[str],
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    guidance: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """First frames (B, 3, H, W) in [-1, 1] -> predicted scaled latents (B, T, C, h, w).

    The unconditional branch drops the text but keeps the first-frame latent, and the guidance
    scale grows linearly over frames from ``cfg_min`` to ``cfg_max``.
    """
    cfg = model.config.edm
    steps = num_steps or cfg.num_sampling_steps
    batch = first_frame.shape[0]
    if len(instructions) != batch:
        raise ValueError(f"{len(instructions)} instructions for {batch} first frames")
    first_latent = model.encode_video(first_frame.unsqueeze(1))[:, 0]
    cond = model.condition_latent(first_latent, generator)
    text = model.text_conditioning(model.encode_text(instructions)[0])
    shape = (batch, model.config.num_frames, *first_latent.shape[1:])
    sigmas = edm.karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(model.device)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(model.device, model.dtype) * sigmas[0]
    scales = edm.cfg_scales(shape[1], cfg.cfg_min, cfg.cfg_max).to(model.device, model.dtype)
    scales = scales.reshape(1, -1, 1, 1, 1)
    for i in tqdm(range(steps), disable=not progress, desc="sampling"):
        sigma = sigmas[i].expand(batch)
        if guidance:
            both = model.denoise(
                torch.cat([x, x]),
                torch.cat([sigma, sigma]),
                torch.cat([torch.zeros_like(text), text]),
                torch.cat([cond, cond]),
            )
            uncond, conditioned = both.chunk(2)
            denoised = uncond + scales * (conditioned - uncond)
        else:
            denoised = model.denoise(x, sigma, text, cond)
        derivative = (x - denoised) / sigmas[i]
        x = x + derivative * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def generate_video(
    model: TextGuidedVideoPredictor,
    first_frame: torch.Tensor,
    instructions: Sequence[str],
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    guidance: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """First frames (B, 3, H, W) in [-1, 1] -> predicted videos (B, T, 3, H, W) in [-1, 1]."""
    latents = generate_latents(model, first_frame, instructions, num_steps, generator, guidance, progress)
    return model.decode_latents(latents)

"""Predictive visual representations: one UNet forward from noise, read at the up-sampling blocks.

For each camera view the TVP sees the current frame and pure noise at the configured noise level;
the outputs of the selected up-blocks (B*T, C_m, h_m, w_m) are interpolated to one size and
stacked on channels, giving (B, V, T, sum C_m, S, S). Views are batched into one forward. When
the last block needed is not the UNet's last, the forward stops there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vpp.tvp import edm
from vpp.tvp.model import TextGuidedVideoPredictor


class _EnoughFeatures(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised from a hook to skip the rest of the UNet once every wanted block has run."""


def feature_shape(model: TextGuidedVideoPredictor, views: int = 1) -> tuple[int, int, int, int, int]:
    """(V, T, C, S, S) of :func:`predictive_features` for this model."""
    cfg = model.config
    return (views, cfg.feature_frames, cfg.feature_channels, cfg.feature_size, cfg.feature_size)


def feature_sigma(model: TextGuidedVideoPredictor) -> float:
    f, e = model.config.features, model.config.edm
    return edm.feature_sigma(f.schedule_steps, f.schedule_index, e.sigma_min, e.sigma_max, e.rho)


def fixed_noise(model: TextGuidedVideoPredictor, views: int, seed: int) -> torch.Tensor:
    """The one unit-variance starting noise (V, T, C, h, w) that a policy with fixed feature noise
    uses for every forward, and that its feature cache was computed with: seeded by ``seed`` alone."""
    cfg = model.config
    shape = (views, cfg.feature_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def static_features(model: TextGuidedVideoPredictor, images: torch.Tensor) -> torch.Tensor:
    """The static-encoder ablation's features: each view's current frame (B, V, 3, H, W) in
    [-1, 1] -> its scaled VAE latent (B, V, 1, C, h, w), no UNet, no noise."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (B, V, 3, H, W)")
    latents = model.encode_video(images.flatten(0, 1).unsqueeze(1))
    return latents.unflatten(0, images.shape[:2])


@torch.no_grad()
def predictive_features(
    model: TextGuidedVideoPredictor,
    images: torch.Tensor,
    instructions: Sequence[str] | None = None,
    text_hidden: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Current frames of every view (B, V, 3, H, W) in [-1, 1] -> (B, V, T, C, S, S).

    Give either ``instructions`` or precomputed CLIP ``text_hidden`` (B, L, D_text). The starting
    noise is drawn from ``generator``, or given as unit-variance ``noise`` (B, V, T, C, h, w).
    """
    cfg = model.config
    size = cfg.image_size
    if images.ndim != 5 or images.shape[2] != 3 or images.shape[-2:] != (size, size):
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (B, V, 3, {size}, {size})")
    batch, views = images.shape[:2]
    if (instructions is None) == (text_hidden is None):
        raise ValueError("give exactly one of instructions or text_hidden")
    if text_hidden is None:
        if len(instructions) != batch:
            raise ValueError(f"{len(instructions)} instructions for a batch of {batch}")
        text_hidden = model.encode_text(instructions)[0]
    text = model.text_conditioning(text_hidden.to(model.device, model.dtype)).repeat_interleave(views, dim=0)

    first_latent = model.encode_video(images.flatten(0, 1).unsqueeze(1))[:, 0]
    cond = model.condition_latent(first_latent, generator)
    sigma_value = feature_sigma(model)
    shape = (batch * views, cfg.feature_frames, *first_latent.shape[1:])
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    elif noise.shape != (batch, views, *shape[1:]):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {(batch, views, *shape[1:])}")
    noisy = noise.reshape(shape).to(model.device, model.dtype) * sigma_value
    sigma = torch.full((batch * views,), sigma_value, device=model.device, dtype=model.dtype)
    c_in, _, _, c_noise = edm.preconditioning(sigma)

    blocks = cfg.feature_blocks
    captured: dict[int, torch.Tensor] = {}
    last = max(blocks)
    stop_early = last < len(model.unet.up_blocks) - 1

    def hook_for(index: int):
        def hook(_module, _inputs, output):
            captured[index] = output
            if stop_early and index == last:
                raise _EnoughFeatures

        return hook

    handles = [model.unet.up_blocks[i].register_forward_hook(hook_for(i)) for i in blocks]
    try:
        model.unet(
            model.unet_input(noisy, c_in, cond),
            c_noise,
            encoder_hidden_states=text,
            added_time_ids=model.added_time_ids(batch * views, cfg.features.fps_id),
        )
    except _EnoughFeatures:
        pass
    finally:
        for handle in handles:
            handle.remove()

    out_size = (cfg.feature_size, cfg.feature_size)
    interp = dict(mode=cfg.features.interpolation)
    if cfg.features.interpolation == "bilinear":
        interp["align_corners"] = False
    stacked = torch.cat(
        [
            captured[i]
            if captured[i].shape[-2:] == out_size
            else F.interpolate(captured[i], size=out_size, **interp)
            for i in blocks
        ],
        dim=1,
    )
    return stacked.reshape(batch, views, cfg.feature_frames, *stacked.shape[1:])

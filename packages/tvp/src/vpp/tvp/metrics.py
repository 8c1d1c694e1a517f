"""Image-quality figures shared by VAE fitting and prediction scoring."""

from __future__ import annotations

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor, per_frame: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of videos (B, T, C, H, W) with values in [-1, 1].

    Both are clamped to [-1, 1] first, as an 8-bit image would be, so a decoder's overshoot counts
    as its clipped pixel. ``per_frame``: one value per frame index (MSE averaged over the batch and
    pixels of that frame), else one value over everything. A perfect match gives 100 dB (the MSE is
    floored at 1e-10)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    error = ((prediction.float().clamp(-1, 1) - target.float().clamp(-1, 1)) / 2) ** 2
    mse = error.transpose(0, 1).flatten(1).mean(-1) if per_frame else error.mean()
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))

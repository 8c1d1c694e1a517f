"""Diffusion-transformer action head (MDT-style encoder-decoder).

The encoder runs self-attention over the condition tokens ([language; Video Former tokens;
optional proprioception]) and does not see the noise level, so one encoding serves every sampling
step. The decoder runs over the noisy action tokens: self-attention and FFN modulated by the noise
level through AdaLN (shift, scale, gate from an embedding of c_noise = ln(sigma) / 4), and
cross-attention to the encoder output. The head returns the raw network output F of the EDM
denoiser D = c_skip x + c_out F(c_in x, c_noise); preconditioning lives in ``action_diffusion``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vpp.policy.attention import (
    FeedForward,
    MultiHeadAttention,
    init_transformer_weights,
    top_left_causal_mask,
)
from vpp.policy.config import DiTHeadConfig, InputShapeError


class NoiseLevelEmbedding(nn.Module):
    """c_noise (B,) -> (B, dim): sinusoidal features followed by an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        )
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.float()[:, None] * self.frequencies[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.mlp[0].weight.dtype))


class EncoderBlock(nn.Module):
    def __init__(self, config: DiTHeadConfig) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.dim, bias=False)
        self.attention = MultiHeadAttention(
            config.dim, config.heads, attn_dropout=config.attn_dropout, resid_dropout=config.resid_dropout
        )
        self.norm_mlp = nn.LayerNorm(config.dim, bias=False)
        self.mlp = FeedForward(config.dim, config.mlp_mult, config.mlp_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class DecoderBlock(nn.Module):
    """AdaLN-modulated self-attention, plain cross-attention, AdaLN-modulated FFN."""

    def __init__(self, config: DiTHeadConfig) -> None:
        super().__init__()
        d = config.dim
        self.norm_self = nn.LayerNorm(d, bias=False, elementwise_affine=False)
        self.self_attention = MultiHeadAttention(
            d, config.heads, attn_dropout=config.attn_dropout, resid_dropout=config.resid_dropout
        )
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attention = MultiHeadAttention(
            d, config.heads, attn_dropout=config.attn_dropout, resid_dropout=config.resid_dropout
        )
        self.norm_mlp = nn.LayerNorm(d, bias=False, elementwise_affine=False)
        self.mlp = FeedForward(d, config.mlp_mult, config.mlp_dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(
        self,
        x: torch.Tensor,
        noise_embedding: torch.Tensor,
        context: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shift_self, scale_self, gate_self, shift_mlp, scale_mlp, gate_mlp = self.modulation(noise_embedding)[
            :, None
        ].chunk(6, dim=-1)
        x = x + gate_self * self.self_attention(
            self.norm_self(x) * (1 + scale_self) + shift_self, attn_mask=self_mask
        )
        x = x + self.cross_attention(self.norm_cross(x), context, attn_mask=cross_mask)
        return x + gate_mlp * self.mlp(self.norm_mlp(x) * (1 + scale_mlp) + shift_mlp)


class DiTActionHead(nn.Module):
    """Condition tokens (B, N, dim) + scaled noisy actions (B, chunk, action_dim) + c_noise (B,)
    -> network output F (B, chunk, action_dim)."""

    def __init__(self, config: DiTHeadConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.dim
        self.encoder_blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d, bias=False)
        self.noise_embedding = NoiseLevelEmbedding(d)
        self.action_embedding = nn.Linear(config.action_dim, d)
        # Without it non-causal attention would treat the chunk as an unordered set.
        self.action_position = nn.Parameter(torch.zeros(1, config.chunk, d))
        self.decoder_blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d, bias=False)
        self.action_output = nn.Linear(d, config.action_dim)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.action_position, std=0.02)
        for block in self.decoder_blocks:
            # AdaLN-Zero: each modulated branch starts closed and opens as training needs it.
            nn.init.zeros_(block.modulation[1].weight)
            nn.init.zeros_(block.modulation[1].bias)

    def encode(self, condition: torch.Tensor) -> torch.Tensor:
        if condition.ndim != 3 or condition.shape[-1] != self.config.dim:
            raise InputShapeError(
                f"condition tokens have shape {tuple(condition.shape)}; expected (B, N, {self.config.dim})"
            )
        x = condition
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def attention_masks(
        self, num_context: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        chunk = self.config.chunk
        self_mask = (
            top_left_causal_mask(chunk, chunk, device) if self.config.decoder_causal_self_attention else None
        )
        cross_mask = (
            top_left_causal_mask(chunk, num_context, device)
            if self.config.decoder_causal_cross_attention
            else None
        )
        return self_mask, cross_mask

    def decode(
        self, context: torch.Tensor, scaled_actions: torch.Tensor, c_noise: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        if (
            scaled_actions.shape[1:] != (cfg.chunk, cfg.action_dim)
            or scaled_actions.shape[0] != context.shape[0]
        ):
            raise InputShapeError(
                f"noisy actions have shape {tuple(scaled_actions.shape)}; expected "
                f"({context.shape[0]}, {cfg.chunk}, {cfg.action_dim})"
            )
        if c_noise.shape != (context.shape[0],):
            raise InputShapeError(f"c_noise has shape {tuple(c_noise.shape)}; expected ({context.shape[0]},)")
        noise_embedding = self.noise_embedding(c_noise)
        x = self.action_embedding(scaled_actions) + self.action_position
        self_mask, cross_mask = self.attention_masks(context.shape[1], context.device)
        for block in self.decoder_blocks:
            x = block(x, noise_embedding, context, self_mask=self_mask, cross_mask=cross_mask)
        return self.action_output(self.decoder_norm(x))

    def forward(
        self, condition: torch.Tensor, scaled_actions: torch.Tensor, c_noise: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(self.encode(condition), scaled_actions, c_noise)

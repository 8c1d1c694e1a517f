"""Video Former: a spatial-temporal Perceiver that turns predictive features into a few tokens.

The TVP gives, per camera view and predicted frame, an h x w grid of C-channel features. Each
frame's learnt queries cross-attend to that frame's tokens of all views together with the queries
themselves (Perceiver/Flamingo style), then every query slot attends across frames, then an FFN.
With the paper's sizes, 16 frames x 2 views x 16 x 16 tokens of 2560-3520 channels become
16 x 14 = 224 tokens of width 384.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vpp.policy.attention import FeedForward, MultiHeadAttention, init_transformer_weights
from vpp.policy.config import InputShapeError, VideoFormerConfig


def feature_position_embedding(views: int, height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed (views * height * width, dim) sin-cos code of each token's (view, y, x).

    Each axis gets ``dim // 6`` frequencies (a sin and a cos each), geometric from 1 to 1/32 radian
    per grid step: neighbours differ in the fastest pair, and the slowest stays monotonic over
    grids up to ~50 tokens wide (the paper's features are 16 x 16); the ``dim % 6`` leftover
    channels stay zero. Fixed rather than learned, it needs no feature size in the config and
    carries position from the first step."""
    pairs = dim // 6
    frequencies = torch.exp(-math.log(32.0) * torch.arange(pairs, dtype=torch.float32) / max(pairs - 1, 1))
    grid = (
        torch.stack(
            torch.meshgrid(torch.arange(views), torch.arange(height), torch.arange(width), indexing="ij"),
            dim=-1,
        )
        .reshape(-1, 3)
        .float()
    )
    angles = grid[:, :, None] * frequencies  # (N, 3 axes, pairs)
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
    return nn.functional.pad(code, (0, dim - code.shape[1]))


class PerFrameCrossAttention(nn.Module):
    """A frame's queries attend to (that frame's feature tokens ++ the queries)."""

    def __init__(self, config: VideoFormerConfig) -> None:
        super().__init__()
        self.norm_features = nn.LayerNorm(config.dim)
        self.norm_queries = nn.LayerNorm(config.dim)
        self.attention = MultiHeadAttention(
            config.dim, config.heads, head_dim=config.head_dim, qkv_bias=False
        )

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        normed_queries = self.norm_queries(queries)
        context = torch.cat([self.norm_features(features), normed_queries], dim=1)
        return self.attention(normed_queries, context)


class VideoFormerLayer(nn.Module):
    def __init__(self, config: VideoFormerConfig) -> None:
        super().__init__()
        self.cross_attention = PerFrameCrossAttention(config)
        self.norm_temporal = nn.LayerNorm(config.dim)
        self.temporal_attention = MultiHeadAttention(config.dim, config.heads, qkv_bias=True, out_bias=True)
        self.norm_ffn = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config.dim, config.ffn_mult)

    def forward(self, features: torch.Tensor, queries: torch.Tensor, batch: int) -> torch.Tensor:
        """features (B*T, N, d), queries (B*T, L, d) -> queries (B*T, L, d)."""
        queries = queries + self.cross_attention(features, queries)
        frames_x_batch, slots, dim = queries.shape
        frames = frames_x_batch // batch
        by_slot = queries.view(batch, frames, slots, dim).transpose(1, 2).reshape(batch * slots, frames, dim)
        by_slot = by_slot + self.temporal_attention(self.norm_temporal(by_slot))
        queries = by_slot.view(batch, slots, frames, dim).transpose(1, 2).reshape(frames_x_batch, slots, dim)
        return queries + self.ffn(self.norm_ffn(queries))


class VideoFormer(nn.Module):
    """(B, V, T, C, h, w) predictive features -> (B, T * queries_per_frame, dim) tokens."""

    def __init__(self, config: VideoFormerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.dim
        self.input_projection = nn.Sequential(
            nn.Linear(config.input_channels, 2 * d), nn.GELU(), nn.Linear(2 * d, d)
        )
        # Added before the input MLP's nonlinearity, so each token mixes what it holds with where it
        # is: even evenly spread attention then pools a code of where the content sits. Added after
        # it, position would stay a constant offset until attention learned to single tokens out.
        self.position_projection = (
            nn.Linear(d, 2 * d, bias=False) if config.feature_position_embedding else None
        )
        self.time_embedding = nn.Parameter(torch.zeros(config.num_frames, 1, d))
        self.queries = nn.Parameter(torch.zeros(config.num_frames, config.queries_per_frame, d))
        self.layers = nn.ModuleList(VideoFormerLayer(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(d)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.time_embedding, std=0.02)
        nn.init.normal_(self.queries, std=0.02)

    def check_features(self, features: torch.Tensor) -> None:
        cfg = self.config
        if (
            features.ndim != 6
            or features.shape[2] != cfg.num_frames
            or features.shape[3] != cfg.input_channels
        ):
            raise InputShapeError(
                f"features have shape {tuple(features.shape)}; expected (B, V, {cfg.num_frames}, "
                f"{cfg.input_channels}, h, w)"
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        batch, views, frames, channels, height, width = features.shape
        # One token per (view, y, x) position: all views of a frame are read together.
        tokens = features.permute(0, 2, 1, 4, 5, 3).reshape(batch, frames, views * height * width, channels)
        hidden = self.input_projection[0](tokens)
        if self.position_projection is not None:
            code = feature_position_embedding(views, height, width, self.config.dim).to(tokens)
            hidden = hidden + self.position_projection(code)
        tokens = self.input_projection[2](self.input_projection[1](hidden)) + self.time_embedding
        tokens = tokens.flatten(0, 1)
        queries = self.queries.expand(batch, -1, -1, -1).flatten(0, 1)
        for layer in self.layers:
            queries = layer(tokens, queries, batch)
        return self.norm_out(queries.reshape(batch, frames * self.config.queries_per_frame, self.config.dim))

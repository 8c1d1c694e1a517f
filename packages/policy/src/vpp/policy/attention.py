"""Attention and feed-forward layers shared by the Video Former and the DiT action head.

Attention goes through ``F.scaled_dot_product_attention`` so the graphs export to ONNX and pick the
fused kernels where the device has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Queries from ``x``; keys and values from ``context`` (cross-attention) or ``x`` itself.

    ``inner_dim = heads * head_dim`` may differ from ``dim`` (the Video Former's Perceiver attention
    uses 8 x 64 on a 384-wide stream).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int | None = None,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = False,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        head_dim = head_dim or dim // heads
        inner_dim = heads * head_dim
        context_dim = context_dim or dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=qkv_bias)
        self.to_out = nn.Linear(inner_dim, dim, bias=out_bias)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``attn_mask``: boolean (queries, keys), True where a query may attend to a key."""
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)
        return self.resid_dropout(self.to_out(out))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear -> dropout, without biases (as GPT-style MDT blocks)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def top_left_causal_mask(queries: int, keys: int, device: torch.device | None = None) -> torch.Tensor:
    """Query i may see keys 0..i: the mask SDPA's ``is_causal=True`` builds when lengths differ."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril()


def init_transformer_weights(module: nn.Module) -> None:
    """Linear weights N(0, 1 / (3 fan_in)) (PyTorch's default variance), zero biases, unit LayerNorms.

    GPT's fixed N(0, 0.02) equals this at fan_in ~830 and is close to it at the paper's width (384:
    0.029), but at the CPU presets' widths (32-128) it starved the condition path: a tiny head on
    a synthetic task whose action depends only on the image never moved from the image-blind
    prediction in 3,000 steps, and learns it in 400 at this scale (tests/test_learns_from_images.py)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=(3 * module.in_features) ** -0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

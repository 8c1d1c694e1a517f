"""Export-time rewrites of diffusers modules: the same function, traced as a cheaper graph.

Each patch is a context manager that rewires module instances while the exporter traces them
and restores them on exit. The weights are not copied, and eager training and inference never
see the patches. Export's parity check compares the rewritten graph with the unpatched
PyTorch model.

- :func:`split_geglu`: GEGLU feed-forwards as two half-width projections, with no ``chunk``.
- :func:`fold_temporal_cross_attention`: SVD's temporal cross-attention once per video, not
  once per latent pixel.
- :func:`multi_head_attention_nodes`: each plain attention as one ONNX Runtime
  ``com.microsoft.MultiHeadAttention`` node instead of the exporter's reshapes, transposes,
  scalings, two MatMuls and a Softmax.
- :func:`repeat_interleave_as_expand`: ``Tensor.repeat_interleave(int, dim)`` traced as
  Unsqueeze, Expand and Reshape. On an axis of symbolic size (the features graph's view axis
  reaches the UNet's batch) the exporter writes it with OneHot, Tile and shape arithmetic that
  hide every later shape from ONNX shape inference, and with them the broadcasts that
  ``vpp.export.graph_passes.project_before_broadcast`` rewrites.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@contextlib.contextmanager
def _forwards_replaced(replacements: list[tuple[nn.Module, Callable[..., Any]]]) -> Iterator[int]:
    """Sets each module's instance ``forward``, yields how many, and deletes them again on exit
    (the class's ``forward`` takes over as before)."""
    for module, forward in replacements:
        module.forward = forward
    try:
        yield len(replacements)
    finally:
        for module, _ in replacements:
            del module.forward


def _split_geglu_forward(
    module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    weight, bias = module.proj.weight, module.proj.bias
    half = weight.shape[0] // 2
    value = F.linear(hidden_states, weight[:half], None if bias is None else bias[:half])
    gate = F.linear(hidden_states, weight[half:], None if bias is None else bias[half:])
    return value * module.gelu(gate)


@contextlib.contextmanager
def split_geglu(module: nn.Module) -> Iterator[int]:
    """While open, every diffusers ``GEGLU`` under ``module`` computes its value and gate halves
    with two half-width projections instead of one full-width projection and a ``chunk``; yields
    how many it patched, and restores them on exit.

    The result is the same function (the two halves of the weight are its two row blocks, which
    the exporter folds into two initializers, so the artifact does not grow). What changes is the
    graph: ``chunk`` exports as two ``Slice`` nodes, which ONNX Runtime fuses into a ``Split``
    that copies the whole (tokens, 2 x inner) projection once more: 66 ms of a 770 ms small-preset
    feature pass on one core (8.6%, the largest non-matmul cost in its profile). Two projections
    write their halves where the ``Gelu`` and ``Mul`` read them, with the same multiply-adds.
    """
    from diffusers.models.activations import GEGLU

    patched = [m for m in module.modules() if isinstance(m, GEGLU) and m.proj.weight.shape[0] % 2 == 0]
    with _forwards_replaced([(m, _split_geglu_forward.__get__(m)) for m in patched]) as count:
        yield count


class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v over ``heads`` heads on (batch, sequence, heads x d) tensors,
    exported as one ``com.microsoft.MultiHeadAttention`` node (ORT's CPU and CUDA contrib op,
    same default scale)."""

    @staticmethod
    def forward(
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
    ) -> torch.Tensor:
        batch, length, width = query.shape
        head_dim = width // heads
        q = query.reshape(batch, length, heads, head_dim).transpose(1, 2)
        k = key.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        v = value.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch, length, width)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, heads: int) -> Any:
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=heads)
        out.setType(query.type())
        return out


def _plain_attention_forward(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    _original: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    if attention_mask is not None or kwargs or hidden_states.ndim != 3:
        return _original(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    out = _MultiHeadAttention.apply(
        attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads
    )
    return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def multi_head_attention_nodes(module: nn.Module) -> Iterator[int]:
    """While open, every diffusers ``Attention`` under ``module`` that runs as q/k/v projections,
    SDPA and ``to_out`` only (see :func:`_plain_attention`), on (batch, sequence, channels)
    inputs and without a mask, exports its attention core as one ONNX Runtime
    ``MultiHeadAttention`` node. Yields how many attentions it patched, and restores them on exit.

    The legacy exporter writes ``scaled_dot_product_attention`` as per-head reshapes and
    transposes of q, k and v, a square-root scale on q and on k, MatMul, Softmax, MatMul and a
    transpose back. ORT's CPU kernel does the same in one node. At the small preset's shapes it
    measured 1.11-1.38x faster, with 1e-6 max error (docs/runtime-cpu-profile.md). Eager calls
    (and export's parity reference) run the usual SDPA.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    replacements = []
    for attn in module.modules():
        if not isinstance(attn, Attention) or "forward" in vars(attn):
            continue
        if not isinstance(attn.processor, AttnProcessor2_0) or not _plain_attention(attn):
            continue
        replacements.append((attn, functools.partial(_plain_attention_forward, attn, _original=attn.forward)))
    with _forwards_replaced(replacements) as count:
        yield count


class _VideoText:
    """What a TransformerSpatioTemporalModel's pre-hook saw of its current call."""

    def __init__(self) -> None:
        self.context: torch.Tensor | None = None  # (batch, L, D): each video's first-frame text
        self.pixels = 0  # latent pixels per frame: the rows of time_context per video


def _plain_attention(attn: nn.Module) -> bool:
    """An Attention that AttnProcessor2_0 would run as q/k/v projections, SDPA and to_out only."""
    return (
        getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "group_norm", None) is None
        and not getattr(attn, "norm_cross", None)
        and getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and not getattr(attn, "residual_connection", False)
        and getattr(attn, "rescale_output_factor", 1.0) == 1.0
    )


def _folded_cross_attention(
    attn: nn.Module, state: _VideoText, hidden_states: torch.Tensor, as_node: bool
) -> torch.Tensor:
    context = state.context
    videos, pixels = context.shape[0], state.pixels
    rows, frames, _ = hidden_states.shape  # (videos * pixels, frames, C)
    if rows != videos * pixels:
        raise RuntimeError(
            f"temporal cross-attention got {rows} rows, expected {videos} videos x {pixels} pixels"
        )
    query = attn.to_q(hidden_states)
    key, value = attn.to_k(context), attn.to_v(context)  # (videos, L, inner)
    # (videos * pixels, frames) rows -> one query sequence of pixels * frames per video
    query = query.reshape(videos, pixels * frames, query.shape[-1])
    if as_node:
        out = _MultiHeadAttention.apply(query, key, value, attn.heads)
    else:
        out = _MultiHeadAttention.forward(None, query, key, value, attn.heads)
    out = out.reshape(rows, frames, out.shape[-1]).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def fold_temporal_cross_attention(
    module: nn.Module, multi_head_attention_node: bool = False
) -> Iterator[int]:
    """While open, the temporal cross-attention (``attn2``) of every SVD
    ``TransformerSpatioTemporalModel`` under ``module`` attends once per video; yields how many
    attentions it patched, and restores them on exit.

    The model broadcasts each video's first-frame text to every latent pixel (``time_context``,
    (videos x pixels, L, D)) and then runs the temporal attention with a batch of videos x
    pixels. Every pixel of a video therefore projects, splits into heads, transposes and scales
    the same keys and values. Softmax attention treats each query row on its own, so the same
    result comes from one attention per video. The query sequence is that video's pixels x
    frames, and the keys and values are projected once from the un-broadcast text. The patch
    reads that text in a forward pre-hook on the transformer and leaves ``time_context`` unused,
    so the exporter drops its broadcast.

    Attentions with anything beyond q/k/v projections, SDPA and ``to_out`` (spatial or group
    norms, q/k norms, cross-norms, residuals, rescaling, custom processors), or that are called
    with an attention mask, are left as they are. ``multi_head_attention_node=True`` exports the
    folded attention's core as one ``MultiHeadAttention`` node, as
    :func:`multi_head_attention_nodes` does for the others.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    hooks, replacements = [], []
    for transformer in module.modules():
        if not isinstance(transformer, TransformerSpatioTemporalModel):
            continue
        state = _VideoText()

        def record(_module: nn.Module, args: tuple, kwargs: dict, state: _VideoText = state) -> None:
            hidden_states = args[0] if args else kwargs["hidden_states"]
            text = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            indicator = args[2] if len(args) > 2 else kwargs.get("image_only_indicator")
            if text is None or indicator is None:
                state.context = None
                return
            frames = indicator.shape[-1]
            batch_frames, _, height, width = hidden_states.shape
            # as the transformer builds time_context: each video's text at its first frame
            state.context = text.reshape(batch_frames // frames, frames, -1, text.shape[-1])[:, 0]
            state.pixels = height * width

        hooks.append(transformer.register_forward_pre_hook(record, with_kwargs=True))
        for block in transformer.temporal_transformer_blocks:
            attn = getattr(block, "attn2", None)
            if attn is None or not isinstance(attn.processor, AttnProcessor2_0) or not _plain_attention(attn):
                continue

            def forward(
                hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                _attn: nn.Module = attn,
                _state: _VideoText = state,
                _original=attn.forward,
                **kwargs: Any,
            ) -> torch.Tensor:
                if (
                    _state.context is None
                    or attention_mask is not None
                    or encoder_hidden_states is None
                    or kwargs
                ):
                    return _original(
                        hidden_states,
                        encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask,
                        **kwargs,
                    )
                return _folded_cross_attention(_attn, _state, hidden_states, multi_head_attention_node)

            replacements.append((attn, forward))
    try:
        with _forwards_replaced(replacements) as count:
            yield count
    finally:
        for hook in hooks:
            hook.remove()


def _repeat_interleave_as_expand(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def repeat_interleave(
        self: torch.Tensor, repeats: Any, dim: int | None = None, *, output_size: Any = None
    ) -> torch.Tensor:
        # While tracing, a count read off a shape is a 0-dim tensor. output_size (the result's
        # length on dim, a hint diffusers passes) is implied by the reshape.
        single = isinstance(repeats, int) or (isinstance(repeats, torch.Tensor) and repeats.dim() == 0)
        if not single or dim is None:
            return original(self, repeats, dim, output_size=output_size)
        dim = dim % self.dim()
        shape = list(self.shape)
        expanded = self.unsqueeze(dim + 1).expand(*shape[: dim + 1], repeats, *shape[dim + 1 :])
        return expanded.reshape(*shape[:dim], shape[dim] * repeats, *shape[dim + 1 :])

    return repeat_interleave


@contextlib.contextmanager
def repeat_interleave_as_expand() -> Iterator[None]:
    """``torch.Tensor.repeat_interleave`` with an int count and an axis, replaced while the
    block runs by the same values made as ``unsqueeze``, ``expand`` and ``reshape`` (see the
    module docstring); any other call goes to the original."""
    original = torch.Tensor.repeat_interleave
    torch.Tensor.repeat_interleave = _repeat_interleave_as_expand(original)
    try:
        yield
    finally:
        torch.Tensor.repeat_interleave = original

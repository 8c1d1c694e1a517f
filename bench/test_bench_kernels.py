"""Fused runtime kernels vs the unfused numpy references, timed side by side in one run.

    .venv/bin/python -m pytest bench/test_bench_kernels.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results/kernels_cpu.json

(bench/results/kernels_cpu.json is such a run with the per-round `data` arrays dropped.)

Each group holds one problem: `numpy` (vpp.kernels.reference, float32), `fused` (the
C++ kernel on all cores) and `fused-1thread` (the same kernel on one core, since numpy's
elementwise operations use one). Attention groups also time `ort` and `ort-1thread`: one ONNX
Runtime `MultiHeadAttention` node, what the exported graphs run, on (batch, tokens, heads x d)
as they hold it. Those figures decided that the C++ attention and sampler kernels stay in
vpp-kernels rather than becoming custom ops (packages/kernels/README.md). Shapes come from the
models the runtime serves. Every benchmark first checks its result against the reference.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from vpp import kernels
from vpp.kernels import reference

IMPLEMENTATIONS = ["numpy", "fused", "fused-1thread"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    if request.param == "fused-1thread":
        kernels.set_num_threads(1)
        yield request.param
        kernels.set_num_threads(0)
    else:
        yield request.param


def random_float32(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# (name, shape, groups): SVD ResNet blocks at the "small" width on 8 frames, and the paper's
# 320-channel up-block at 14 frames of 32x32 latents.
GROUP_NORM_PROBLEMS = [
    ("gn-8x128x32x32", (8, 128, 32, 32), 32),
    ("gn-14x320x32x32", (14, 320, 32, 32), 32),
]


@pytest.mark.parametrize(
    ("name", "shape", "groups"), GROUP_NORM_PROBLEMS, ids=[p[0] for p in GROUP_NORM_PROBLEMS]
)
def test_bench_group_norm_silu(benchmark, implementation, name, shape, groups):
    benchmark.group = name
    x = random_float32(shape, scale=2.0)
    weight, bias = random_float32(shape[1], 1), random_float32(shape[1], 2)
    if implementation == "numpy":
        run = lambda: reference.group_norm_silu(x, weight, bias, groups, 1e-5)  # noqa: E731
    else:
        run = lambda: kernels.group_norm_silu(x, weight, bias, groups, 1e-5)  # noqa: E731
    result = benchmark(run)
    expected = reference.group_norm_silu(
        x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64), groups, 1e-5
    )
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


# (name, shape): the DiT head's action chunk (10 x 7), SVD latents (16 frames x 4 x 32 x 32),
# and a 4M-element tensor where memory traffic dominates.
SAMPLER_PROBLEMS = [
    ("ddim-action-1x10x7", (1, 10, 7)),
    ("ddim-latent-16x4x32x32", (16, 4, 32, 32)),
    ("ddim-4M", (16, 4, 256, 256)),
]


@pytest.mark.parametrize(("name", "shape"), SAMPLER_PROBLEMS, ids=[p[0] for p in SAMPLER_PROBLEMS])
def test_bench_ddim_step(benchmark, implementation, name, shape):
    benchmark.group = name
    x = random_float32(shape, 3, scale=20.0)
    f = random_float32(shape, 4)
    if implementation == "numpy":
        run = lambda: reference.ddim_step(x, f, 20.0, 12.0, 0.5, "edm")  # noqa: E731
    else:
        run = lambda: kernels.ddim_step(x, f, 20.0, 12.0, sigma_data=0.5)  # noqa: E731
    result = benchmark(run)
    expected = reference.ddim_step(x.astype(np.float64), f.astype(np.float64), 20.0, 12.0, 0.5, "edm")
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


# (name, q shape, Lk): Video Former per-frame cross-attention (16 frames x 8 heads, 14 queries
# over 512 feature tokens + 14 queries, d 48), its temporal self-attention (224 query slots as
# batch, 16 frames), DiT decoder cross-attention (10 action tokens over 225 tokens), and the
# small preset's UNet: spatial self-attention (16 frames x 256 tokens, 2 heads of 32), its
# cross-attention to 20 text tokens, and temporal self-attention (512 pixels x 8 frames).
ATTENTION_PROBLEMS = [
    ("attn-spatial-16x8x14x526", (16, 8, 14, 48), 526),
    ("attn-temporal-224x8x16x16", (224, 8, 16, 48), 16),
    ("attn-dit-1x8x10x225", (1, 8, 10, 48), 225),
    ("attn-unet-self-16x2x256x256", (16, 2, 256, 32), 256),
    ("attn-unet-text-16x2x256x20", (16, 2, 256, 32), 20),
    ("attn-unet-temporal-512x2x8x8", (512, 2, 8, 32), 8),
]


def multi_head_attention_session(heads: int, threads: int) -> ort.InferenceSession:
    """One com.microsoft MultiHeadAttention node, as vpp-export writes for every UNet attention."""
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=heads
    )
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", f"l{name}", "h"]) for name in "qkv"
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "lq", "h"])
    graph = helper.make_graph([node], "attention", inputs, [output])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, L, d) -> (B, L, H * d), the layout the graphs hold."""
    batch, heads, length, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(batch, length, heads * d))


@pytest.mark.parametrize("implementation", [*IMPLEMENTATIONS, "ort", "ort-1thread"])
@pytest.mark.parametrize(
    ("name", "q_shape", "lk"), ATTENTION_PROBLEMS, ids=[p[0] for p in ATTENTION_PROBLEMS]
)
def test_bench_attention(benchmark, implementation, name, q_shape, lk):
    benchmark.group = name
    batch, heads, lq, d = q_shape
    q = random_float32(q_shape, 5)
    k = random_float32((batch, heads, lk, d), 6)
    v = random_float32((batch, heads, lk, d), 7)
    if implementation == "numpy":
        run = lambda: reference.scaled_dot_product_attention(q, k, v)  # noqa: E731
    elif implementation.startswith("ort"):
        session = multi_head_attention_session(heads, 1 if implementation == "ort-1thread" else 0)
        feeds = {"q": merge_heads(q), "k": merge_heads(k), "v": merge_heads(v)}
        run = lambda: session.run(None, feeds)[0].reshape(batch, lq, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    else:
        run = lambda: kernels.scaled_dot_product_attention(q, k, v)  # noqa: E731
    # parametrised here, not by the `implementation` fixture, which sets the threads for the others
    kernels.set_num_threads(1 if implementation == "fused-1thread" else 0)
    try:
        result = benchmark(run)
    finally:
        kernels.set_num_threads(0)
    expected = reference.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)

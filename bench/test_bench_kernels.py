"""Fused runtime kernels vs the unfused numpy references, timed side by side in one run.

    .venv/bin/python -m pytest bench/test_bench_kernels.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results/kernels_cpu.json

(bench/results/kernels_cpu.json is such a run with the per-round `data` arrays dropped.)

Each group holds one problem: `numpy` (vpp.runtime.kernels.reference, float32), `fused` (the
C++ kernel on all cores) and `fused-1thread` (the same kernel on one core, since numpy's
elementwise operations use one). Shapes come from the models the runtime serves. Every
benchmark first checks that the fused result matches the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from vpp.runtime import kernels
from vpp.runtime.kernels import reference

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


@pytest.mark.parametrize(("name", "shape", "groups"), GROUP_NORM_PROBLEMS, ids=[p[0] for p in GROUP_NORM_PROBLEMS])
def test_bench_group_norm_silu(benchmark, implementation, name, shape, groups):
    benchmark.group = name
    x = random_float32(shape, scale=2.0)
    weight, bias = random_float32(shape[1], 1), random_float32(shape[1], 2)
    if implementation == "numpy":
        run = lambda: reference.group_norm_silu(x, weight, bias, groups, 1e-5)  # noqa: E731
    else:
        run = lambda: kernels.group_norm_silu(x, weight, bias, groups, 1e-5)  # noqa: E731
    result = benchmark(run)
    expected = reference.group_norm_silu(x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64), groups, 1e-5)
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
# batch, 16 frames), and DiT decoder cross-attention (10 action tokens over 225 tokens).
ATTENTION_PROBLEMS = [
    ("attn-spatial-16x8x14x526", (16, 8, 14, 48), 526),
    ("attn-temporal-224x8x16x16", (224, 8, 16, 48), 16),
    ("attn-dit-1x8x10x225", (1, 8, 10, 48), 225),
]


@pytest.mark.parametrize(("name", "q_shape", "lk"), ATTENTION_PROBLEMS, ids=[p[0] for p in ATTENTION_PROBLEMS])
def test_bench_attention(benchmark, implementation, name, q_shape, lk):
    benchmark.group = name
    batch, heads, _, d = q_shape
    q = random_float32(q_shape, 5)
    k = random_float32((batch, heads, lk, d), 6)
    v = random_float32((batch, heads, lk, d), 7)
    if implementation == "numpy":
        run = lambda: reference.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        run = lambda: kernels.scaled_dot_product_attention(q, k, v)  # noqa: E731
    result = benchmark(run)
    expected = reference.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)

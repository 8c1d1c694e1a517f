"""Parity of the fused C++ kernels with unfused numpy references, and their input checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vpp import kernels
from vpp.kernels import reference

RNG_SEED = 1234


def as64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def reference_group_norm_silu(x, weight, bias, num_groups, eps, silu=True):
    return reference.group_norm_silu(*as64(x, weight, bias), num_groups, eps, silu)


def reference_denoised(x, f, sigma, sigma_data, parameterisation):
    return reference.edm_denoise(*as64(x, f), sigma, sigma_data, parameterisation)


def reference_ddim_step(x, f, sigma, sigma_next, sigma_data, parameterisation):
    return reference.ddim_step(*as64(x, f), sigma, sigma_next, sigma_data, parameterisation)


def reference_euler_step(x, f, sigma, sigma_next, sigma_data, parameterisation):
    return reference.euler_step(*as64(x, f), sigma, sigma_next, sigma_data, parameterisation)


def reference_attention(q, k, v, mask=None, causal=False, scale=None):
    return reference.scaled_dot_product_attention(*as64(q, k, v), mask, causal, scale)


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


def random_float32(rng, shape, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def test_available_reports_the_compiled_cpu_backend():
    backends = kernels.available()
    assert backends["cpu"] is True
    assert set(backends) == {"cpu", "cuda", "triton"}


@pytest.mark.parametrize(
    ("shape", "num_groups"),
    [
        ((2, 64, 8, 8), 32),  # NCHW ResNet block
        ((1, 32, 16), 32),  # (N, C, T) temporal block, one channel per group
        ((2, 64, 4, 8, 8), 32),  # (N, C, T, H, W)
        ((3, 6, 5), 3),  # odd sizes: no vector-width multiples anywhere
        ((1, 320, 32, 32), 32),  # large enough for the threaded path
    ],
)
def test_group_norm_silu_matches_unfused_reference(rng, shape, num_groups):
    x = random_float32(rng, shape, scale=2.0, offset=0.5)
    weight = random_float32(rng, shape[1])
    bias = random_float32(rng, shape[1])
    fused = kernels.group_norm_silu(x, weight, bias, num_groups, 1e-5)
    assert fused.dtype == np.float32 and fused.shape == x.shape
    np.testing.assert_allclose(
        fused, reference_group_norm_silu(x, weight, bias, num_groups, 1e-5), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (4096, 256)], ids=["odd", "3-D", "threaded"])
def test_geglu_matches_the_exact_gelu_reference(rng, shape):
    value = random_float32(rng, shape)
    gate = random_float32(rng, shape, scale=3.0)
    fused = kernels.geglu(value, gate)
    assert fused.dtype == np.float32 and fused.shape == shape
    np.testing.assert_allclose(fused, reference.geglu(*as64(value, gate)), rtol=1e-5, atol=1e-6)


def test_geglu_erf_is_accurate_across_its_ranges_and_far_into_both_tails():
    # the polynomial range |x| <= 1, the erfc range 1..4 and the tails beyond, in gate units
    # (x = gate / sqrt(2)), and the boundaries themselves
    gate = np.concatenate([np.linspace(-12, 12, 200_001), np.sqrt(2) * np.array([-4, -1, 0, 1, 4])]).astype(
        np.float32
    )
    value = np.ones_like(gate)
    fused, expected = kernels.geglu(value, gate), reference.geglu(*as64(value, gate))
    np.testing.assert_allclose(fused, expected, rtol=0, atol=1e-6)
    negative = expected < -1e-7  # the gelu of very negative gates: relative accuracy too
    np.testing.assert_allclose(fused[negative], expected[negative], rtol=2e-5)
    assert np.all(np.isfinite(fused)) and fused[gate > 8].tolist() == gate[gate > 8].tolist()


def test_group_norm_without_affine_or_silu(rng):
    x = random_float32(rng, (2, 16, 7, 3))
    fused = kernels.group_norm_silu(x, None, None, 4, 1e-6, silu=False)
    np.testing.assert_allclose(
        fused, reference_group_norm_silu(x, None, None, 4, 1e-6, silu=False), rtol=1e-5, atol=1e-5
    )


def test_group_norm_keeps_precision_under_a_large_common_offset(rng):
    # A naive float32 E[x^2] - E[x]^2 loses every digit here; the variance must survive.
    x = random_float32(rng, (1, 8, 64, 64), scale=1.0, offset=3000.0)
    fused = kernels.group_norm_silu(x, None, None, 2, 1e-5, silu=False)
    np.testing.assert_allclose(
        fused, reference_group_norm_silu(x, None, None, 2, 1e-5, silu=False), rtol=1e-3, atol=1e-3
    )


def test_silu_is_accurate_far_into_both_tails(rng):
    # weight 60 pushes normalised values to about +-200: exp under- and overflow territory.
    x = random_float32(rng, (1, 4, 4096))
    weight = np.full(4, 60.0, dtype=np.float32)
    fused = kernels.group_norm_silu(x, weight, None, 1, 1e-5)
    reference = reference_group_norm_silu(x, weight, None, 1, 1e-5)
    assert np.abs(reference).max() > 150
    assert np.all(np.isfinite(fused))
    np.testing.assert_allclose(fused, reference, rtol=2e-5, atol=1e-5)


def test_nan_input_stays_visible_in_its_group_only(rng):
    x = random_float32(rng, (1, 8, 16))
    x[0, 0, 3] = np.nan
    fused = kernels.group_norm_silu(x, None, None, 2)
    assert np.all(np.isnan(fused[0, :4])), "a NaN must poison its own group's statistics"
    np.testing.assert_allclose(
        fused[0, 4:], reference_group_norm_silu(x, None, None, 2, 1e-5)[0, 4:], rtol=1e-5, atol=1e-5
    )


def test_threaded_and_single_threaded_results_are_identical(rng):
    x = random_float32(rng, (2, 128, 32, 32))
    weight, bias = random_float32(rng, 128), random_float32(rng, 128)
    q, k, v = (random_float32(rng, (2, 4, 128, 32)) for _ in range(3))
    default_threads = kernels.num_threads()
    try:
        kernels.set_num_threads(1)
        assert kernels.num_threads() == 1
        single_norm = kernels.group_norm_silu(x, weight, bias, 32)
        single_attention = kernels.scaled_dot_product_attention(q, k, v)
    finally:
        kernels.set_num_threads(0)
    assert kernels.num_threads() == default_threads
    np.testing.assert_array_equal(kernels.group_norm_silu(x, weight, bias, 32), single_norm)
    np.testing.assert_array_equal(kernels.scaled_dot_product_attention(q, k, v), single_attention)


def test_concurrent_callers_get_correct_results(rng):
    # The GIL is released inside the kernels, so Python threads really run them at once; the
    # helper pool serves one call at a time and the others run on their own thread.
    from concurrent.futures import ThreadPoolExecutor

    inputs = [random_float32(rng, (2, 64, 32, 32), offset=float(i)) for i in range(6)]
    expected = [reference_group_norm_silu(x, None, None, 32, 1e-5) for x in inputs]
    with ThreadPoolExecutor(max_workers=3) as executor:
        results = list(executor.map(lambda x: kernels.group_norm_silu(x, None, None, 32), inputs * 3))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result, expected[index % len(inputs)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterisation", ["edm", "v"])
@pytest.mark.parametrize(
    ("sigma", "sigma_next", "sigma_data"),
    [(80.0, 35.0, 0.5), (1.3, 0.7, 1.0), (0.2, 0.0, 0.5), (700.0, 500.0, 1.0)],
)
def test_sampler_updates_match_unfused_references(rng, parameterisation, sigma, sigma_next, sigma_data):
    x = random_float32(rng, (2, 10, 7), scale=sigma)
    f = random_float32(rng, (2, 10, 7))
    options = {"sigma_data": sigma_data, "parameterisation": parameterisation}
    magnitude = max(1.0, sigma)
    np.testing.assert_allclose(
        kernels.edm_denoise(x, f, sigma, **options),
        reference_denoised(x, f, sigma, sigma_data, parameterisation),
        rtol=1e-5,
        atol=1e-6 * magnitude,
    )
    for fused_step, reference_step in (
        (kernels.ddim_step, reference_ddim_step),
        (kernels.euler_step, reference_euler_step),
    ):
        np.testing.assert_allclose(
            fused_step(x, f, sigma, sigma_next, **options),
            reference_step(x, f, sigma, sigma_next, sigma_data, parameterisation),
            rtol=1e-5,
            atol=1e-6 * magnitude,
        )


def test_preconditioning_matches_the_reference_formulas():
    c_skip, c_out = kernels.preconditioning(2.0, sigma_data=0.5)
    assert c_skip == pytest.approx(0.25 / 4.25)
    assert c_out == pytest.approx(1.0 / np.sqrt(4.25))
    assert kernels.preconditioning(2.0, sigma_data=0.5, parameterisation="v") == pytest.approx(
        (c_skip, -c_out)
    )


def test_sampler_step_updates_in_place_and_threads_large_arrays(rng):
    x = random_float32(rng, (4, 16, 64, 64), scale=10.0)  # 262k elements: the threaded path
    f = random_float32(rng, x.shape)
    expected = reference_ddim_step(x, f, 10.0, 6.0, 0.5, "edm")
    result = kernels.ddim_step(x, f, 10.0, 6.0, sigma_data=0.5, out=x)
    assert result is x
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_ten_step_ddim_loop_stays_close_to_the_reference(rng):
    sigmas = [*np.exp(np.linspace(np.log(80.0), np.log(1.0), 10)).tolist(), 0.0]
    fused = random_float32(rng, (1, 10, 7), scale=80.0)
    reference = fused.astype(np.float64)
    network_outputs = [random_float32(rng, fused.shape) for _ in range(10)]
    for sigma, sigma_next, f in zip(sigmas[:-1], sigmas[1:], network_outputs):
        fused = kernels.ddim_step(fused, f, sigma, sigma_next, sigma_data=0.5)
        reference = reference_ddim_step(reference, f, sigma, sigma_next, 0.5, "edm")
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("q_shape", "lk", "dv"),
    [((2, 4, 33, 16), 70, 16), ((1, 8, 10, 64), 224, 64), ((1, 1, 1, 8), 1, 3), ((2, 2, 130, 24), 65, 40)],
)
def test_attention_matches_unfused_softmax(rng, q_shape, lk, dv):
    batch, heads, _, d = q_shape
    q = random_float32(rng, q_shape)
    k = random_float32(rng, (batch, heads, lk, d))
    v = random_float32(rng, (batch, heads, lk, dv))
    np.testing.assert_allclose(
        kernels.scaled_dot_product_attention(q, k, v), reference_attention(q, k, v), rtol=1e-5, atol=1e-5
    )


def test_attention_masks_causal_and_custom_scale(rng):
    q, k, v = (random_float32(rng, (2, 3, 20, 8)) for _ in range(3))
    key_padding = rng.random((2, 1, 1, 20)) > 0.3
    key_padding[..., 0] = True
    square = rng.random((20, 20)) > 0.5
    for mask, causal, scale in (
        (key_padding, False, None),
        (square, False, 0.3),
        (None, True, None),
        (key_padding, True, 2.0),
    ):
        np.testing.assert_allclose(
            kernels.scaled_dot_product_attention(q, k, v, mask, causal=causal, scale=scale),
            reference_attention(q, k, v, mask, causal, scale),
            rtol=1e-5,
            atol=1e-5,
        )


def test_attention_is_stable_for_huge_scores_and_zero_for_fully_masked_rows(rng):
    q = random_float32(rng, (1, 1, 4, 16), scale=300.0)  # scores ~1e5: a naive exp overflows
    k = random_float32(rng, (1, 1, 9, 16), scale=3.0)
    v = random_float32(rng, (1, 1, 9, 16))
    mask = np.ones((4, 9), dtype=bool)
    mask[2] = False
    fused = kernels.scaled_dot_product_attention(q, k, v, mask)
    assert np.all(np.isfinite(fused))
    np.testing.assert_array_equal(fused[0, 0, 2], 0.0)
    np.testing.assert_allclose(fused, reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_attention_matches_torch_sdpa(rng):
    torch = pytest.importorskip("torch")
    q, k, v = (random_float32(rng, (2, 4, 16, 32)) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True
    )
    np.testing.assert_allclose(
        kernels.scaled_dot_product_attention(q, k, v, causal=True), expected.numpy(), rtol=1e-5, atol=1e-5
    )


def test_group_norm_reference_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = random_float32(rng, (2, 64, 4, 8))
    weight, bias = random_float32(rng, 64), random_float32(rng, 64)
    expected = torch.nn.functional.silu(
        torch.nn.functional.group_norm(
            torch.from_numpy(x), 32, torch.from_numpy(weight), torch.from_numpy(bias), 1e-5
        )
    )
    np.testing.assert_allclose(
        kernels.group_norm_silu(x, weight, bias, 32, 1e-5), expected.numpy(), rtol=1e-5, atol=1e-5
    )


def bad_group_norm_calls(rng):
    x = random_float32(rng, (2, 64, 8, 8))
    w = random_float32(rng, 64)
    return [
        (lambda: kernels.group_norm_silu(x.astype(np.float64), w, w, 32), "float32, got float64"),
        (lambda: kernels.group_norm_silu(x.transpose(0, 1, 3, 2), w, w, 32), "C-contiguous"),
        (
            lambda: kernels.group_norm_silu(x, w, w, 24),
            r"channels \(64\) must be divisible by num_groups \(24\)",
        ),
        (lambda: kernels.group_norm_silu(x, w[:32], w, 32), r"weight has shape \(32,\), expected \(64,\)"),
        (lambda: kernels.group_norm_silu(x, w, w.astype(np.float16), 32), "bias must be float32"),
        (lambda: kernels.group_norm_silu(x[0, 0, 0], None, None, 1), "shape"),
        (lambda: kernels.group_norm_silu(x.tolist(), w, w, 32), "numpy.ndarray"),
        (lambda: kernels.group_norm_silu(x, w, w, 32, eps=0.0), "eps must be > 0"),
    ]


def bad_sampler_calls(rng):
    x = random_float32(rng, (2, 10, 7))
    f = random_float32(rng, (2, 10, 7))
    return [
        (
            lambda: kernels.ddim_step(x, f[:1], 1.0, 0.5, sigma_data=0.5),
            r"f has shape \(1, 10, 7\), expected the shape of x \(2, 10, 7\)",
        ),
        (lambda: kernels.euler_step(x, f.astype(np.float64), 1.0, 0.5, sigma_data=0.5), "f must be float32"),
        (lambda: kernels.edm_denoise(x[:, ::2], f[:, ::2], 1.0, sigma_data=0.5), "C-contiguous"),
        (lambda: kernels.ddim_step(x, f, 0.0, 0.5, sigma_data=0.5), "sigma must be finite and > 0"),
        (lambda: kernels.ddim_step(x, f, 1.0, -0.5, sigma_data=0.5), "sigma_next must be"),
        (
            lambda: kernels.ddim_step(x, f, 1.0, 0.5, sigma_data=0.5, parameterisation="eps"),
            "'edm' or 'v', got 'eps'",
        ),
        (
            lambda: kernels.ddim_step(x, f, 1.0, 0.5, sigma_data=0.5, out=np.zeros((3,), np.float32)),
            "out has shape",
        ),
        (lambda: kernels.ddim_step(x, f, 1.0, 0.5, sigma_data=0.5, backend="tpu"), "backend must be"),
    ]


def bad_attention_calls(rng):
    q = random_float32(rng, (1, 2, 5, 8))
    k = random_float32(rng, (1, 2, 6, 8))
    return [
        (
            lambda: kernels.scaled_dot_product_attention(q, np.ascontiguousarray(k[..., :4]), k),
            r"k has shape \(1, 2, 6, 4\)",
        ),
        (
            lambda: kernels.scaled_dot_product_attention(q, k, np.ascontiguousarray(k[:, :, :3])),
            r"v has shape \(1, 2, 3, 8\)",
        ),
        (lambda: kernels.scaled_dot_product_attention(q[0], k, k), "must be 4-D"),
        (
            lambda: kernels.scaled_dot_product_attention(q, k, k, np.ones((5, 6), np.float32)),
            "mask must be a numpy bool array",
        ),
        (
            lambda: kernels.scaled_dot_product_attention(q, k, k, np.ones((5, 7), bool)),
            r"does not broadcast to \(1, 2, 5, 6\)",
        ),
        (lambda: kernels.scaled_dot_product_attention(q.astype(np.float64), k, k), "q must be float32"),
    ]


def bad_geglu_calls(rng):
    value = random_float32(rng, (3, 4))
    return [
        (
            lambda: kernels.geglu(value, value[:2]),
            r"gate has shape \(2, 4\), expected the shape of value \(3, 4\)",
        ),
        (lambda: kernels.geglu(value.astype(np.float64), value), "value must be float32"),
        (lambda: kernels.geglu(value, np.asfortranarray(value)), "gate must be C-contiguous"),
    ]


@pytest.mark.parametrize(
    "make_calls", [bad_group_norm_calls, bad_sampler_calls, bad_attention_calls, bad_geglu_calls]
)
def test_bad_input_raises_value_error_naming_the_problem(rng, make_calls):
    for call, message in make_calls(rng):
        with pytest.raises(ValueError, match=message):
            call()


def test_extension_itself_rejects_bad_input_without_crashing(rng):
    from vpp.kernels import _kernels

    x = random_float32(rng, (2, 64, 4))
    with pytest.raises(ValueError, match="float32"):
        _kernels.group_norm_silu(x.astype(np.float64), None, None, 32, 1e-5, True)
    with pytest.raises(ValueError, match="divisible"):
        _kernels.group_norm_silu(x, None, None, 7, 1e-5, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.ddim_step(x[:, ::2], x[:, ::2], 1.0, 0.5, 0.5, "edm", None)
    with pytest.raises(ValueError, match="expected the shape of x"):
        _kernels.euler_step(x, x[:1], 1.0, 0.5, 0.5, "v", None)
    q = random_float32(rng, (1, 1, 3, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        _kernels.scaled_dot_product_attention(q, q, q, np.ones((1, 1, 3, 2), bool), False, None)


def test_kernels_run_without_torch():
    script = (
        "import sys, numpy as np\n"
        "from vpp import kernels\n"
        "x = np.ones((1, 4, 3), np.float32)\n"
        "kernels.group_norm_silu(x, None, None, 2)\n"
        "kernels.ddim_step(x, x, 2.0, 1.0, sigma_data=0.5)\n"
        "kernels.scaled_dot_product_attention(x[None], x[None], x[None])\n"
        "assert kernels.available()['cpu']\n"
        "assert 'torch' not in sys.modules and 'triton' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

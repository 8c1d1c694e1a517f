"""Parity of the Triton kernels with the unfused numpy references.

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (slow: small shapes
only). The variable must be set before triton itself is first imported and stay set while
kernels run, so the fixture imports triton and the kernels module inside that window.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'vpp-kernels[test]')", allow_module_level=True)

from vpp.kernels import reference  # noqa: E402

MODULE = "vpp.kernels.triton_kernels"


@pytest.fixture(scope="module")
def triton_kernels():
    if torch.cuda.is_available():
        yield importlib.import_module(MODULE), torch.device("cuda")
        return
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "triton was imported earlier in this process without TRITON_INTERPRET=1 and there is no GPU"
        )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        sys.modules.pop(MODULE, None)
        yield importlib.import_module(MODULE), torch.device("cpu")
    finally:
        sys.modules.pop(MODULE, None)
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def to_tensor(array, device):
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


@pytest.mark.parametrize(
    ("shape", "num_groups", "affine", "silu"),
    [
        ((2, 8, 6, 5), 4, True, True),  # NCHW, group of 60: one masked block
        ((1, 32, 48), 8, True, True),  # (N, C, T)
        ((1, 4, 2, 16, 20), 2, False, True),  # (N, C, T, H, W), group of 1280: two blocks
        ((2, 6, 7), 3, True, False),  # plain GroupNorm
    ],
)
def test_triton_group_norm_silu_matches_reference(triton_kernels, rng, shape, num_groups, affine, silu):
    module, device = triton_kernels
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32) if affine else None
    bias = rng.standard_normal(shape[1]).astype(np.float32) if affine else None
    result = module.group_norm_silu(
        to_tensor(x, device),
        None if weight is None else to_tensor(weight, device),
        None if bias is None else to_tensor(bias, device),
        num_groups,
        1e-5,
        silu=silu,
    )
    expected = reference.group_norm_silu(
        x.astype(np.float64),
        None if weight is None else weight.astype(np.float64),
        None if bias is None else bias.astype(np.float64),
        num_groups,
        1e-5,
        silu,
    )
    np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterisation", ["edm", "v"])
@pytest.mark.parametrize(("sigma", "sigma_next", "sigma_data"), [(80.0, 35.0, 0.5), (1.3, 0.0, 1.0)])
def test_triton_sampler_updates_match_reference(
    triton_kernels, rng, parameterisation, sigma, sigma_next, sigma_data
):
    module, device = triton_kernels
    x = (rng.standard_normal((3, 10, 70)) * sigma).astype(np.float32)  # 2100 elements: 3 blocks, last masked
    f = rng.standard_normal(x.shape).astype(np.float32)
    x_t, f_t = to_tensor(x, device), to_tensor(f, device)
    x64, f64 = x.astype(np.float64), f.astype(np.float64)
    options = {"sigma_data": sigma_data, "parameterisation": parameterisation}
    atol = 1e-6 * max(1.0, sigma)
    np.testing.assert_allclose(
        module.edm_denoise(x_t, f_t, sigma, **options).cpu().numpy(),
        reference.edm_denoise(x64, f64, sigma, sigma_data, parameterisation),
        rtol=1e-5,
        atol=atol,
    )
    for name in ("ddim_step", "euler_step"):
        result = getattr(module, name)(x_t, f_t, sigma, sigma_next, **options).cpu().numpy()
        expected = getattr(reference, name)(x64, f64, sigma, sigma_next, sigma_data, parameterisation)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=atol)


def test_triton_geglu_matches_reference(triton_kernels, rng):
    module, device = triton_kernels
    value = rng.standard_normal((3, 700)).astype(np.float32)  # 2,100 values: three blocks, one masked
    gate = (rng.standard_normal((3, 700)) * 4).astype(np.float32)
    result = module.geglu(to_tensor(value, device), to_tensor(gate, device)).cpu().numpy()
    np.testing.assert_allclose(
        result, reference.geglu(value.astype(np.float64), gate.astype(np.float64)), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="expected the shape of value"):
        module.geglu(to_tensor(value, device), to_tensor(gate[:1], device))


def test_triton_step_writes_in_place(triton_kernels, rng):
    module, device = triton_kernels
    x = rng.standard_normal(100).astype(np.float32)
    f = rng.standard_normal(100).astype(np.float32)
    expected = reference.ddim_step(x.astype(np.float64), f.astype(np.float64), 2.0, 1.0, 0.5, "edm")
    x_t = to_tensor(x, device)
    result = module.ddim_step(x_t, to_tensor(f, device), 2.0, 1.0, sigma_data=0.5, out=x_t)
    assert result.data_ptr() == x_t.data_ptr()
    np.testing.assert_allclose(x_t.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_triton_wrappers_reject_bad_input(triton_kernels):
    module, device = triton_kernels
    x = torch.zeros((2, 6, 4), device=device)
    with pytest.raises(ValueError, match=r"channels \(6\) must be divisible by num_groups \(4\)"):
        module.group_norm_silu(x, None, None, 4)
    with pytest.raises(ValueError, match=r"float32, got torch\.float64"):
        module.group_norm_silu(x.double(), None, None, 3)
    with pytest.raises(ValueError, match="contiguous"):
        module.group_norm_silu(x.transpose(1, 2), None, None, 2)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(6,\)"):
        module.group_norm_silu(x, torch.ones(3, device=device), None, 3)
    with pytest.raises(ValueError, match="expected the shape of x"):
        module.ddim_step(x, x[:1].contiguous(), 1.0, 0.5, sigma_data=0.5)
    with pytest.raises(ValueError, match="'edm' or 'v'"):
        module.euler_step(x, x, 1.0, 0.5, sigma_data=0.5, parameterisation="x0")

import math

import pytest
import torch

from vpp.tvp import edm


@pytest.mark.parametrize("sigma", [0.002, 0.5, 1.0, 3.0, 700.0])
def test_preconditioning_matches_svd_formulas(sigma):
    c_in, c_out, c_skip, c_noise = edm.preconditioning(torch.tensor([sigma], dtype=torch.float64))
    assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + 1))
    assert c_out.item() == pytest.approx(-sigma / math.sqrt(sigma**2 + 1))
    assert c_skip.item() == pytest.approx(1 / (sigma**2 + 1))
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4)
    assert edm.loss_weight(torch.tensor(sigma, dtype=torch.float64)).item() == pytest.approx(
        (sigma**2 + 1) / sigma**2
    )


def test_preconditioning_gives_unit_variance_input_and_target():
    # D = c_skip * x + c_out * F equals x0 when F hits its target (x0 - c_skip * x) / c_out;
    # with sigma_data = 1 that target and the network input c_in * x both have unit variance.
    x0 = torch.randn(1000, dtype=torch.float64)
    noise = torch.randn(1000, dtype=torch.float64)
    sigma = torch.tensor(2.5, dtype=torch.float64)
    x = x0 + sigma * noise
    c_in, c_out, c_skip, _ = edm.preconditioning(sigma)
    target = (x0 - c_skip * x) / c_out
    # the training target has unit variance when data and noise are unit-variance (sigma_data = 1)
    assert target.std().item() == pytest.approx(1.0, abs=0.1)
    assert torch.allclose(c_skip * x + c_out * target, x0)
    assert (c_in * x).std().item() == pytest.approx(1.0, abs=0.1)


def test_training_sigmas_are_log_normal_with_svd_parameters():
    sigmas = edm.sample_training_sigmas(40000, 0.7, 1.6, torch.Generator().manual_seed(0))
    logs = sigmas.log()
    assert logs.mean().item() == pytest.approx(0.7, abs=0.03)
    assert logs.std().item() == pytest.approx(1.6, abs=0.03)


def test_text_dropout_rate():
    keep = edm.text_keep_mask(40000, 0.05, torch.Generator().manual_seed(1))
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert 1 - keep.mean().item() == pytest.approx(0.05, abs=0.005)
    assert edm.text_keep_mask(100, 0.0).min() == 1.0
    assert edm.text_keep_mask(100, 1.0).max() == 0.0


def test_karras_schedule():
    sigmas = edm.karras_sigmas(30, 0.002, 700.0, 7.0)
    assert len(sigmas) == 31
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert sigmas[-1].item() == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    with pytest.raises(ValueError, match="sigma_min"):
        edm.karras_sigmas(10, 5.0, 1.0)


def test_cfg_ramp_over_frames():
    scales = edm.cfg_scales(16, 1.0, 7.5)
    assert scales[0].item() == 1.0 and scales[-1].item() == 7.5
    assert torch.allclose(scales[1:] - scales[:-1], torch.full((15,), 6.5 / 15))

import math

import pytest
import torch

from vpp.policy.action_diffusion import (
    ActionDiffusion,
    exponential_sigmas,
    karras_scalings,
    sample_log_logistic,
)
from vpp.policy.config import ConfigError, DiffusionConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py says why


def random_network(seed: int = 0):
    """A fixed, non-trivial stand-in for the DiT: F depends on x and c_noise."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(7, 7, generator=generator)

    def network(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ weight) * 3 + c_noise.view(-1, 1, 1)

    return network


@pytest.mark.parametrize("sigma", [0.001, 0.5, 1.0, 80.0])
def test_scalings_match_hand_computed_values(sigma):
    c_skip, c_out, c_in, c_noise = karras_scalings(torch.tensor([sigma], dtype=torch.float64), 0.5)
    assert c_skip.item() == pytest.approx(0.25 / (sigma**2 + 0.25), rel=1e-12)
    assert c_out.item() == pytest.approx(sigma * 0.5 / math.sqrt(sigma**2 + 0.25), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + 0.25), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-12)


def test_scalings_at_sigma_data():
    # At sigma = sigma_data = 0.5: c_skip = 1/2, c_out = 0.5/sqrt(2), c_in = sqrt(2), c_noise = ln(0.5)/4.
    c_skip, c_out, c_in, c_noise = karras_scalings(torch.tensor(0.5), 0.5)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(0.35355339)
    assert c_in.item() == pytest.approx(1.41421356)
    assert c_noise.item() == pytest.approx(-0.17328680)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 5.0, 80.0])
def test_network_input_and_target_have_unit_variance_for_data_with_std_sigma_data(sigma):
    # EDM's design goal: for data of std sigma_data both c_in x and the training target have unit variance.
    generator = torch.Generator().manual_seed(1)
    actions = torch.randn(200_000, generator=generator, dtype=torch.float64) * 0.5
    noisy = actions + torch.randn(200_000, generator=generator, dtype=torch.float64) * sigma
    c_skip, c_out, c_in, _ = karras_scalings(torch.tensor(sigma, dtype=torch.float64), 0.5)
    assert (noisy * c_in).std().item() == pytest.approx(1.0, abs=0.01)
    assert ((actions - c_skip * noisy) / c_out).std().item() == pytest.approx(1.0, abs=0.01)


def test_denoiser_is_exact_as_sigma_goes_to_zero():
    diffusion = ActionDiffusion(DiffusionConfig())
    x = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    network = random_network()
    for sigma, tolerance in [(1e-4, 1e-3), (1e-7, 1e-6), (1e-10, 1e-9)]:
        denoised = diffusion.denoise(
            lambda a, c: network(a.float(), c.float()).double(),
            x,
            torch.full((3,), sigma, dtype=torch.float64),
        )
        assert (denoised - x).abs().max().item() < tolerance
    far = diffusion.denoise(network, x.float(), torch.full((3,), 1.0))
    assert (far - x.float()).abs().max().item() > 0.1


def test_log_logistic_training_sigmas_median_quartiles_and_bounds():
    diffusion = ActionDiffusion(DiffusionConfig())
    sigma = diffusion.training_sigmas(200_000, torch.Generator().manual_seed(0))
    assert sigma.dtype == torch.float32 and sigma.shape == (200_000,)
    assert sigma.median().item() == pytest.approx(0.5, rel=0.02)
    # Log-logistic quartiles: exp(loc +- scale * ln 3).
    q1, q3 = torch.quantile(sigma[:100_000], torch.tensor([0.25, 0.75])).tolist()
    assert q1 == pytest.approx(0.5 * 3**-0.5, rel=0.02)
    assert q3 == pytest.approx(0.5 * 3**0.5, rel=0.02)
    assert sigma.min().item() >= 0.001 and sigma.max().item() <= 80.0


def test_log_logistic_truncation_holds_for_tight_bounds():
    sigma = sample_log_logistic((50_000,), math.log(0.5), 0.5, 0.45, 0.55, torch.Generator().manual_seed(3))
    assert sigma.min().item() >= 0.45 and sigma.max().item() <= 0.55
    # Mass is spread inside the bounds, not piled onto them as clamping alone would do.
    assert (sigma == 0.45).float().mean().item() < 0.001 and (sigma == 0.55).float().mean().item() < 0.001
    wide = sample_log_logistic((50_000,), math.log(0.5), 5.0, 0.001, 80.0, torch.Generator().manual_seed(3))
    assert wide.min().item() >= 0.001 and wide.max().item() <= 80.0 and wide.max().item() > 40


def test_exponential_schedule():
    sigmas = exponential_sigmas(10, 0.001, 80.0)
    assert sigmas.shape == (11,)
    assert (
        sigmas[0].item() == pytest.approx(80.0)
        and sigmas[9].item() == pytest.approx(0.001)
        and sigmas[10].item() == 0
    )
    ratios = sigmas[1:10] / sigmas[:9]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.001 / 80) ** (1 / 9)))
    diffusion = ActionDiffusion(DiffusionConfig(eval_sigma_min=1.0))
    assert diffusion.sigmas()[-2].item() == pytest.approx(1.0)
    assert diffusion.sigmas(num_steps=4, sigma_min=0.001).tolist()[-2] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="num_steps=0"):
        exponential_sigmas(0, 0.001, 80.0)


def test_sampler_is_deterministic_given_a_generator_and_seeds_differ():
    diffusion = ActionDiffusion(DiffusionConfig())
    network = random_network()
    first = diffusion.sample(network, (2, 10, 7), generator=torch.Generator().manual_seed(5))
    again = diffusion.sample(network, (2, 10, 7), generator=torch.Generator().manual_seed(5))
    other = diffusion.sample(network, (2, 10, 7), generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 1e-3


def test_sampler_calls_the_network_once_per_step_from_sigma_max():
    diffusion = ActionDiffusion(DiffusionConfig())
    seen = []

    def network(x, c_noise):
        seen.append(c_noise[0].item())
        return torch.zeros_like(x)

    diffusion.sample(network, (1, 4, 2), generator=torch.Generator().manual_seed(0), num_steps=6)
    assert len(seen) == 6
    assert seen[0] == pytest.approx(math.log(80.0) / 4, rel=1e-6)
    assert seen[-1] == pytest.approx(math.log(0.001) / 4, rel=1e-5)


def test_ddim_with_the_exact_denoiser_transports_a_gaussian_correctly():
    # Data N(mu, s^2) per item: the exact denoiser is E[a | x] = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the
    # probability-flow ODE maps x_T to mu + (x_T - mu) * s / sqrt(s^2 + sigma_max^2).
    mu, s = 0.3, 0.2
    diffusion = ActionDiffusion(DiffusionConfig(eval_sigma_min=1e-4))

    def exact_network(scaled, c_noise):
        sigma = (4 * c_noise).exp().view(-1, 1, 1)
        c_skip, c_out, c_in, _ = karras_scalings(sigma, 0.5)
        x = scaled / c_in
        denoised = (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)
        return (denoised - c_skip * x) / c_out

    noise = torch.randn(64, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = mu + noise * 80.0 * s / math.sqrt(s**2 + 80.0**2)
    coarse = diffusion.sample(exact_network, noise.shape, noise=noise, num_steps=10, dtype=torch.float64)
    fine = diffusion.sample(exact_network, noise.shape, noise=noise, num_steps=400, dtype=torch.float64)
    coarse_error = (coarse - expected).abs().max().item()
    fine_error = (fine - expected).abs().max().item()
    assert fine_error < 0.01
    assert fine_error < coarse_error  # first-order solver: error shrinks with more steps


def test_loss_is_zero_for_the_exact_target_and_deterministic_given_a_generator():
    diffusion = ActionDiffusion(DiffusionConfig())
    actions = torch.rand(4, 10, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def oracle(scaled, c_noise):
        sigma = (4 * c_noise).exp().view(-1, 1, 1)
        c_skip, c_out, c_in, _ = karras_scalings(sigma, 0.5)
        return (actions - c_skip * scaled / c_in) / c_out

    assert diffusion.loss(oracle, actions, torch.Generator().manual_seed(1)).item() < 1e-8
    network = random_network()
    a = diffusion.loss(network, actions, torch.Generator().manual_seed(2))
    b = diffusion.loss(network, actions, torch.Generator().manual_seed(2))
    c = diffusion.loss(network, actions, torch.Generator().manual_seed(3))
    assert a.item() == b.item() and a.item() != c.item() and a.item() > 0.1


def test_bad_diffusion_configs_are_rejected():
    with pytest.raises(ConfigError, match="eval_sigma_min=100"):
        ActionDiffusion(DiffusionConfig(eval_sigma_min=100.0))
    with pytest.raises(ConfigError, match=r"\[0.0, 80.0\]"):
        ActionDiffusion(DiffusionConfig(sigma_min=0.0))

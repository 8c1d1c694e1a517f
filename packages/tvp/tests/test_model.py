import pytest
import torch

from vpp.tvp.model import TextGuidedVideoPredictor
from vpp.tvp.sampling import generate_video


def test_vae_round_trip_shapes(tiny_model):
    video = torch.rand(2, 8, 3, 32, 32) * 2 - 1
    latents = tiny_model.encode_video(video)
    assert latents.shape == (2, 8, 4, 16, 16)
    assert tiny_model.decode_latents(latents).shape == video.shape
    with pytest.raises(ValueError, match=r"expected \(B, T, 3, 32, 32\)"):
        tiny_model.encode_video(torch.zeros(2, 8, 3, 64, 64))


def test_text_reaches_the_unet_through_cross_attention(tiny_model):
    hidden, pooled = tiny_model.encode_text(["move left", "move right"])
    assert hidden.shape == (2, 64, 32) and pooled.shape == (2, 32)
    assert not torch.allclose(hidden[0], hidden[1])
    noisy = torch.randn(1, 8, 4, 16, 16)
    cond = torch.randn(1, 4, 16, 16)
    sigma = torch.tensor([1.0])
    a = tiny_model.denoise(noisy, sigma, tiny_model.text_conditioning(hidden[:1]), cond)
    b = tiny_model.denoise(noisy, sigma, tiny_model.text_conditioning(hidden[1:]), cond)
    assert (a - b).abs().max() > 1e-4


def test_linear_text_projection_option():
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset("tiny", text_to_unet="linear")
    hidden, _ = model.encode_text(["a"])
    assert model.text_projection is not None
    assert model.text_conditioning(hidden).shape == (1, 64, 32)
    assert model.text_projection.weight.requires_grad


def test_cfg_dropout_removes_text_from_the_loss(tiny_model):
    latents = torch.randn(2, 8, 4, 16, 16)
    h1, _ = tiny_model.encode_text(["move the red square left"] * 2)
    h2, _ = tiny_model.encode_text(["move the blue square up"] * 2)

    def loss(hidden):
        return tiny_model.training_loss(latents, hidden, torch.Generator().manual_seed(3)).item()

    tiny_model.config.edm.text_dropout = 1.0
    assert loss(h1) == pytest.approx(loss(h2), abs=1e-7)
    tiny_model.config.edm.text_dropout = 0.0
    assert loss(h1) != pytest.approx(loss(h2), abs=1e-7)


def test_only_the_unet_trains(tiny_model):
    trainable = {name.split(".")[0] for name, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {"unet"}


def test_generation_is_seeded_and_guided(tiny_model):
    first = torch.rand(1, 3, 32, 32) * 2 - 1

    def run(seed, guidance=True):
        return generate_video(
            tiny_model,
            first,
            ["move left"],
            num_steps=3,
            generator=torch.Generator().manual_seed(seed),
            guidance=guidance,
        )

    a = run(0)
    assert a.shape == (1, 8, 3, 32, 32)
    assert torch.equal(a, run(0))
    assert not torch.equal(a, run(1))
    assert not torch.allclose(a, run(0, guidance=False))


def test_a_from_scratch_vae_starts_decoding_each_frame_on_its_own():
    # A random temporal output convolution mixed each frame with its zero-padded neighbours, so a
    # barely fitted VAE tinted whole frames, the first and last of a clip most (issue 12).
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset("tiny")
    latents = torch.randn(8, 4, 16, 16)
    with torch.no_grad():
        as_clip = model.vae.decode(latents, num_frames=8).sample
        one_by_one = torch.cat([model.vae.decode(z[None], num_frames=1).sample for z in latents])
    torch.testing.assert_close(as_clip, one_by_one, rtol=1e-4, atol=1e-5)

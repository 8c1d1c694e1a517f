import dataclasses

import pytest
import torch

from vpp.data.config import ConfigError
from vpp.tvp.features import feature_sigma, predictive_features


def test_official_blocks_stop_the_unet_early(tiny_model):
    calls = []
    handle = tiny_model.unet.up_blocks[1].register_forward_hook(lambda *_: calls.append(1))
    tiny_model.config.features.blocks = (0,)
    features = predictive_features(tiny_model, torch.zeros(1, 1, 3, 32, 32), ["a"])
    handle.remove()
    assert features.shape == (1, 1, 8, 64, 8, 8)
    assert calls == []  # the last up-block never ran
    tiny_model.config.features.blocks = None
    predictive_features(tiny_model, torch.zeros(1, 1, 3, 32, 32), ["a"])


def test_a_shorter_feature_pass_runs_the_unet_on_fewer_frames(tiny_model):
    """features.frames: the UNet sees (and the features hold) that many frames; the clip length
    stays what the TVP was trained on, and asking for more frames than that is refused."""
    seen = []
    handle = tiny_model.unet.up_blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    full = predictive_features(tiny_model, images, ["a"], generator=torch.Generator().manual_seed(0))
    tiny_model.config.features.frames = 3
    short = predictive_features(tiny_model, images, ["a"], generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert full.shape[2] == tiny_model.config.num_frames == 8 and short.shape == (1, 2, 3, *full.shape[3:])
    assert seen == [2 * 8, 2 * 3]  # (views x frames) rows through the UNet
    assert tiny_model.config.feature_frames == 3
    with pytest.raises(ConfigError, match=r"features\.frames=9; expected at most num_frames=8"):
        dataclasses.replace(
            tiny_model.config, features=dataclasses.replace(tiny_model.config.features, frames=9)
        )


def test_blocks_are_interpolated_and_stacked_in_order(tiny_model):
    tiny_model.config.features.size = 4
    images = torch.rand(1, 1, 3, 32, 32) * 2 - 1
    both = predictive_features(tiny_model, images, ["a"], generator=torch.Generator().manual_seed(0))
    tiny_model.config.features.blocks = (1,)
    second = predictive_features(tiny_model, images, ["a"], generator=torch.Generator().manual_seed(0))
    assert both.shape[-3:] == (96, 4, 4)
    assert torch.allclose(both[:, :, :, 64:], second, atol=1e-6)


def test_views_are_batched_independently(tiny_model):
    images = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    a = predictive_features(tiny_model, images, ["a", "b"], generator=torch.Generator().manual_seed(0))
    changed = images.clone()
    changed[:, 1] = -changed[:, 1]
    b = predictive_features(tiny_model, changed, ["a", "b"], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1e-3)


def test_feature_noise_level_is_the_first_step_of_the_schedule(tiny_model):
    assert feature_sigma(tiny_model) == torch.tensor(700.0).item()
    tiny_model.config.features.schedule_index = 5
    assert feature_sigma(tiny_model) < 700.0


def test_precomputed_text_matches_instructions(tiny_model):
    images = torch.rand(1, 1, 3, 32, 32) * 2 - 1
    hidden, _ = tiny_model.encode_text(["stack the blocks"])
    a = predictive_features(
        tiny_model, images, ["stack the blocks"], generator=torch.Generator().manual_seed(0)
    )
    b = predictive_features(
        tiny_model, images, text_hidden=hidden, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, b)

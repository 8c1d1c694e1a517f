import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNetSpatioTemporalConditionModel

from vpp.tvp.config import ConfigError, TrainConfig, TVPConfig
from vpp.tvp.features import feature_shape, predictive_features
from vpp.tvp.model import TextGuidedVideoPredictor


def test_paper_preset_has_svd_size():
    config = TVPConfig.preset("paper")
    with init_empty_weights():
        unet = UNetSpatioTemporalConditionModel(**config.unet)
    params = sum(p.numel() for p in unet.parameters())
    # SVD's UNet: 1.52 B parameters
    assert 1.50e9 < params < 1.55e9
    assert config.latent_size == 32 and config.num_frames == 16
    # all four up-blocks: 1280 + 1280 + 640 + 320 channels at 16x16 by default
    assert config.feature_channels == 3520 and config.feature_size == 16
    config.features.blocks = (0, 1)  # the official code's choice
    assert config.feature_channels == 2560


@pytest.mark.parametrize(
    "name,expected",
    [("tiny", (2, 8, 96, 8, 8)), ("small", (2, 8, 320, 8, 8))],
)
def test_feature_shapes_per_preset(name, expected):
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset(name).eval()
    size = model.config.image_size
    images = torch.rand(1, 2, 3, size, size) * 2 - 1
    features = predictive_features(model, images, ["pick up the cup"])
    assert tuple(features.shape) == (1, *expected)
    assert feature_shape(model, 2) == expected
    assert torch.isfinite(features).all()


def test_config_json_round_trip(tmp_path):
    config = TVPConfig.preset("small")
    config.features.blocks = (0, 2)
    path = config.save(tmp_path / "tvp_config.json")
    loaded = TVPConfig.load(path)
    assert loaded == config and loaded.features.blocks == (0, 2)
    assert json.loads(path.read_text())["features"]["blocks"] == [0, 2]


def test_bad_configs_are_refused():
    data = TVPConfig.preset("tiny").to_dict()
    with pytest.raises(ConfigError, match="unknown key 'frames' for TVPConfig"):
        TVPConfig.from_dict({**data, "frames": 3})
    with pytest.raises(ConfigError, match="unknown key 'sigma' for EDMConfig"):
        TVPConfig.from_dict({**data, "edm": {"sigma": 1.0}})
    with pytest.raises(ConfigError, match=r"TVPConfig\.text_to_unet='conv'; expected one of"):
        TVPConfig.from_dict({**data, "text_to_unet": "conv"})
    with pytest.raises(ConfigError, match=r"features\.blocks"):
        TVPConfig.from_dict({**data, "features": {**data["features"], "blocks": [5]}})
    with pytest.raises(ConfigError, match="multiple of the text hidden size"):
        TVPConfig.from_dict({**data, "text_encoder": {**data["text_encoder"], "hidden_size": 24}})
    with pytest.raises(ConfigError, match="not divisible"):
        TVPConfig.from_dict({**data, "image_size": 33})
    with pytest.raises(ConfigError, match="unknown preset 'huge' for TVPConfig"):
        TVPConfig.preset("huge")


def test_presets_take_overrides_and_old_files_still_load():
    assert TVPConfig.preset_names() == ("tiny", "small", "paper")
    config = TVPConfig.preset("tiny", num_frames=4, features={"blocks": [1]}, unet={"num_frames": 4})
    assert (config.num_frames, config.features.blocks, config.unet["num_frames"]) == (4, (1,), 4)
    # the rest of a nested dict is the preset's
    assert config.unet["block_out_channels"] == TVPConfig.preset("tiny").unet["block_out_channels"]
    assert config.preset_name == "tiny"
    # tvp_config.json files written before the record field was renamed say "preset"
    old = {**TVPConfig.preset("small").to_dict(), "preset": "small"}
    del old["preset_name"]
    assert TVPConfig.from_dict(old) == TVPConfig.preset("small")


def test_train_config_checks_its_values():
    assert TrainConfig(output_dir="run").adam_betas == (0.9, 0.999)
    with pytest.raises(ConfigError, match="batch_size=0; expected >= 1"):
        TrainConfig(output_dir="run", batch_size=0)
    with pytest.raises(ConfigError, match="missing key 'output_dir' for TrainConfig"):
        TrainConfig.from_dict({"max_steps": 3})

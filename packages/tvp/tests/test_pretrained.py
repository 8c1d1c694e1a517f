import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from vpp.tvp.config import preset
from vpp.tvp.features import predictive_features
from vpp.tvp.model import TextGuidedVideoPredictor
from vpp.tvp.text import byte_tokenizer


def test_loads_a_diffusers_svd_folder_and_a_clip_folder(tmp_path):
    config = preset("tiny")
    torch.manual_seed(1)
    unet = UNetSpatioTemporalConditionModel(**config.unet)
    vae = AutoencoderKLTemporalDecoder(**config.vae)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder))
    unet.save_pretrained(tmp_path / "svd" / "unet")
    vae.save_pretrained(tmp_path / "svd" / "vae")
    text.save_pretrained(tmp_path / "clip" / "text_encoder")
    byte_tokenizer().save_pretrained(str(tmp_path / "clip" / "tokenizer"))
    assert list((tmp_path / "svd" / "unet").glob("*.safetensors"))

    model = TextGuidedVideoPredictor.from_svd(tmp_path / "svd", tmp_path / "clip", image_size=32, num_frames=8)
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    assert model.config.cross_attention_dim == 32
    ids = model.tokenize(["pick up the cup"])
    assert torch.equal(model.text_encoder(input_ids=ids).last_hidden_state, text(input_ids=ids).last_hidden_state)


def test_save_and_load_give_identical_features(tmp_path, tiny_model):
    tiny_model.config.features.blocks = (0, 1)
    tiny_model.save_pretrained(tmp_path / "tvp")
    loaded = TextGuidedVideoPredictor.from_pretrained(tmp_path / "tvp").eval()
    assert loaded.config == tiny_model.config
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    a = predictive_features(tiny_model, images, ["open the drawer"], generator=torch.Generator().manual_seed(0))
    b = predictive_features(loaded, images, ["open the drawer"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_missing_svd_folder_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="not a diffusers SVD folder"):
        TextGuidedVideoPredictor.from_svd(tmp_path, tmp_path)

import json
import logging

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from vpp.tvp.cli import main
from vpp.tvp.config import CONFIG_NAME, ConfigError, TVPConfig
from vpp.tvp.features import predictive_features
from vpp.tvp.model import TextGuidedVideoPredictor, convert_legacy_tvp
from vpp.tvp.text import byte_tokenizer


def save_svd_and_clip(root, variant=None):
    """Tiny diffusers SVD and CLIP folders as save_pretrained writes them; with ``variant="fp16"``
    the SVD folder holds only half-precision weight files, as released SVD folders can."""
    config = TVPConfig.preset("tiny")
    torch.manual_seed(1)
    unet = UNetSpatioTemporalConditionModel(**config.unet)
    vae = AutoencoderKLTemporalDecoder(**config.vae)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder))
    if variant is not None:
        unet, vae = unet.half(), vae.half()
    unet.save_pretrained(root / "svd" / "unet", variant=variant)
    vae.save_pretrained(root / "svd" / "vae", variant=variant)
    text.save_pretrained(root / "clip" / "text_encoder")
    byte_tokenizer().save_pretrained(str(root / "clip" / "tokenizer"))
    return unet, vae, text


def test_loads_a_diffusers_svd_folder_and_a_clip_folder_and_saves_it_as_a_tvp(tmp_path):
    unet, vae, text = save_svd_and_clip(tmp_path)
    assert list((tmp_path / "svd" / "unet").glob("*.safetensors"))

    model = TextGuidedVideoPredictor.from_svd(
        tmp_path / "svd", tmp_path / "clip", image_size=32, num_frames=8
    )
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    assert model.config.cross_attention_dim == 32
    ids = model.tokenize(["pick up the cup"])
    assert torch.equal(
        model.text_encoder(input_ids=ids).last_hidden_state, text(input_ids=ids).last_hidden_state
    )

    model.save_pretrained(tmp_path / "tvp")
    assert sorted(p.name for p in (tmp_path / "tvp").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer",
    ]
    assert "_name_or_path" not in json.loads((tmp_path / "tvp" / "config.json").read_text())["unet"]
    loaded = TextGuidedVideoPredictor.from_pretrained(tmp_path / "tvp")
    assert loaded.config == model.config
    for name, tensor in vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[name], tensor), name


def test_the_fp16_variant_loads_as_float32(tmp_path):
    unet, _, _ = save_svd_and_clip(tmp_path, variant="fp16")
    model = TextGuidedVideoPredictor.from_svd(
        tmp_path / "svd", tmp_path / "clip", image_size=32, num_frames=8, variant="fp16"
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor.float()), name
    with pytest.raises(FileNotFoundError, match="variant 'bf16'"):
        TextGuidedVideoPredictor.from_svd(tmp_path / "svd", tmp_path / "clip", variant="bf16")


def test_svd_sizes_are_checked_against_the_vae_and_unet(tmp_path):
    save_svd_and_clip(tmp_path)
    model = TextGuidedVideoPredictor.from_svd(
        tmp_path / "svd", tmp_path / "clip", image_size=64, num_frames=4
    )
    assert (model.config.image_size, model.config.num_frames, model.config.latent_size) == (64, 4, 32)
    with pytest.raises(ConfigError, match="not divisible by the VAE"):
        TextGuidedVideoPredictor.from_svd(tmp_path / "svd", tmp_path / "clip", image_size=33)
    # 34 px: 17x17 latents, which the tiny UNet's one downsampling cannot halve
    with pytest.raises(ConfigError, match="cannot halve"):
        TextGuidedVideoPredictor.from_svd(tmp_path / "svd", tmp_path / "clip", image_size=34)


def test_the_cli_trains_from_svd_and_clip_folders(tmp_path):
    unet, vae, _ = save_svd_and_clip(tmp_path, variant="fp16")
    svd, clip, out = str(tmp_path / "svd"), str(tmp_path / "clip"), tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no-clip")):
        main(["train", "--svd", svd, "--clip", str(tmp_path / "no-clip"), "--output", str(out)])
    with pytest.raises(SystemExit, match="--preset small and --svd exclude each other"):
        main(["train", "--svd", svd, "--clip", clip, "--preset", "small", "--output", str(out)])
    main(
        [
            "train",
            "--svd",
            svd,
            "--clip",
            clip,
            "--variant",
            "fp16",
            "--image-size",
            "32",
            "--num-frames",
            "4",
            "--data",
            "builtin:squares",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--checkpoint-every",
            "1",
            "--output",
            str(out),
        ]
    )
    config = TVPConfig.load(out / "model" / CONFIG_NAME)
    assert config == TVPConfig.load(out / "base" / CONFIG_NAME)
    assert (config.image_size, config.num_frames, config.tokenizer) == (32, 4, clip)
    trained = TextGuidedVideoPredictor.from_pretrained(out / "model")
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    for name, tensor in vae.state_dict().items():
        assert torch.equal(trained.vae.state_dict()[name], tensor.float()), name
    trained_unet = load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(trained_unet[f"unet.{k}"], v.float()) for k, v in unet.state_dict().items())


def test_save_and_load_give_identical_features(tmp_path, tiny_model):
    tiny_model.config.features.blocks = (0, 1)
    tiny_model.save_pretrained(tmp_path / "tvp")
    loaded = TextGuidedVideoPredictor.from_pretrained(tmp_path / "tvp").eval()
    assert loaded.config == tiny_model.config
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    a = predictive_features(
        tiny_model, images, ["open the drawer"], generator=torch.Generator().manual_seed(0)
    )
    b = predictive_features(loaded, images, ["open the drawer"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_missing_svd_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers SVD folder"):
        TextGuidedVideoPredictor.from_svd(tmp_path, tmp_path)


def write_old_layout(model, folder):
    """The folder save_pretrained wrote before config.json + model.safetensors."""
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoder.save_pretrained(folder / "text_encoder")
    model.tokenizer.save_pretrained(str(folder / "tokenizer"))
    save_file(model.text_projection.state_dict(), folder / "text_projection.safetensors")
    old = {**model.config.to_dict(), "preset": model.config.preset_name}
    del old["preset_name"]
    (folder / "tvp_config.json").write_text(json.dumps(old))


def test_an_old_layout_folder_still_loads_and_converts(tmp_path, caplog):
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset("tiny", text_to_unet="linear")
    write_old_layout(model, tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        old = TextGuidedVideoPredictor.from_pretrained(tmp_path / "old")
    assert f"vpp-tvp convert {tmp_path / 'old'} NEW" in caplog.text
    main(["convert", str(tmp_path / "old"), str(tmp_path / "new")])
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors"]
    new = TextGuidedVideoPredictor.from_pretrained(tmp_path / "new")
    expected = model.state_dict()
    for loaded in (old, new):
        assert loaded.config == model.config
        state = loaded.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
        assert not any(p.requires_grad for p in [*loaded.vae.parameters(), *loaded.text_encoder.parameters()])
    assert new.text_projection is not None and all(p.requires_grad for p in new.unet.parameters())
    with pytest.raises(FileNotFoundError, match="not a TVP folder in the old layout"):
        convert_legacy_tvp(tmp_path / "new", tmp_path / "again")
    with pytest.raises(FileNotFoundError, match="not a saved TextGuidedVideoPredictor"):
        TextGuidedVideoPredictor.from_pretrained(tmp_path / "nothing")


def test_loading_leaves_the_global_rng_alone_and_keeps_the_dtype_asked_for(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "tvp")
    torch.manual_seed(3)
    loaded = TextGuidedVideoPredictor.from_pretrained(tmp_path / "tvp", torch_dtype=torch.float16)
    after_load = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after_load, torch.rand(1))
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vpp.policy.cli import main as policy_cli
from vpp.policy.config import ConfigError
from vpp.policy.data import ArrayEpisodeSource, PolicyWindowDataset
from vpp.policy.feature_cache import FeatureCache
from vpp.policy.policy import ObservationError, VideoPredictionPolicy, VPPConfig, convert_legacy_policy
from vpp.policy.train import PolicyTrainConfig, PolicyTrainer, lr_multiplier


def episodes(count=2, length=10, seed=0):
    """Each instruction has its own, consistent action pattern, so the mapping is learnable."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pattern = np.array([[0.8, -0.5, 0.3, 1.0], [-0.6, 0.7, -0.2, -1.0]][i % 2], dtype=np.float32)
        ramp = np.linspace(0.5, 1.0, length, dtype=np.float32)[:, None]
        out.append(
            {
                "frames": {"corner": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8)},
                "actions": pattern * ramp,
                "state": rng.normal(size=(length, 4)).astype(np.float32),
                "instruction": ["open the drawer", "close the window"][i % 2],
            }
        )
    return out


def make_policy(tvp, windows, **config):
    cfg = VPPConfig(cameras=["corner"], action_dim=4, chunk=4, state_dim=4, **config)
    return VideoPredictionPolicy.build(
        tvp, cfg, windows.all_actions(), windows.all_states(), head_preset="tiny"
    )


def test_save_load_round_trip_gives_identical_actions(tmp_path, tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = make_policy(tvp, windows).eval()
    policy.save_pretrained(tmp_path / "policy")
    loaded = VideoPredictionPolicy.from_pretrained(tmp_path / "policy").eval()
    obs = {"corner": episodes()[0]["frames"]["corner"][0], "state": np.zeros(4, np.float32)}
    a = policy.predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    b = loaded.predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    again = policy.predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    assert a.shape == (4, 4)
    # oneDNN may pick other kernels for freshly allocated weights: equal up to float32 rounding
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, again, rtol=0, atol=1e-6)
    other = policy.predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(6))
    assert np.abs(a - other).max() > 1e-3
    # one config JSON + one weights file; the bounds travel in the config
    assert sorted(p.name for p in (tmp_path / "policy").iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert saved["policy"]["encoder"] == "tvp" and saved["tvp"]["preset_name"] == "tiny"
    assert saved["action_normalizer"] == policy.action_normalizer.to_dict()
    assert (
        loaded.action_normalizer == policy.action_normalizer
        and loaded.state_normalizer == policy.state_normalizer
    )
    # the frozen TVP stays frozen, the head trains
    assert not any(p.requires_grad for p in loaded.tvp.parameters())
    assert all(p.requires_grad for p in loaded.head.parameters())
    # loading draws nothing from the global RNG
    torch.manual_seed(7)
    VideoPredictionPolicy.from_pretrained(tmp_path / "policy")
    after_load = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(after_load, torch.rand(1))


def write_old_layout(policy: VideoPredictionPolicy, folder: Path) -> None:
    """The five-JSON folder save_pretrained wrote before config.json + model.safetensors."""
    tvp = policy.tvp
    tvp.unet.save_pretrained(folder / "tvp" / "unet")
    tvp.vae.save_pretrained(folder / "tvp" / "vae")
    tvp.text_encoder.save_pretrained(folder / "tvp" / "text_encoder")
    tvp.tokenizer.save_pretrained(str(folder / "tvp" / "tokenizer"))
    old_tvp = {**tvp.config.to_dict(), "preset": tvp.config.preset_name}
    del old_tvp["preset_name"]
    (folder / "tvp" / "tvp_config.json").write_text(json.dumps(old_tvp))
    (folder / "vpp_policy.json").write_text(json.dumps(policy.config.to_dict()))
    head = {**policy.head.config.to_dict(), "preset": policy.head.config.preset_name}
    del head["preset_name"]
    (folder / "policy_head.json").write_text(json.dumps(head))
    save_file({k: v.contiguous() for k, v in policy.head.state_dict().items()}, folder / "head.safetensors")
    policy.action_normalizer.save(folder / "action_normalizer.json")
    policy.state_normalizer.save(folder / "state_normalizer.json")


def test_an_old_five_file_folder_still_loads_and_converts(tmp_path, tvp, caplog):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = make_policy(tvp, windows, standardize_features=True).eval()
    policy.head.set_feature_statistics(
        torch.rand(policy.head.config.feature_shape) - 0.5, torch.rand(policy.head.config.feature_shape) + 0.5
    )
    write_old_layout(policy, tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        old = VideoPredictionPolicy.from_pretrained(tmp_path / "old")
    assert f"vpp-policy convert {tmp_path / 'old'} NEW" in caplog.text
    policy_cli(["convert", str(tmp_path / "old"), str(tmp_path / "new")])
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors"]
    new = VideoPredictionPolicy.from_pretrained(tmp_path / "new")
    expected = policy.state_dict()
    for loaded in (old, new):
        assert loaded.config == policy.config and loaded.head.config == policy.head.config
        assert loaded.tvp.config == policy.tvp.config
        assert (
            loaded.action_normalizer == policy.action_normalizer
            and loaded.state_normalizer == policy.state_normalizer
        )
        state = loaded.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    with pytest.raises(FileNotFoundError, match="not a policy folder in the old layout"):
        convert_legacy_policy(tmp_path / "new", tmp_path / "again")
    with pytest.raises(FileNotFoundError, match="not a saved VideoPredictionPolicy"):
        VideoPredictionPolicy.from_pretrained(tmp_path / "nothing")


def test_a_saved_policy_config_is_checked_on_load(tmp_path, tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    make_policy(tvp, windows).save_pretrained(tmp_path / "policy")
    path = tmp_path / "policy" / "config.json"
    saved = json.loads(path.read_text())
    for change, message in (
        ({"policy": {**saved["policy"], "cameras": "corner"}}, "VPPConfig.cameras='corner'; expected a list"),
        (
            {"head": {**saved["head"], "dit": {**saved["head"]["dit"], "rope": True}}},
            "unknown key 'rope' for DiTHeadConfig",
        ),
        ({"state_normalizer": None}, "state_normalizer absent"),
        ({"format_version": 3}, "format_version=3; expected 2"),
    ):
        path.write_text(json.dumps({**saved, **change}))
        with pytest.raises(ConfigError, match=message):
            VideoPredictionPolicy.from_pretrained(tmp_path / "policy")


def test_bad_observations_are_refused(tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = make_policy(tvp, windows).eval()
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ObservationError, match="no camera 'corner'"):
        policy.act({"wrist": image, "state": np.zeros(4)}, "x")
    with pytest.raises(ObservationError, match="expected \\(H, W, 3\\) uint8"):
        policy.act({"corner": image.astype(np.float32), "state": np.zeros(4)}, "x")
    with pytest.raises(ObservationError, match="4 finite values"):
        policy.act({"corner": image, "state": np.array([0, np.nan, 0, 0])}, "x")


def test_policy_train_config_checks_the_loop_and_its_optimiser():
    assert (
        PolicyTrainConfig(output_dir="run").max_steps == 10000
    )  # the loop's default, changed for the policy
    with pytest.raises(ConfigError, match="batch_size=0; expected >= 1"):
        PolicyTrainConfig(output_dir="run", batch_size=0)
    with pytest.raises(ConfigError, match=r"hold_fraction=0\.9; expected both >= 0 with a sum of at most 1"):
        PolicyTrainConfig(output_dir="run", warmup_fraction=0.2, hold_fraction=0.9)
    with pytest.raises(ConfigError, match=r"ema_decay=1\.0; expected in \[0, 1\)"):
        PolicyTrainConfig(output_dir="run", ema_decay=1.0)


def test_tristage_schedule():
    cfg = PolicyTrainConfig(output_dir="x", max_steps=1000, learning_rate=1e-4)
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(20, cfg) == pytest.approx(1.0)
    assert lr_multiplier(99, cfg) == pytest.approx(1.0)
    assert lr_multiplier(550, cfg) == pytest.approx(0.5, abs=0.01)
    assert lr_multiplier(1000, cfg) == pytest.approx(1e-6)


@pytest.mark.slow
def test_tiny_policy_overfits_and_resumes(tmp_path, tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    assert cache.build(windows, tvp, progress=False) == 2
    assert cache.build(windows, tvp, progress=False) == 0
    # annealed: at a constant 2e-3 (AdamW betas 0.9/0.9) the loss spikes now and then, and whether
    # a spike falls inside the last EMA window decided the result
    config = PolicyTrainConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=600,
        batch_size=8,
        learning_rate=2e-3,
        lr_schedule="cosine",
        ema_decay=0.99,
        checkpoint_every=300,
        log_every=50,
    )
    torch.manual_seed(0)
    trainer = PolicyTrainer(make_policy(tvp, windows, feature_noise="fixed"), windows, config, cache)
    trainer.train(stop_after=300)
    resumed = PolicyTrainer(make_policy(tvp, windows, feature_noise="fixed"), windows, config, cache)
    assert resumed.start_step == 300
    resumed.train()

    def action_mse(folder):
        policy = VideoPredictionPolicy.from_pretrained(folder).eval()
        errors = []
        for e, episode in enumerate(windows.episodes):
            for t in (0, 3, 6):
                obs = {"corner": episodes()[e]["frames"]["corner"][t], "state": episode.state[t]}
                predicted = policy.predict_action_chunk(
                    obs, episode.instruction, torch.Generator().manual_seed(t)
                )
                errors.append(np.mean((predicted - episode.actions[t : t + 4]) ** 2))
        return float(np.mean(errors))

    untrained, trained = action_mse(tmp_path / "run" / "base"), action_mse(tmp_path / "run" / "model")
    # actions span [-1, 1]: the untrained head is off by ~0.3-0.5
    assert trained < 0.05 and trained < untrained / 10, (untrained, trained)


def test_feature_cache_of_every_kth_window_reads_each_kept_window(tmp_path, tvp):
    from vpp.policy.cli import keep_every_kth_window

    full = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    strided = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    keep_every_kth_window(strided, 3)
    assert [t for e, t in strided.windows if e == 0] == [0, 3, 6]
    full_cache = FeatureCache(tmp_path / "full", tvp, ["corner"], seed=0)
    strided_cache = FeatureCache(tmp_path / "strided", tvp, ["corner"], seed=0)
    full_cache.build(full, tvp, progress=False)
    strided_cache.build(strided, tvp, progress=False)
    for index, (e, t) in enumerate(strided.windows):
        # the noise is seeded by (seed, episode, t), so a kept window's features do not depend on the
        # others (up to float16 rounding of differently batched forwards)
        expected = full_cache.read(strided.episodes[e], t)
        torch.testing.assert_close(strided_cache.features_for(strided, index), expected, atol=2e-3, rtol=1e-2)
    with pytest.raises(KeyError, match="timestep 1"):
        strided_cache.read(strided.episodes[0], 1)
    with pytest.raises(ValueError, match="--window-stride 0"):
        keep_every_kth_window(strided, 0)


def test_feature_cache_skips_episodes_without_kept_windows(tmp_path, tvp):
    from vpp.policy.cli import keep_first_episodes_per_task

    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes(count=4))], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    keep_first_episodes_per_task(windows, 1)
    assert sorted({e for e, _ in windows.windows}) == [
        0,
        1,
    ]  # the first episode of each of the two instructions
    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    assert cache.build(windows, tvp, progress=False) == 2
    with pytest.raises(ValueError, match="--episodes-per-task 0"):
        keep_first_episodes_per_task(windows, 0)


def test_language_embeddings_are_encoded_once_per_instruction(tvp, monkeypatch):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = make_policy(tvp, windows)
    texts = ["open the drawer", "close the window", "open the drawer"]
    expected = tvp.encode_text(texts)[1]
    calls = []
    encode = tvp.encode_text
    monkeypatch.setattr(tvp, "encode_text", lambda batch: calls.append(list(batch)) or encode(batch))
    torch.testing.assert_close(policy.language(texts), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(policy.language(texts[::-1]), expected.flip(0), rtol=0, atol=1e-6)
    assert calls == [["open the drawer", "close the window"]]


def test_vae_feature_cache_holds_the_latents_the_vae_policy_encodes(tmp_path, tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = make_policy(tvp, windows, encoder="vae")
    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0, encoder="vae")
    assert cache.build(windows, tvp, progress=False) == 2
    tvp_cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    assert cache.folder != tvp_cache.folder  # one root holds both encoders' caches apart
    assert json.loads((cache.folder / "cache.json").read_text())["encoder"] == "vae"
    for index in (0, len(windows) - 1):
        item = windows[index]
        features, _ = policy.encode(item["images"][None], [item["instruction"]])
        cached = cache.features_for(windows, index)
        assert (
            cached.shape
            == features.shape[1:]
            == (1, 1, tvp.config.latent_channels, tvp.config.latent_size, tvp.config.latent_size)
        )
        torch.testing.assert_close(cached, features[0], atol=2e-3, rtol=1e-2)
    # a training batch from the cache gives the loss of one encoded from the images
    batch = {key: value for key, value in windows[0].items() if key != "images"}
    batch = {
        "features": cache.features_for(windows, 0)[None],
        "instruction": [batch["instruction"]],
        "actions": batch["actions"][None],
        "state": batch["state"][None],
    }
    with_images = {
        "images": windows[0]["images"][None],
        **{k: v for k, v in batch.items() if k != "features"},
    }
    torch.testing.assert_close(
        policy(batch, torch.Generator().manual_seed(1)),
        policy(with_images, torch.Generator().manual_seed(1)),
        atol=1e-3,
        rtol=1e-3,
    )
    with pytest.raises(ValueError, match="encoder 'clip'"):
        FeatureCache(tmp_path / "features", tvp, ["corner"], encoder="clip")


def test_feature_standardization_uses_the_training_features_and_is_saved(tmp_path, tvp):
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes(count=4))], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    cache.build(windows, tvp, progress=False)
    policy = make_policy(
        tvp, windows, feature_noise="fixed", standardize_features=True, feature_spread_floor=0.1
    )
    head = policy.head
    assert head.config.feature_shape == [
        1,
        tvp.config.num_frames,
        tvp.config.feature_channels,
        tvp.config.feature_size,
        tvp.config.feature_size,
    ]
    assert policy.fit_feature_statistics(windows, cache, progress=False) == len(windows)

    features = torch.stack([cache.features_for(windows, i) for i in range(len(windows))]).double()
    mean, std = features.mean(0), features.std(0, correction=0)
    floor = 0.1 * float(std.median())
    torch.testing.assert_close(head.feature_mean.double(), mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.feature_inv_std.double(), 1 / std.clamp_min(floor), atol=1e-4, rtol=1e-4)
    standardized = head.standardize(features.float()).double()
    moving = std > floor
    assert moving.float().mean() > 0.5
    assert standardized.mean(0)[moving].abs().max() < 1e-3
    torch.testing.assert_close(
        standardized.std(0, correction=0)[moving], torch.ones_like(std[moving]), atol=1e-3, rtol=1e-3
    )

    # the cache holds the fixed-noise features the policy computes itself: the same statistics
    direct = make_policy(
        tvp, windows, feature_noise="fixed", standardize_features=True, feature_spread_floor=0.1
    )
    direct.fit_feature_statistics(windows, None, batch_size=3, progress=False)
    torch.testing.assert_close(direct.head.feature_mean, head.feature_mean, atol=2e-3, rtol=1e-2)

    # the default floor: no element is amplified beyond the median element (robust to small errors)
    robust = make_policy(tvp, windows, feature_noise="fixed", standardize_features=True)
    assert robust.config.feature_spread_floor == 1.0
    robust.fit_feature_statistics(windows, cache, progress=False)
    median = float(std.median())
    torch.testing.assert_close(
        robust.head.feature_inv_std.double(), 1 / std.clamp_min(median), atol=1e-4, rtol=1e-4
    )
    assert float(robust.head.feature_inv_std.max()) <= 1 / median * (1 + 1e-4)
    with pytest.raises(ConfigError, match="feature_spread_floor=0"):
        make_policy(tvp, windows, standardize_features=True, feature_spread_floor=0.0)

    # the head reads standardised features: the same weights without standardisation, given them
    # already standardised, build the same condition tokens
    from vpp.policy.config import PolicyHeadConfig
    from vpp.policy.policy_head import PolicyHead

    plain = PolicyHead(PolicyHeadConfig.from_dict({**head.config.to_dict(), "feature_shape": None})).eval()
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("feature_")})
    lang = torch.randn(2, head.config.lang_dim)
    state = torch.randn(2, 4)
    torch.testing.assert_close(
        head.eval().condition_tokens(features[:2].float(), lang, state),
        plain.condition_tokens(standardized[:2].float(), lang, state),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="without feature_shape"):
        plain.set_feature_statistics(mean.float(), std.float())

    policy.save_pretrained(tmp_path / "policy")
    loaded = VideoPredictionPolicy.from_pretrained(tmp_path / "policy")
    assert loaded.config.standardize_features and loaded.config.feature_spread_floor == 0.1
    # a config saved before the floor was a field loads as what it was trained with
    saved = policy.config.to_dict()
    del saved["feature_spread_floor"]
    assert VPPConfig.from_dict(saved).feature_spread_floor == 0.1
    torch.testing.assert_close(loaded.head.feature_inv_std, head.feature_inv_std, atol=0, rtol=0)
    obs = {"corner": episodes()[0]["frames"]["corner"][0], "state": np.zeros(4, np.float32)}
    a = policy.eval().predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    b = loaded.eval().predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="standardize_features=False"):
        make_policy(tvp, windows).fit_feature_statistics(windows, cache, progress=False)


def test_feature_cache_files_follow_the_episode_content_not_only_its_folder_name(tmp_path, tvp):
    # two datasets whose folders share a name ("demos") index their episodes alike: demos/0, demos/1
    first = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes(seed=0), name="demos")], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    second = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes(seed=1), name="demos")], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    assert [e.key for e in first.episodes] == [e.key for e in second.episodes]
    cache = FeatureCache(tmp_path / "features", tvp, ["corner"], seed=0)
    assert cache.build(first, tvp, progress=False) == 2
    # the second dataset's episodes are not taken for the first's: they are computed
    assert cache.build(second, tvp, progress=False) == 2
    assert cache.build(second, tvp, progress=False) == 0
    for index in (0, len(second) - 1):
        item = second[index]
        features = predictive_features_of(tvp, item)
        torch.testing.assert_close(cache.features_for(second, index), features, atol=2e-3, rtol=1e-2)
        assert not torch.allclose(cache.features_for(first, index), features, atol=1e-2)


def predictive_features_of(tvp, item):
    from vpp.tvp.features import fixed_noise, predictive_features

    noise = fixed_noise(tvp, 1, 0)[None]
    return predictive_features(tvp, item["images"][None], [item["instruction"]], noise=noise)[0]


def test_a_bfloat16_policy_with_a_state_acts(tvp):
    """The state reaches the head in the head's dtype (it used to arrive as float32: 'mat1 and mat2
    must have the same dtype'), as it must on a GPU in bf16."""
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes())], ["corner"], chunk=4, image_size=32, state_dim=4
    )
    policy = copy.deepcopy(make_policy(tvp, windows)).eval().to(torch.bfloat16)
    obs = {"corner": episodes()[0]["frames"]["corner"][0], "state": np.full(4, 0.5, np.float32)}
    actions = policy.predict_action_chunk(obs, "open the drawer", torch.Generator().manual_seed(5))
    assert actions.shape == (4, 4) and np.isfinite(np.asarray(actions, dtype=np.float32)).all()

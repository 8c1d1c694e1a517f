import json

import pytest
import torch

from vpp.policy.config import ConfigError, InputShapeError, PolicyHeadConfig
from vpp.policy.policy_head import PolicyHead

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py says why


def batch_for(config: PolicyHeadConfig, batch: int = 2, views: int = 2, size: int = 4, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    vf = config.video_former
    items = {
        "features": torch.randn(
            batch, views, vf.num_frames, vf.input_channels, size, size, generator=generator
        ),
        "lang": torch.randn(batch, config.lang_dim, generator=generator),
        "actions": torch.rand(batch, config.dit.chunk, config.dit.action_dim, generator=generator) * 2 - 1,
    }
    if config.state_dim is not None:
        items["state"] = torch.randn(batch, config.state_dim, generator=generator)
    return items


def tiny_head(seed: int = 0, **preset_args) -> PolicyHead:
    torch.manual_seed(seed)
    return PolicyHead(PolicyHeadConfig.preset("tiny", **preset_args)).eval()


def open_adaln(head: PolicyHead) -> None:
    """Give the zero-initialised AdaLN modulation trained-like weights, so the noise level matters."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in head.dit.decoder_blocks:
            block.modulation[1].weight.copy_(
                torch.randn(block.modulation[1].weight.shape, generator=generator) * 0.3
            )


def sample(head: PolicyHead, items: dict, seed: int = 0) -> torch.Tensor:
    return head.sample(
        items["features"],
        items["lang"],
        state=items.get("state"),
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("state_dim", [None, 5])
def test_loss_and_sample_shapes(preset, state_dim):
    config = PolicyHeadConfig.preset(preset, state_dim=state_dim)
    torch.manual_seed(0)
    head = PolicyHead(config).eval()
    items = batch_for(config)
    assert head.condition_tokens(items["features"], items["lang"], items.get("state")).shape == (
        2,
        config.num_condition_tokens,
        config.dit.dim,
    )
    loss = head.loss(
        items["features"],
        items["lang"],
        items["actions"],
        state=items.get("state"),
        generator=torch.Generator().manual_seed(0),
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert sample(head, items).shape == (2, 10, 7)


def test_metaworld_sized_head():
    config = PolicyHeadConfig.preset(
        "small", dit={"action_dim": 4, "chunk": 4}, video_former={"queries_per_frame": 28}
    )
    head = PolicyHead(config).eval()
    items = batch_for(config)
    assert sample(head, items).shape == (2, 4, 4)
    assert head.video_former(items["features"]).shape == (2, 8 * 28, 128)


def test_paper_preset_on_meta_device_shapes_and_parameter_counts():
    official = PolicyHeadConfig.preset("paper", video_former={"input_channels": 2560})
    with torch.device("meta"):
        head = PolicyHead(official)
        features = torch.empty(2, 2, 16, 2560, 16, 16)
        lang = torch.empty(2, 512)
        tokens = head.condition_tokens(features, lang)
        loss = head.loss(features, lang, torch.empty(2, 10, 7))
        out = head.dit(tokens, torch.empty(2, 10, 7), torch.empty(2))
    assert tokens.shape == (2, 1 + 224, 384) and loss.shape == () and out.shape == (2, 10, 7)
    counts = head.parameter_counts()
    # Hand count of the official architecture: Video Former 17.72M (2560 -> 768 -> 384 input MLP 2.26M,
    # 6 layers x 2.56M, queries 86k), DiT 20.68M (4 encoder blocks x 1.77M, 4 AdaLN decoder blocks
    # x 3.25M, noise MLP 0.59M), language MLP + token projection 0.84M.
    assert 17.0e6 < counts["video_former"] < 18.5e6
    assert 20.0e6 < counts["dit"] < 21.5e6
    assert 0.8e6 < counts["condition_embeddings"] < 0.9e6
    assert counts["total"] == counts["video_former"] + counts["dit"] + counts["condition_embeddings"]
    with torch.device("meta"):
        aggregated = PolicyHead(PolicyHeadConfig.preset("paper"))
    # The paper preset's default 3520 input channels (all four up-blocks) only widen the input MLP.
    assert aggregated.parameter_counts()["video_former"] - counts["video_former"] == (3520 - 2560) * 768


def test_sampling_is_deterministic_per_seed():
    head = tiny_head()
    open_adaln(head)
    items = batch_for(head.config)
    first, again, other = sample(head, items, 3), sample(head, items, 3), sample(head, items, 4)
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 1e-3


def test_every_view_changes_the_sampled_actions():
    head = tiny_head()
    items = batch_for(head.config, views=2)
    base = sample(head, items)
    for view in range(2):
        changed = dict(items, features=items["features"].clone())
        changed["features"][:, view] += torch.randn_like(changed["features"][:, view])
        assert (sample(head, changed) - base).abs().max().item() > 1e-4, f"view {view} is ignored"


def test_language_changes_the_sampled_actions():
    head = tiny_head()
    items = batch_for(head.config)
    changed = dict(items, lang=items["lang"] + 1.0)
    assert (sample(head, changed) - sample(head, items)).abs().max().item() > 1e-4


def test_proprioception_is_used_when_enabled_and_checked():
    head = tiny_head(state_dim=6)
    items = batch_for(head.config)
    changed = dict(items, state=items["state"] + 1.0)
    assert (sample(head, changed) - sample(head, items)).abs().max().item() > 1e-4
    with pytest.raises(InputShapeError, match=r"state has shape None; expected \(2, 6\)"):
        head.sample(items["features"], items["lang"])
    with pytest.raises(InputShapeError, match=r"state has shape \(2, 5\); expected \(2, 6\)"):
        head.sample(items["features"], items["lang"], state=torch.zeros(2, 5))
    without = tiny_head()
    with pytest.raises(InputShapeError, match="state_dim=None"):
        without.sample(items["features"], items["lang"], state=items["state"])


def test_language_and_actions_of_the_wrong_shape_are_rejected():
    head = tiny_head()
    items = batch_for(head.config)
    with pytest.raises(InputShapeError, match=r"lang has shape \(2, 512\); expected \(2, 32\)"):
        head.loss(items["features"], torch.zeros(2, 512), items["actions"])
    with pytest.raises(InputShapeError, match=r"actions have shape \(2, 10, 4\); expected \(2, 10, 7\)"):
        head.loss(items["features"], items["lang"], torch.zeros(2, 10, 4))


def test_eval_sigma_min_override_changes_the_schedule_and_result():
    head = tiny_head()
    open_adaln(head)
    items = batch_for(head.config)
    default = sample(head, items)
    generator = torch.Generator().manual_seed(0)
    official = head.sample(items["features"], items["lang"], generator=generator, sigma_min=1.0)
    assert (official - default).abs().max().item() > 1e-4


def test_tiny_head_overfits_a_fixed_set():
    """Bound: after 400 AdamW steps (lr 3e-3, batch 4) the sampled chunks (10 DDIM steps) of 4 fixed
    training examples have MSE < 0.05 to their targets, which are uniform in [-1, 1] (MSE ~0.33 for
    a constant-zero guess). Measured: ~0.015-0.019 over four seeds, ~2 s on 2 cores."""
    head = tiny_head()
    items = batch_for(head.config, batch=4)
    before = ((sample(head, items) - items["actions"]) ** 2).mean().item()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    noise = torch.Generator().manual_seed(1)
    head.train()
    for _ in range(400):
        loss = head.loss(items["features"], items["lang"], items["actions"], generator=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    after = ((sample(head, items, seed=2) - items["actions"]) ** 2).mean().item()
    assert before > 0.2
    assert after < 0.05, f"MSE {after:.4f} after training (before: {before:.4f})"


def test_config_json_round_trip_and_errors(tmp_path):
    config = PolicyHeadConfig.preset("small", dit={"action_dim": 4, "chunk": 4}, state_dim=3)
    config.dit.decoder_causal_cross_attention = True
    config.diffusion.eval_sigma_min = 1.0
    path = config.save(tmp_path / "policy_head.json")
    loaded = PolicyHeadConfig.load(path)
    assert loaded == config and loaded.preset_name == "small"
    data = json.loads(path.read_text())
    data["dit"]["heads"] = 3
    with pytest.raises(ConfigError, match=r"dit\.dim=128 is not divisible by heads=3"):
        PolicyHeadConfig.from_dict(data)
    data["dit"]["heads"] = 4
    data["dit"]["rope"] = True
    with pytest.raises(ConfigError, match="unknown key 'rope' for DiTHeadConfig"):
        PolicyHeadConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown preset 'huge' for PolicyHeadConfig"):
        PolicyHeadConfig.preset("huge")
    with pytest.raises(ConfigError, match=r"video_former.dim=32 != dit.dim=384"):
        PolicyHeadConfig(video_former=PolicyHeadConfig.preset("tiny").video_former)
    # files written before the record field was renamed still load
    del data["dit"]["rope"]
    data["preset"] = data.pop("preset_name")
    assert PolicyHeadConfig.from_dict(data).preset_name == "small"
    with pytest.raises(FileNotFoundError):
        PolicyHeadConfig.load(tmp_path / "missing")


def test_presets_default_to_the_papers_reading():
    assert PolicyHeadConfig.preset_names() == ("tiny", "small", "paper")
    for name in PolicyHeadConfig.preset_names():
        config = PolicyHeadConfig.preset(name)
        assert not config.dit.decoder_causal_cross_attention and not config.dit.decoder_causal_self_attention
        assert config.diffusion.eval_sigma_min == config.diffusion.sigma_min == 0.001
        assert (
            config.diffusion.num_steps == 10
            and config.diffusion.sigma_max == 80.0
            and config.diffusion.sigma_data == 0.5
        )


def test_every_parameter_learns_within_a_few_steps():
    # AdaLN-Zero closes the decoder's modulated branches at first; one step opens them, so after
    # three steps a parameter that still has not moved is cut off from the loss.
    torch.manual_seed(0)
    head = PolicyHead(PolicyHeadConfig.preset("tiny", state_dim=3)).train()
    items = batch_for(head.config)
    initial = {name: p.detach().clone() for name, p in head.named_parameters()}
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    noise = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = head.loss(
            items["features"], items["lang"], items["actions"], state=items["state"], generator=noise
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    frozen = [name for name, p in head.named_parameters() if torch.equal(p, initial[name])]
    assert not frozen


def test_state_dropout_replaces_whole_state_tokens_in_training_only():
    torch.manual_seed(0)
    head = PolicyHead(PolicyHeadConfig.preset("tiny", state_dim=3, state_dropout=0.4)).train()
    items = batch_for(head.config, batch=500, views=1, size=2)
    tokens = head.condition_tokens(
        items["features"], items["lang"], items["state"], torch.Generator().manual_seed(1)
    )
    state_tokens = tokens[:, -1]
    is_null = (state_tokens == head.null_state).all(dim=1)
    assert 0.33 < is_null.float().mean() < 0.47
    # a kept sample's token is its own projected state, untouched
    kept = ~is_null
    torch.testing.assert_close(state_tokens[kept], head.state_projection(items["state"][kept]))
    again = head.condition_tokens(
        items["features"], items["lang"], items["state"], torch.Generator().manual_seed(1)
    )
    assert torch.equal(again, tokens)  # the mask is drawn from the loss's generator
    head.eval()
    evaluated = head.condition_tokens(
        items["features"], items["lang"], items["state"], torch.Generator().manual_seed(1)
    )
    assert not (evaluated[:, -1] == head.null_state).all(dim=1).any()
    # the null token learns
    head.train()
    head.loss(
        items["features"][:8],
        items["lang"][:8],
        items["actions"][:8],
        items["state"][:8],
        torch.Generator().manual_seed(2),
    ).backward()
    assert head.null_state.grad is not None and head.null_state.grad.abs().sum() > 0


def test_state_dropout_is_off_by_default_and_validated():
    assert PolicyHeadConfig.preset("tiny", state_dim=3).state_dropout == 0.0
    assert (
        PolicyHead(PolicyHeadConfig.preset("tiny", state_dim=3)).null_state is None
    )  # saved heads keep their keys
    with pytest.raises(ConfigError, match=r"state_dropout=1\.0"):
        PolicyHeadConfig.preset("tiny", state_dim=3, state_dropout=1.0)
    with pytest.raises(ConfigError, match="no state token to drop"):
        PolicyHeadConfig.preset("tiny", state_dropout=0.5)

import dataclasses

import pytest
import torch

from vpp.policy.config import DiTHeadConfig, InputShapeError, PolicyHeadConfig
from vpp.policy.dit_head import DiTActionHead

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py says why


def tiny_config(**overrides) -> DiTHeadConfig:
    return dataclasses.replace(PolicyHeadConfig.preset("tiny").dit, **overrides)


def randomise_modulation(head: DiTActionHead, seed: int = 0) -> None:
    """AdaLN-Zero starts with closed gates and a faint noise embedding (N(0, 0.02) weights); give
    them trained-like magnitudes, so every path carries a clear signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in (head.noise_embedding.mlp[0], head.noise_embedding.mlp[2]):
            linear.weight.copy_(
                torch.randn(linear.weight.shape, generator=generator) / linear.weight.shape[1] ** 0.5
            )
        for block in head.decoder_blocks:
            linear = block.modulation[1]
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.3)
            linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator) * 0.3)


def make_head(seed: int = 0, **overrides) -> DiTActionHead:
    torch.manual_seed(seed)
    head = DiTActionHead(tiny_config(**overrides)).eval()
    randomise_modulation(head, seed)
    return head


def inputs(head: DiTActionHead, batch: int = 2, tokens: int = 17, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    cfg = head.config
    condition = torch.randn(batch, tokens, cfg.dim, generator=generator)
    actions = torch.randn(batch, cfg.chunk, cfg.action_dim, generator=generator)
    c_noise = torch.randn(batch, generator=generator)
    return condition, actions, c_noise


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("chunk, action_dim", [(10, 7), (4, 4)])
def test_output_shape(preset, chunk, action_dim):
    config = dataclasses.replace(PolicyHeadConfig.preset(preset).dit, chunk=chunk, action_dim=action_dim)
    head = DiTActionHead(config)
    condition = torch.randn(3, 9, config.dim)
    out = head(condition, torch.randn(3, chunk, action_dim), torch.randn(3))
    assert out.shape == (3, chunk, action_dim)


def test_paper_shape_on_meta_device():
    config = PolicyHeadConfig.preset("paper").dit
    assert (config.dim, config.heads, config.encoder_layers, config.decoder_layers) == (384, 8, 4, 4)
    assert (config.attn_dropout, config.resid_dropout, config.mlp_dropout) == (0.3, 0.1, 0.05)
    with torch.device("meta"):
        head = DiTActionHead(config)
        out = head(torch.empty(2, 225, 384), torch.empty(2, 10, 7), torch.empty(2))
    assert out.shape == (2, 10, 7)


def test_encoding_once_and_decoding_twice_equals_forward():
    head = make_head()
    condition, actions, c_noise = inputs(head)
    context = head.encode(condition)
    torch.testing.assert_close(head.decode(context, actions, c_noise), head(condition, actions, c_noise))


def test_noise_level_conditions_the_decoder():
    head = make_head()
    condition, actions, c_noise = inputs(head)
    assert (
        head(condition, actions, c_noise) - head(condition, actions, c_noise + 1.0)
    ).abs().max().item() > 1e-3


def test_adaln_zero_starts_with_closed_gates():
    # Freshly built, the noise level cannot reach the output yet: the gates and scales are zero.
    torch.manual_seed(0)
    head = DiTActionHead(tiny_config()).eval()
    condition, actions, c_noise = inputs(head)
    torch.testing.assert_close(head(condition, actions, c_noise), head(condition, actions, c_noise + 1.0))


def test_action_tokens_know_their_position():
    head = make_head()
    condition, _, c_noise = inputs(head)
    same = torch.ones(2, head.config.chunk, head.config.action_dim)
    out = head(condition, same, c_noise)
    assert (out[:, 0] - out[:, 1]).abs().max().item() > 1e-3


def cross_attention_outputs(
    head: DiTActionHead, context: torch.Tensor, actions: torch.Tensor, c_noise: torch.Tensor
) -> torch.Tensor:
    captured = []
    hook = head.decoder_blocks[0].cross_attention.register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    try:
        head.decode(context, actions, c_noise)
    finally:
        hook.remove()
    return captured[0]


@pytest.mark.parametrize("causal", [True, False])
def test_causal_cross_attention_option_masks_later_context_tokens(causal):
    head = make_head(decoder_causal_cross_attention=causal)
    condition, actions, c_noise = inputs(head, tokens=17)
    context = head.encode(condition)
    base = cross_attention_outputs(head, context, actions, c_noise)
    j = 4
    changed = context.clone()
    changed[:, j] += 5.0 * torch.randn_like(changed[:, j])
    out = cross_attention_outputs(head, changed, actions, c_noise)
    difference = (out - base).abs().amax(dim=(0, 2))
    if causal:
        # Action token i sees context tokens 0..i only (the official is_causal=True behaviour).
        assert torch.all(difference[:j] == 0), difference
        assert torch.all(difference[j:] > 1e-4), difference
    else:
        assert torch.all(difference > 1e-4), difference


def test_fully_causal_decoder_keeps_earlier_action_tokens_blind_to_later_inputs():
    head = make_head(decoder_causal_cross_attention=True, decoder_causal_self_attention=True)
    condition, actions, c_noise = inputs(head)
    context = head.encode(condition)
    base = head.decode(context, actions, c_noise)
    j = 6
    later_actions = actions.clone()
    later_actions[:, j:] += 1.0
    later_context = context.clone()
    later_context[:, j:] += 1.0
    for out in (head.decode(context, later_actions, c_noise), head.decode(later_context, actions, c_noise)):
        torch.testing.assert_close(out[:, :j], base[:, :j])
        assert (out[:, j:] - base[:, j:]).abs().max().item() > 1e-4


def test_default_decoder_self_attention_mixes_the_whole_chunk():
    head = make_head()
    condition, actions, c_noise = inputs(head)
    base = head(condition, actions, c_noise)
    later = actions.clone()
    later[:, -1] += 1.0
    assert (head(condition, later, c_noise)[:, 0] - base[:, 0]).abs().max().item() > 1e-4


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    head = DiTActionHead(tiny_config(attn_dropout=0.3, resid_dropout=0.1, mlp_dropout=0.05))
    randomise_modulation(head)
    condition, actions, c_noise = inputs(head)
    head.train()
    assert not torch.equal(head(condition, actions, c_noise), head(condition, actions, c_noise))
    head.eval()
    assert torch.equal(head(condition, actions, c_noise), head(condition, actions, c_noise))


@pytest.mark.parametrize(
    "condition_shape, actions_shape, c_noise_shape, message",
    [
        ((2, 5, 31), (2, 10, 7), (2,), r"condition tokens have shape \(2, 5, 31\); expected \(B, N, 32\)"),
        ((2, 5, 32), (2, 9, 7), (2,), r"noisy actions have shape \(2, 9, 7\); expected \(2, 10, 7\)"),
        ((2, 5, 32), (2, 10, 7), (2, 1), r"c_noise has shape \(2, 1\); expected \(2,\)"),
    ],
)
def test_wrong_shapes_are_rejected(condition_shape, actions_shape, c_noise_shape, message):
    head = make_head()
    with pytest.raises(InputShapeError, match=message):
        head(torch.zeros(condition_shape), torch.zeros(actions_shape), torch.zeros(c_noise_shape))

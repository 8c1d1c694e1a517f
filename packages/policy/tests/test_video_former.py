import pytest
import torch

from vpp.policy.config import InputShapeError, PolicyHeadConfig, VideoFormerConfig
from vpp.policy.video_former import VideoFormer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py says why


def tiny_former(seed: int = 0) -> tuple[VideoFormer, VideoFormerConfig]:
    torch.manual_seed(seed)
    config = PolicyHeadConfig.preset("tiny").video_former
    return VideoFormer(config).eval(), config


def features_for(
    config: VideoFormerConfig, batch: int = 2, views: int = 2, size: int = 4, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(
        batch, views, config.num_frames, config.input_channels, size, size, generator=generator
    )


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_output_shape(preset):
    config = PolicyHeadConfig.preset(preset).video_former
    former = VideoFormer(config)
    out = former(features_for(config, batch=3, views=2))
    assert out.shape == (3, config.num_frames * config.queries_per_frame, config.dim)
    # Final LayerNorm: every token has zero mean and unit variance over channels.
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, out.shape[1]), atol=1e-5, rtol=0)


def test_paper_shape_on_meta_device():
    config = PolicyHeadConfig.preset("paper").video_former
    with torch.device("meta"):
        former = VideoFormer(config)
        out = former(torch.empty(2, 2, 16, config.input_channels, 16, 16))
    assert out.shape == (2, 224, 384)
    assert (config.num_frames, config.queries_per_frame, config.depth, config.heads, config.head_dim) == (
        16,
        14,
        6,
        8,
        64,
    )


def test_any_number_of_views_and_grid_sizes():
    former, config = tiny_former()
    for views, size in [(1, 4), (3, 2), (2, 5)]:
        assert former(features_for(config, views=views, size=size)).shape == (2, 16, 32)


def test_every_view_is_read():
    former, config = tiny_former()
    features = features_for(config, views=3)
    base = former(features)
    for view in range(3):
        changed = features.clone()
        changed[:, view] += torch.randn_like(changed[:, view])
        assert (former(changed) - base).abs().max().item() > 1e-3, f"view {view} is ignored"


def test_batch_items_are_independent():
    former, config = tiny_former()
    features = features_for(config, batch=3)
    base = former(features)
    changed = features.clone()
    changed[1] += 1.0
    out = former(changed)
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]])
    assert (out[1] - base[1]).abs().max().item() > 1e-3


def test_temporal_attention_carries_one_frame_into_the_other_frames_tokens():
    former, config = tiny_former()
    features = features_for(config)
    base = former(features).view(2, config.num_frames, config.queries_per_frame, -1)
    changed = features.clone()
    changed[:, :, 0] += torch.randn_like(changed[:, :, 0])
    out = former(changed).view(2, config.num_frames, config.queries_per_frame, -1)
    # Only frame 0's queries read frame 0's features; the others change through temporal attention.
    for frame in range(1, config.num_frames):
        assert (out[:, frame] - base[:, frame]).abs().max().item() > 1e-3


def test_without_temporal_attention_frames_would_stay_apart():
    # Guards the previous test: zeroing the temporal attention output isolates the frames.
    former, config = tiny_former()
    for layer in former.layers:
        torch.nn.init.zeros_(layer.temporal_attention.to_out.weight)
        torch.nn.init.zeros_(layer.temporal_attention.to_out.bias)
    features = features_for(config)
    base = former(features).view(2, config.num_frames, config.queries_per_frame, -1)
    changed = features.clone()
    changed[:, :, 0] += torch.randn_like(changed[:, :, 0])
    out = former(changed).view(2, config.num_frames, config.queries_per_frame, -1)
    torch.testing.assert_close(out[:, 1:], base[:, 1:])
    assert (out[:, 0] - base[:, 0]).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 2, 7, 96, 4, 4), r"\(2, 2, 7, 96, 4, 4\); expected \(B, V, 8, 96, h, w\)"),
        ((2, 2, 8, 95, 4, 4), r"expected \(B, V, 8, 96, h, w\)"),
        ((2, 8, 96, 4, 4), r"\(2, 8, 96, 4, 4\)"),
    ],
)
def test_wrong_feature_shapes_are_rejected(shape, message):
    former, _ = tiny_former()
    with pytest.raises(InputShapeError, match=message):
        former(torch.zeros(shape))


def test_gradients_reach_every_parameter():
    former, config = tiny_former()
    former.train()
    former(features_for(config)).pow(2).mean().backward()
    missing = [name for name, p in former.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def swap_two_positions(features: torch.Tensor) -> torch.Tensor:
    """The same feature vectors with those at two grid positions of view 0 exchanged."""
    swapped = features.clone()
    swapped[:, 0, :, :, 0, 0], swapped[:, 0, :, :, 2, 3] = (
        features[:, 0, :, :, 2, 3],
        features[:, 0, :, :, 0, 0],
    )
    return swapped


def test_without_position_embedding_the_tokens_are_an_unordered_set():
    # the official Video Former: moving a feature vector elsewhere in the grid changes nothing
    former, config = tiny_former()
    assert not config.feature_position_embedding
    features = features_for(config)
    torch.testing.assert_close(former(swap_two_positions(features)), former(features), atol=1e-5, rtol=1e-5)


def test_position_embedding_tells_grid_positions_and_views_apart():
    torch.manual_seed(0)
    config = PolicyHeadConfig.preset("tiny", video_former={"feature_position_embedding": True}).video_former
    former = VideoFormer(config).eval()
    features = features_for(config)
    out = former(features)
    # without the code the same swaps change the output by float rounding only (~1e-6)
    assert (former(swap_two_positions(features)) - out).abs().max() > 0.01
    assert (former(features.flip(1)) - out).abs().max() > 0.01  # views exchanged
    # a fixed code and one projection of it into the input MLP: any grid size works
    plain = VideoFormer(PolicyHeadConfig.preset("tiny").video_former)
    added = sum(p.numel() for p in former.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == former.position_projection.weight.numel() == 2 * config.dim * config.dim
    assert former(features_for(config, views=3, size=5)).shape == out.shape


def test_position_code_is_distinct_for_every_token():
    from vpp.policy.video_former import feature_position_embedding

    code = feature_position_embedding(2, 16, 16, 32)
    assert code.shape == (512, 32)
    distances = torch.cdist(code, code) + torch.eye(len(code)) * 1e9
    assert distances.min() > 0.05

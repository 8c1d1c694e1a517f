import json

import numpy as np
import pytest
import torch

from vpp.policy.normalization import ActionNormalizer, NormalizationError


@pytest.fixture
def actions() -> np.ndarray:
    rng = np.random.default_rng(0)
    scale = np.array([0.01, 0.5, 3.0, 100.0])
    offset = np.array([-0.2, 0.0, 5.0, -40.0])
    return rng.standard_normal((500, 4)) * scale + offset


def lerobot_stats(values: np.ndarray) -> dict:
    """A LeRobot meta/stats.json entry: per-feature lists of min/max/mean/std/quantiles."""
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "count": [len(values)],
        **{f"q{q:02d}": np.quantile(values, q / 100, axis=0).tolist() for q in (1, 10, 50, 90, 99)},
    }


def test_min_max_maps_extremes_to_unit_interval_and_round_trips(actions):
    normalizer = ActionNormalizer.from_actions(actions)
    normed = normalizer.normalize(actions)
    np.testing.assert_allclose(normed.min(0), -1.0, atol=1e-12)
    np.testing.assert_allclose(normed.max(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        normalizer.denormalize(normed), actions, rtol=0, atol=1e-12 * np.abs(actions).max()
    )


def test_torch_round_trip_keeps_dtype_and_matches_numpy(actions):
    normalizer = ActionNormalizer.from_actions(torch.from_numpy(actions))
    chunk = torch.from_numpy(actions[:30]).float().reshape(3, 10, 4)
    normed = normalizer.normalize(chunk)
    assert normed.dtype == torch.float32 and normed.shape == (3, 10, 4)
    np.testing.assert_allclose(
        normed.numpy(), normalizer.normalize(actions[:30]).reshape(3, 10, 4), atol=1e-5
    )
    restored = normalizer.denormalize(normed)
    torch.testing.assert_close(restored, chunk, rtol=1e-5, atol=1e-5 * float(chunk.abs().max()))


def test_percentile_bounds_leave_outliers_outside_unless_clipped(actions):
    normalizer = ActionNormalizer.from_actions(actions, method="percentile")
    np.testing.assert_allclose(normalizer.low, np.percentile(actions, 1, axis=0))
    np.testing.assert_allclose(normalizer.high, np.percentile(actions, 99, axis=0))
    normed = normalizer.normalize(actions)
    outside = np.abs(normed) > 1
    assert 0.01 < outside.mean() < 0.03  # ~2% of values lie beyond the 1st/99th percentiles
    clipped = normalizer.normalize(actions, clip=True)
    assert np.abs(clipped).max() == 1.0
    np.testing.assert_array_equal(clipped[~outside], normed[~outside])
    np.testing.assert_allclose(normalizer.denormalize(normed), actions, atol=1e-9)


def test_from_lerobot_stats_whole_file_or_one_feature(actions):
    stats = {"action": lerobot_stats(actions), "observation.state": lerobot_stats(actions[:, :2])}
    from_file = ActionNormalizer.from_stats(stats)
    assert from_file == ActionNormalizer.from_actions(actions)
    state = ActionNormalizer.from_stats(stats, key="observation.state", method="percentile")
    assert state.dim == 2
    np.testing.assert_allclose(state.low, np.quantile(actions[:, :2], 0.01, axis=0))
    assert ActionNormalizer.from_stats(stats["action"], key=None, method="percentile").method == "percentile"


def test_json_save_load_is_bit_exact(actions, tmp_path):
    normalizer = ActionNormalizer.from_actions(actions * np.pi, method="percentile", percentiles=(2.5, 97.5))
    path = normalizer.save(tmp_path / "sub" / "action_norm.json")
    loaded = ActionNormalizer.load(path)
    assert loaded == normalizer
    np.testing.assert_array_equal(loaded.normalize(actions), normalizer.normalize(actions))
    assert json.loads(path.read_text())["method"] == "percentile"


@pytest.mark.parametrize("method", ["min_max", "percentile"])
def test_a_constant_dimension_fitted_to_data_maps_to_zero(actions, method, caplog):
    varying = ActionNormalizer.from_actions(actions, method=method)
    actions = actions.copy()
    actions[:, 2] = 0.7
    normalizer = ActionNormalizer.from_actions(actions, method=method)
    assert normalizer.low[2] == pytest.approx(-0.3) and normalizer.high[2] == pytest.approx(1.7)
    normalized = normalizer.normalize(actions)
    np.testing.assert_allclose(normalized[:, 2], 0.0, atol=1e-12)
    # the other dimensions keep their data bounds
    np.testing.assert_array_equal(normalizer.low[[0, 1, 3]], varying.low[[0, 1, 3]])
    np.testing.assert_array_equal(normalizer.high[[0, 1, 3]], varying.high[[0, 1, 3]])
    np.testing.assert_allclose(normalizer.denormalize(normalized), actions, atol=1e-12)
    assert "dims [2] are constant" in caplog.text


def test_explicit_bounds_without_a_range_are_rejected_with_their_index():
    with pytest.raises(NormalizationError, match=r"dims \[2\].*range \[0\.0\]"):
        ActionNormalizer(np.array([0.0, 0.0, 7.0]), np.array([1.0, 1.0, 7.0]))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda a: ActionNormalizer.from_actions(np.where(np.arange(4) == 1, np.nan, a)),
            r"NaN in dims \[1\]",
        ),
        (lambda a: ActionNormalizer.from_actions(a, method="zscore"), "method='zscore'"),
        (
            lambda a: ActionNormalizer.from_actions(a, method="percentile", percentiles=(99, 1)),
            r"percentiles=\(99, 1\)",
        ),
        (lambda a: ActionNormalizer.from_actions(np.zeros((0, 4))), r"shape \(0, 4\)"),
        (
            lambda a: ActionNormalizer.from_stats({"action": {"min": [0.0, np.nan], "max": [1.0, 1.0]}}),
            r"non-finite bounds in dims \[1\]",
        ),
        (
            lambda a: ActionNormalizer.from_stats(
                {"action": {"min": [0.0], "max": [1.0]}}, method="percentile"
            ),
            r"no \['q01', 'q99'\]",
        ),
        (lambda a: ActionNormalizer(np.zeros(3), np.ones(2)), r"low \(3,\) and high \(2,\)"),
        (
            lambda a: ActionNormalizer.from_dict(
                {"format_version": 99, "low": [0], "high": [1], "method": "min_max"}
            ),
            "format_version=99",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(actions, make, message):
    with pytest.raises(NormalizationError, match=message):
        make(actions)


def test_values_of_the_wrong_width_are_rejected(actions):
    normalizer = ActionNormalizer.from_actions(actions)
    with pytest.raises(NormalizationError, match=r"shape \(10, 3\); expected \(\.\.\., 4\)"):
        normalizer.normalize(np.zeros((10, 3)))
    with pytest.raises(NormalizationError, match=r"expected \(\.\.\., 4\)"):
        normalizer.denormalize(torch.zeros(2, 5))

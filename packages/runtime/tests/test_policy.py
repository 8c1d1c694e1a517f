"""vpp.runtime.Policy on the tiny artifact of conftest.py: what act computes, and bad input.

Parity with the PyTorch policy is tested where torch is at hand: packages/export/tests."""

import numpy as np
import pytest

from vpp.runtime.errors import ObservationError, UnknownInstructionError
from vpp.runtime.policy import Policy


def observation(rng):
    # non-square and off-size frames exercise the crop and the antialiased resize
    return {
        "corner": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "state": rng.normal(size=3),
    }


@pytest.fixture(scope="module")
def policy(tiny_artifact):
    return Policy.load(tiny_artifact, threads=1, seed=0)


def test_act_runs_both_graphs_and_denormalises(policy):
    manifest = policy.artifact.manifest
    assert (policy.cameras, policy.image_size, policy.chunk, policy.action_dim, policy.state_dim) == (
        ["corner", "wrist"],
        8,
        4,
        4,
        3,
    )
    obs = observation(np.random.default_rng(3))
    noise = policy.sample_noise(np.random.default_rng(4))
    pixels, state = policy.preprocess(obs)
    hidden, pooled = policy.text("close the window")
    features = policy.feature_session.run(
        None, {"images": pixels, "text_hidden": hidden, "noise": noise["features"]}
    )[0]
    normalized = policy.policy_session.run(
        None, {"features": features, "lang": pooled, "noise": noise["actions"], "state": state}
    )[0]
    expected = manifest.action.normalizer.denormalize(normalized[0].astype(np.float64)).astype(np.float32)
    actions = policy.act(obs, "close the window", noise=noise)
    assert actions.shape == (4, 4) and actions.dtype == np.float32
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_allclose(state[0], manifest.state.normalizer.normalize(obs["state"]), rtol=1e-6)
    # the stand-in graphs read every input: another instruction or image changes the chunk
    assert np.abs(policy.act(obs, "open the drawer", noise=noise) - actions).max() > 1e-6
    assert (
        np.abs(
            policy.act(observation(np.random.default_rng(5)), "close the window", noise=noise) - actions
        ).max()
        > 1e-6
    )


def test_a_seeded_policy_repeats_its_noise(tiny_artifact):
    obs = observation(np.random.default_rng(0))
    first, second = (Policy.load(tiny_artifact, threads=1, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.act(obs, "open the drawer"), second.act(obs, "open the drawer"))
    assert np.abs(first.act(obs, "open the drawer") - first.act(obs, "open the drawer")).max() > 1e-6


def test_bad_observations_raise_clear_errors(policy):
    good = observation(np.random.default_rng(0))
    cases = [
        ({k: v for k, v in good.items() if k != "wrist"}, "no camera 'wrist'"),
        (dict(good, corner=good["corner"].astype(np.float32)), r"dtype float32; expected \(H, W, 3\) uint8"),
        (dict(good, corner=good["corner"][..., :1]), r"shape \(48, 64, 1\)"),
        (dict(good, state=np.array([0.0, np.nan, 0.0])), "3 finite values"),
        (dict(good, state=np.zeros(5)), "3 finite values"),
        ({k: v for k, v in good.items() if k != "state"}, "no 'state'"),
    ]
    for obs, message in cases:
        with pytest.raises(ObservationError, match=message):
            policy.act(obs, "open the drawer")
    with pytest.raises(
        UnknownInstructionError,
        match=r"'juggle' is not in .* no text encoder; it holds \['open the drawer', 'close the window'\]",
    ):
        policy.act(good, "juggle")

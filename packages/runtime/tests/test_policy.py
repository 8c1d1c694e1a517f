"""vpp.runtime.Policy on the tiny artifact of conftest.py: what act computes, and bad input.

Parity with the PyTorch policy is tested where torch is at hand: packages/export/tests."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import vpp.runtime
from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError
from vpp.runtime.policy import MAX_IMAGE_SIDE, TEXT_CACHE_SIZE, Policy


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
        (dict(good, state=np.array([0.0, np.nan, 0.0])), "3 finite numbers"),
        (dict(good, state=np.zeros(5)), r"shape \(5,\); expected 3 finite numbers"),
        ({k: v for k, v in good.items() if k != "state"}, "no 'state'"),
        # strings, even of digits, objects and ragged lists are not a state (numpy's own errors said
        # "could not convert string to float" or converted "1" silently)
        (dict(good, state=["a", "b", "c"]), r"state \['a', 'b', 'c'\] holds values of dtype <U1"),
        (dict(good, state=np.array(["1", "2", "3"])), "holds values of dtype <U1; expected 3 finite numbers"),
        (dict(good, state="abc"), "holds values of dtype <U3"),
        (dict(good, state=[1.0, None, 2.0]), "holds values of dtype object"),
        (dict(good, state=[[1.0], [2.0, 3.0]]), r"state \[\[1.0\], \[2.0, 3.0\]\] is not an array"),
        (dict(good, state=np.full(3, 1e300)), "beyond float32's range"),
        (None, "observation is of type NoneType; expected a mapping of camera names"),
    ]
    for obs, message in cases:
        with pytest.raises(ObservationError, match=message):
            policy.act(obs, "open the drawer")
    with pytest.raises(
        UnknownInstructionError,
        match=r"'juggle' is not in .* no text encoder; it holds \['open the drawer', 'close the window'\]",
    ):
        policy.act(good, "juggle")


def test_an_instruction_that_is_not_a_str_is_an_observation_error(policy):
    good = observation(np.random.default_rng(0))
    # before: UnknownInstructionError for 5 or None, TypeError (unhashable) for a list
    for instruction, kind in [(5, "int"), (None, "NoneType"), (b"open the drawer", "bytes"), (["x"], "list")]:
        with pytest.raises(ObservationError, match=f"instruction .* is of type {kind}; expected a str"):
            policy.act(good, instruction)


def test_non_finite_actions_are_withheld_and_their_cause_named(policy):
    good = observation(np.random.default_rng(0))
    assert vpp.runtime.NonFiniteActionsError is NonFiniteActionsError
    noise = policy.sample_noise(np.random.default_rng(1))
    noise["actions"][0, 2, 1] = np.nan
    with pytest.raises(NonFiniteActionsError, match="1 of the 16 values") as error:
        policy.act(good, "open the drawer", noise=noise)
    assert "policy.onnx's input 'noise' holds 1 NaN or infinite values" in str(error.value)
    assert isinstance(error.value, FloatingPointError) and np.isnan(error.value.actions[2, 1])
    noise = policy.sample_noise(np.random.default_rng(1))
    noise["features"][..., 0] = np.inf
    with pytest.raises(NonFiniteActionsError, match=r"features\.onnx's input 'noise' holds 24 NaN"):
        policy.act(good, "open the drawer", noise=noise)
    # finite in float32, but the chunk overflows it: the state is far outside the training range
    with pytest.raises(NonFiniteActionsError, match=r"the state normalises to 3e\+38 at most, far outside"):
        policy.act(dict(good, state=np.full(3, 3e38)), "open the drawer")
    assert np.isfinite(policy.act(good, "open the drawer")).all()


def test_images_far_larger_than_the_input_are_refused_before_any_copy(policy):
    good = observation(np.random.default_rng(0))
    assert policy.max_image_side == MAX_IMAGE_SIDE == 2048  # the tiny artifact's 8 px input x 8 is less
    huge = np.zeros((4000, 4000, 3), np.uint8)  # resizing it took 1.3 GB
    tracemalloc.start()
    try:
        with pytest.raises(
            ObservationError, match=r"camera 'wrist': image of 4000x4000 pixels; .* at most 2048"
        ):
            policy.act(dict(good, wrist=huge), "open the drawer")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"refusing the image allocated {peak} bytes"
    # the bound is per side, inclusive (a wide strip is cheap: its crop is 8 x 8)
    assert policy.act(dict(good, wrist=np.zeros((8, 2048, 3), np.uint8)), "open the drawer").shape == (4, 4)
    with pytest.raises(ObservationError, match="image of 2049x8 pixels"):
        policy.act(dict(good, wrist=np.zeros((8, 2049, 3), np.uint8)), "open the drawer")


class CountingSession:
    """An ORT session that counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_instructions_encoded_on_the_fly_stay_in_an_lru_cache(make_tiny_artifact, tmp_path):
    folder = make_tiny_artifact(tmp_path / "artifact", text_encoder=True)
    assert Policy.load(folder, threads=1).text_cache_size == TEXT_CACHE_SIZE == 256
    policy = Policy.load(folder, threads=1, seed=0, text_cache_size=2)
    encoder = policy.text_session = CountingSession(policy.text_session)
    exported = ["open the drawer", "close the window"]
    first = policy.text("pick the cube")
    policy.text("push the button")
    assert encoder.runs == 2 and policy.instructions == [*exported, "pick the cube", "push the button"]
    assert policy.text("pick the cube") is first and encoder.runs == 2  # a hit, now the most recent
    policy.text("wipe the table")  # evicts the least recently used, "push the button"
    assert encoder.runs == 3 and policy.instructions == [*exported, "pick the cube", "wipe the table"]
    again = policy.text("push the button")
    assert encoder.runs == 4 and policy.instructions == [*exported, "wipe the table", "push the button"]
    assert np.abs(first[1] - again[1]).max() > 0  # the stand-in encoder tells instructions apart
    for index in range(10):
        policy.text(f"instruction {index}")
    # the artifact's own instructions are never evicted nor re-encoded
    assert len(policy.instructions) == 4 and policy.instructions[:2] == exported
    policy.text("open the drawer")
    assert encoder.runs == 14
    uncached = Policy.load(folder, threads=1, text_cache_size=0)
    uncached.text("pick the cube")
    assert uncached.instructions == exported
    with pytest.raises(ValueError, match="text_cache_size=-1"):
        Policy.load(folder, threads=1, text_cache_size=-1)


WITHOUT_ONNXRUNTIME = """
import sys
sys.modules["onnxruntime"] = None  # as if not installed: importing it raises ModuleNotFoundError
from vpp.runtime import Policy
from vpp.runtime.cli import main
try:
    Policy.load(sys.argv[1])
except ModuleNotFoundError as error:
    print("load:", error.name, error)
try:
    main(["serve", sys.argv[1]])
except SystemExit as stop:
    print("serve:", stop)
"""


def test_load_without_onnxruntime_says_which_extra_to_install(tiny_artifact):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ONNXRUNTIME, str(tiny_artifact)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    load, serve = result.stdout.splitlines()
    assert load.startswith("load: onnxruntime vpp.runtime.Policy runs artifacts with ONNX Runtime"), load
    for line in (load, serve):
        assert "pip install 'vpp-runtime[cpu]'" in line and "'vpp-runtime[gpu]'" in line, line
    assert serve.startswith("serve: vpp-runtime serve: "), serve

"""Policy's parallel_views: features.onnx run one camera view per call, the calls on parallel
threads, on the stand-in artifact of conftest.py (its feature pass keeps the views apart, as the
real one does). The speed this buys is measured in bench/ (docs/runtime.md)."""

import threading

import numpy as np
import pytest

from vpp.runtime.manifest import ManifestValueError
from vpp.runtime.policy import Policy
from vpp.runtime.testing import StandInArtifact


def observation(rng):
    return {
        "corner": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=3),
    }


def test_one_view_per_call_gives_the_actions_of_one_call(tiny_artifact):
    together = Policy.load(tiny_artifact, threads=1, seed=0)
    by_view = Policy.load(tiny_artifact, threads=2, seed=0)
    forced = Policy.load(tiny_artifact, threads=1, seed=0, parallel_views=True)
    assert (together.parallel_views, by_view.parallel_views, forced.parallel_views) == (False, True, True)
    # the session of a parallel policy takes one view a call; the other all of them
    assert by_view.feature_session.get_inputs()[0].shape[1] == 1
    assert together.feature_session.get_inputs()[0].shape[1] == 2
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs = observation(rng)
        noise = together.sample_noise(rng)
        expected = together.act(obs, "open the drawer", noise=noise)
        for policy in (by_view, forced):
            np.testing.assert_allclose(
                policy.act(obs, "open the drawer", noise=noise), expected, rtol=0, atol=1e-6
            )
        feed, _ = together.graph_feeds(obs, "open the drawer", noise)
        np.testing.assert_allclose(by_view.run_features(feed), together.run_features(feed), rtol=0, atol=1e-6)
    # each view's features come from its own image: swapping the cameras swaps the features
    swapped = dict(obs, corner=obs["wrist"], wrist=obs["corner"])
    feed, _ = together.graph_feeds(obs, "open the drawer", noise)
    swapped_feed, _ = together.graph_feeds(swapped, "open the drawer", noise)
    features, swapped_features = by_view.run_features(feed), by_view.run_features(swapped_feed)
    image_part = features - noise["features"]
    swapped_part = swapped_features - noise["features"]
    np.testing.assert_allclose(swapped_part[:, ::-1], image_part, rtol=0, atol=1e-6)
    assert np.abs(image_part[:, 0] - image_part[:, 1]).max() > 1e-3


class _MeetingSession:
    """Stands in for the features session: each call waits until the other view's call has
    started too, so the calls must overlap; records the threads they ran on."""

    def __init__(self, session, views):
        self.session = session
        self.barrier = threading.Barrier(views, timeout=10)
        self.threads = set()

    def run(self, outputs, feed):
        self.threads.add(threading.get_ident())
        self.barrier.wait()  # BrokenBarrierError after 10 s if the views ran one after the other
        return self.session.run(outputs, feed)


def test_the_views_run_at_the_same_time_on_their_own_threads(tiny_artifact):
    policy = Policy.load(tiny_artifact, threads=2, seed=0)
    meeting = policy.feature_session = _MeetingSession(policy.feature_session, 2)
    actions = policy.act(observation(np.random.default_rng(1)), "close the window")
    assert actions.shape == (4, 4) and np.isfinite(actions).all()
    assert len(meeting.threads) == 2 and threading.get_ident() not in meeting.threads


def test_parallel_views_refused_where_impossible_and_off_where_unhelpful(tmp_path, tiny_artifact):
    one_camera = StandInArtifact(cameras=("scene",)).write(tmp_path / "one")
    fixed_axis = StandInArtifact(view_axis=None).write(tmp_path / "fixed")
    with pytest.raises(ValueError, match=r"parallel_views=True, but the artifact has one camera \('scene'\)"):
        Policy.load(one_camera, parallel_views=True)
    with pytest.raises(ValueError, match=r"fixed view axis .* re-export it"):
        Policy.load(fixed_axis, threads=2, parallel_views=True)
    with pytest.raises(ValueError, match="runs on CUDAExecutionProvider, where all views go in one call"):
        Policy.load(
            tiny_artifact, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], parallel_views=True
        )
    # automatic: on only with a view axis, two views and two threads
    assert not Policy.load(one_camera, threads=2).parallel_views
    assert not Policy.load(tiny_artifact, threads=2, parallel_views=False).parallel_views
    old = Policy.load(fixed_axis, threads=2, seed=0)
    assert not old.parallel_views
    assert old.artifact.manifest.features.view_axis is None
    assert old.act(observation(np.random.default_rng(2)), "open the drawer").shape == (4, 4)


def test_a_manifest_without_view_axis_reads_as_a_fixed_one(tiny_artifact):
    manifest = Policy.load(tiny_artifact, threads=1).artifact.manifest
    assert manifest.features.view_axis == StandInArtifact.view_axis == "views"
    data = manifest.to_json_dict()
    del data["features"]["view_axis"]
    assert type(manifest).from_json_dict(data).features.view_axis is None
    data["features"]["view_axis"] = ""
    with pytest.raises(
        ManifestValueError, match=r"'features\.view_axis': ''; expected the graph's dimension name"
    ):
        type(manifest).from_json_dict(data)

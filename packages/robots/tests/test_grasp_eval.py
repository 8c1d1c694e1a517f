"""`vpp-robot eval grasp`: grasp success from cube positions the demonstrations never used."""

import json

import numpy as np
import pytest

from vpp.data.video_io import read_video
from vpp.robots.cli import main
from vpp.robots.collect import GRASP_TASK, CollectConfig, CollectionState, collect_sim_demos
from vpp.robots.evaluate import GraspEvalConfig, SeedOverlapError, check_disjoint_from_demos, evaluate_grasps
from vpp.robots.policies import HoldPolicy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demos")
    collect_sim_demos(folder, CollectConfig(episodes=2, image_size=32), progress=False)
    return folder


@pytest.mark.slow
def test_rollouts_start_from_cube_positions_the_demonstrations_never_used(demos, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "grasp",
                "--policy",
                "hold",
                "--instruction",
                "grasp the red cube",
                "--episodes",
                "3",
                "--image-size",
                "32",
                "--max-seconds",
                "1",
                "--demos",
                str(demos),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "grasped 0/3" in capsys.readouterr().out
    result = json.loads((tmp_path / "grasp_eval.json").read_text())
    assert result["grasped"] == 0 and result["episodes"] == 3
    starts = np.array([rollout["cube_start"] for rollout in result["rollouts"]])
    state = CollectionState.read(demos).tasks[GRASP_TASK]
    demo_starts = np.array([attempt.start for attempt in state.attempts])
    assert len(demo_starts) == 2 and len({tuple(start) for start in starts}) == 3
    # No rollout starts where a demonstration did (nor anywhere near: the spawn range is 20 cm wide).
    distances = np.linalg.norm(starts[:, None, :2] - demo_starts[None, :, :2], axis=-1)
    assert distances.min() > 1e-3
    assert {rollout["seed"] for rollout in result["rollouts"]}.isdisjoint(range(state.next_attempt))
    # Held still, the arm never gets near the cube, and the video shows every tick of every rollout.
    assert all(
        rollout["final_cube_lift_m"] < 0.01 and rollout["ticks"] == 10 for rollout in result["rollouts"]
    )
    assert read_video(tmp_path / "grasps.mp4").shape == (30, 32, 64, 3)


@pytest.mark.slow
def test_an_evaluation_that_would_replay_a_demonstrations_seed_is_refused(demos, tmp_path):
    with pytest.raises(SeedOverlapError, match="include \\[1\\]"):
        check_disjoint_from_demos(GraspEvalConfig(seed=1, episodes=4), demos)
    with pytest.raises(ValueError, match="object_jitter_m"):
        check_disjoint_from_demos(GraspEvalConfig(object_jitter_m=0.05), demos)
    with pytest.raises(SeedOverlapError):
        evaluate_grasps(HoldPolicy(), "grasp the red cube", GraspEvalConfig(seed=0, episodes=1), demos=demos)
    assert not list(tmp_path.iterdir())

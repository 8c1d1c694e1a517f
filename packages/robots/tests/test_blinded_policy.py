"""The blinded-camera control: does a policy need what its camera shows?"""

import json

import numpy as np
import pytest

from vpp.robots.evaluate import GraspEvalConfig, evaluate_grasps, evaluate_metaworld
from vpp.robots.policies import BlindedPolicy


class Recorder:
    """Remembers every observation it was given; holds the arm still."""

    def __init__(self, chunk=4, action_dim=7):
        self.seen = []
        self.shape = (chunk, action_dim)

    def act(self, observation, instruction):
        self.seen.append({name: np.array(value, copy=True) for name, value in observation.items()})
        actions = np.zeros(self.shape, dtype=np.float32)
        if self.shape[1] == 7:
            actions[:, 6] = 1.0
        return actions


def frame(value):
    return np.full((8, 8, 3), value, dtype=np.uint8)


def test_first_mode_holds_the_first_frame_and_passes_the_rest_through():
    inner = Recorder()
    blinded = BlindedPolicy(inner, ["wrist"])
    for step in range(3):
        blinded.act({"wrist": frame(step * 10), "scene": frame(step), "state": np.arange(3.0) + step}, "go")
    assert [int(seen["wrist"][0, 0, 0]) for seen in inner.seen] == [0, 0, 0]
    assert [int(seen["scene"][0, 0, 0]) for seen in inner.seen] == [0, 1, 2]
    np.testing.assert_array_equal(inner.seen[2]["state"], np.arange(3.0) + 2)


def test_gray_mode_and_bad_arguments():
    inner = Recorder()
    BlindedPolicy(inner, ["wrist"], mode="gray").act({"wrist": frame(7)}, "go")
    assert inner.seen[0]["wrist"].dtype == np.uint8 and np.all(inner.seen[0]["wrist"] == 128)
    with pytest.raises(ValueError, match="blind mode 'dark'; expected one of"):
        BlindedPolicy(inner, ["wrist"], mode="dark")
    with pytest.raises(ValueError, match="at least one camera"):
        BlindedPolicy(inner, [])
    with pytest.raises(
        KeyError, match=r"cannot blind camera\(s\) \['top'\]: the observation has \['wrist'\]"
    ):
        BlindedPolicy(inner, ["top"]).act({"wrist": frame(1)}, "go")


def test_a_blinded_grasp_evaluation_shows_the_policy_one_wrist_frame_for_every_cube(tmp_path):
    config = dict(episodes=2, max_seconds=0.3, image_size=32, execute_steps=None)
    live, blind = Recorder(), Recorder()
    evaluate_grasps(live, "grasp the red cube", GraspEvalConfig(**config))
    evaluate_grasps(
        blind, "grasp the red cube", GraspEvalConfig(**config, blind_cameras=("wrist",)), out=tmp_path
    )
    assert len(live.seen) == len(blind.seen) >= 2
    # Live, the two rollouts' cubes lie in different places, so their first wrist frames differ...
    firsts = [seen["wrist"] for seen in live.seen[:: len(live.seen) // 2]]
    assert np.abs(firsts[0].astype(int) - firsts[1].astype(int)).max() > 0
    # ...blinded, the policy saw the first rollout's first wrist frame throughout, and the scene live
    for seen, original in zip(blind.seen, live.seen, strict=True):
        np.testing.assert_array_equal(seen["wrist"], live.seen[0]["wrist"])
        np.testing.assert_array_equal(seen["scene"], original["scene"])
    saved = json.loads((tmp_path / "grasp_eval.json").read_text())
    assert saved["config"]["blind_cameras"] == ["wrist"] and saved["config"]["blind_mode"] == "first"


def test_a_blinded_metaworld_evaluation_keeps_its_own_folder(tmp_path):
    common = dict(tasks=["reach"], episodes=1, cameras=["corner"], image_size=32, max_steps=4, progress=False)
    inner = Recorder(chunk=4, action_dim=4)
    results = evaluate_metaworld(
        inner, output=tmp_path, blind_cameras=["corner"], blind_mode="gray", **common
    )
    assert results["blinded"] == {"cameras": ["corner"], "mode": "gray"}
    assert all(np.all(seen["corner"] == 128) for seen in inner.seen)
    with pytest.raises(ValueError, match="holds an evaluation with"):
        evaluate_metaworld(Recorder(chunk=4, action_dim=4), output=tmp_path, **common)
    with pytest.raises(ValueError, match="nothing to blind"):
        evaluate_metaworld("oracle", output=tmp_path / "oracle", blind_cameras=["corner"], **common)


def test_the_cli_runs_a_blinded_grasp_evaluation(tmp_path, capsys):
    from vpp.robots.cli import main

    argv = ["eval", "grasp", "--policy", "hold", "--instruction", "grasp the red cube", "--episodes", "1"]
    argv += ["--image-size", "32", "--max-seconds", "0.3", "--out", str(tmp_path), "--blind-camera", "wrist"]
    assert main([*argv, "--blind-mode", "gray"]) == 0
    saved = json.loads((tmp_path / "grasp_eval.json").read_text())
    assert saved["config"]["blind_cameras"] == ["wrist"] and saved["config"]["blind_mode"] == "gray"
    assert "grasped 0/1" in capsys.readouterr().out

"""End to end on MetaWorld, at smoke size: demos -> TVP -> policy -> evaluation."""

import json

import imageio.v3 as iio
import pytest

pytest.importorskip("metaworld")



@pytest.mark.slow
def test_collect_train_both_stages_and_evaluate(tmp_path, capsys):
    from vpp.data.lerobot import LeRobotDataset
    from vpp.policy.cli import main as policy_cli
    from vpp.tvp.cli import main as tvp_cli

    demos = tmp_path / "demos"
    policy_cli(["collect", "--tasks", "reach", "--episodes", "2", "--size", "32", "--out", str(demos)])
    tvp_cli(["train", "--preset", "tiny", "--data", f"reach=lerobot:{demos}#corner", "--steps", "2", "--batch-size", "2",
             "--lr", "1e-4", "--output", str(tmp_path / "tvp")])
    policy_cli(["train", "--data", str(demos), "--tvp", str(tmp_path / "tvp" / "model"), "--chunk", "4", "--head-preset", "tiny",
                "--steps", "3", "--batch-size", "4", "--feature-cache", str(tmp_path / "features"), "--output", str(tmp_path / "policy")])
    model = tmp_path / "policy" / "model"
    frame = tmp_path / "frame.png"
    iio.imwrite(frame, LeRobotDataset(demos).episode(0).read_frames("observation.images.corner", [0])[0])
    capsys.readouterr()
    policy_cli(["predict", "--policy", str(model), "--image", f"corner={frame}", "--state", "0,0.6,0.2,1", "--instruction", "move the gripper to the goal"])
    actions = json.loads(capsys.readouterr().out)["actions"]
    assert len(actions) == 4 and len(actions[0]) == 4
    policy_cli(["eval", "--policy", str(model), "--tasks", "reach", "--episodes", "1", "--size", "32", "--max-steps", "8",
                "--out", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["per_task"]) == {"reach"} and results["per_task"]["reach"]["mean_episode_length"] == 8
    assert (tmp_path / "eval" / "videos" / "reach.mp4").is_file()

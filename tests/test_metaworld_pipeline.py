"""End to end on MetaWorld, at smoke size: demos (vpp-robot collect) -> TVP -> policy -> evaluation
of the saved torch policy and of its exported artifact (vpp-robot eval), and the diagnostics on
collected demos."""

import json
import os
import subprocess
from pathlib import Path

import imageio.v3 as iio
import pytest

pytest.importorskip("metaworld")


@pytest.mark.slow
def test_collect_train_both_stages_and_evaluate(tmp_path, capsys):
    from vpp.data.lerobot import LeRobotDataset
    from vpp.policy.cli import main as policy_cli
    from vpp.robots.cli import main as robot_cli
    from vpp.tvp.cli import main as tvp_cli

    demos = tmp_path / "demos"
    assert (
        robot_cli(
            [
                "collect",
                "metaworld",
                "--tasks",
                "reach",
                "--episodes",
                "2",
                "--image-size",
                "32",
                "--out",
                str(demos),
            ]
        )
        == 0
    )
    tvp_cli(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            f"reach=lerobot:{demos}#corner",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--lr",
            "1e-4",
            "--output",
            str(tmp_path / "tvp"),
        ]
    )
    policy_cli(
        [
            "train",
            "--data",
            str(demos),
            "--tvp",
            str(tmp_path / "tvp" / "model"),
            "--chunk",
            "4",
            "--head-preset",
            "tiny",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--feature-cache",
            str(tmp_path / "features"),
            "--output",
            str(tmp_path / "policy"),
        ]
    )
    model = tmp_path / "policy" / "model"
    frame = tmp_path / "frame.png"
    iio.imwrite(frame, LeRobotDataset(demos).episode(0).read_frames("observation.images.corner", [0])[0])
    capsys.readouterr()
    policy_cli(
        [
            "predict",
            "--policy",
            str(model),
            "--image",
            f"corner={frame}",
            "--state",
            "0,0.6,0.2,1",
            "--instruction",
            "move the gripper to the goal",
        ]
    )
    actions = json.loads(capsys.readouterr().out)["actions"]
    assert len(actions) == 4 and len(actions[0]) == 4
    # a folder without manifest.json is a saved torch policy: the harness loads it through vpp.policy
    assert (
        robot_cli(
            [
                "eval",
                "metaworld",
                "--policy",
                str(model),
                "--tasks",
                "reach",
                "--episodes",
                "1",
                "--image-size",
                "32",
                "--max-steps",
                "8",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["per_task"]) == {"reach"} and results["per_task"]["reach"]["mean_episode_length"] == 8
    assert (tmp_path / "eval" / "videos" / "reach.mp4").is_file()
    # what is deployed is what is measured: the exported artifact (a folder with manifest.json)
    # runs torch-free through vpp.runtime in the same harness, from the same starts
    from vpp.export.cli import main as export_cli

    artifact = tmp_path / "artifact"
    export_cli([str(model), "--out", str(artifact), "--instruction", "move the gripper to the goal"])
    assert (
        robot_cli(
            [
                "eval",
                "metaworld",
                "--policy",
                str(artifact),
                "--tasks",
                "reach",
                "--episodes",
                "1",
                "--image-size",
                "32",
                "--max-steps",
                "8",
                "--out",
                str(tmp_path / "eval-artifact"),
            ]
        )
        == 0
    )
    deployed = json.loads((tmp_path / "eval-artifact" / "results.json").read_text())
    assert [e["rand_vec"] for e in deployed["episodes"]] == [e["rand_vec"] for e in results["episodes"]]
    assert deployed["per_task"]["reach"]["mean_episode_length"] == 8 and deployed["name"] == str(artifact)

    # scripts/metaworld_variants.sh: float32, int8 hybrid and int8-dynamic artifacts of a run's
    # policy on the same unseen starts, compared against float32 (docs/quantization.md)
    run = tmp_path / "run"
    (run / "policy-tvp").mkdir(parents=True)
    (run / "policy-tvp" / "model").symlink_to(model)
    (run / "demos").symlink_to(demos)
    env = {
        **os.environ,
        "RUN": str(run),
        "TASKS": "reach",
        "EVAL_EPISODES": "1",
        "EVAL_MAX_STEPS": "8",
        "JOBS": "2",
    }
    script = Path(__file__).parents[1] / "scripts" / "metaworld_variants.sh"
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    comparison = json.loads((run / "variants" / "comparison.json").read_text())
    assert [row["name"] for row in comparison] == ["fp32", "int8", "int8-dynamic"]
    assert all(row["episodes"] == 1 and row["shared"] == 1 for row in comparison)
    for name, scheme in (("int8", "int8-hybrid"), ("int8-dynamic", "int8-dynamic")):
        manifest = json.loads((run / "variants" / name / "manifest.json").read_text())
        assert manifest["quantization"]["scheme"] == scheme
        starts = json.loads((run / "variants" / f"eval-{name}" / "results.json").read_text())["episodes"]
        assert [e["rand_vec"] for e in starts] == [e["rand_vec"] for e in results["episodes"]]
    # run again: everything is kept
    again = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0 and again.stdout.count("done already") == 6


@pytest.mark.slow
def test_cli_diagnoses_a_saved_policy_on_collected_demos(tmp_path, capsys):
    import torch

    from vpp.policy.cli import main
    from vpp.policy.data import LeRobotEpisodeSource, PolicyWindowDataset
    from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
    from vpp.robots.collect import collect_metaworld
    from vpp.tvp.model import TextGuidedVideoPredictor

    chunk = 4
    demos = tmp_path / "demos"
    collect_metaworld(demos, tasks=["reach"], episodes_per_task=3, image_size=32, progress=False)
    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(demos)], ["corner"], chunk=chunk, image_size=32, state_dim=4
    )
    torch.manual_seed(0)
    config = VPPConfig(cameras=["corner"], action_dim=4, chunk=chunk, state_dim=4)
    policy = VideoPredictionPolicy.build(
        TextGuidedVideoPredictor.from_preset("tiny"),
        config,
        windows.all_actions(),
        windows.all_states(),
        head_preset="tiny",
    )
    policy.save_pretrained(tmp_path / "policy")
    main(
        [
            "diagnose",
            "--policy",
            str(tmp_path / "policy"),
            "--data",
            str(demos),
            "--train-episodes-per-task",
            "1",
            "--held-out-per-task",
            "2",
            "--samples",
            "2",
            "--stride",
            "24",
            "--out",
            str(tmp_path / "diag"),
        ]
    )
    saved = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    offline, eyes = saved["offline_action_error"], saved["image_sensitivity"]
    assert offline["held_out_episodes"] == 2 and offline["train_episodes"] == 1 and offline["windows"] >= 2
    assert offline["action_chunk_mse"]["policy_mean"] > 0 and eyes["pairs"] == 2 and eyes["oracle_shift"] > 0
    assert eyes["image_ratio"] is not None and eyes["sampling_spread"] > 0
    assert "written to" in capsys.readouterr().out


@pytest.mark.slow
def test_collected_metaworld_demos_feed_both_training_stages(tmp_path):
    from vpp.policy.data import LeRobotEpisodeSource, PolicyWindowDataset
    from vpp.robots.collect import collect_metaworld
    from vpp.tvp.data.mixture import MixtureClipDataset
    from vpp.tvp.data.sources import LeRobotClipSource

    out = tmp_path / "mw"
    collect_metaworld(
        out,
        tasks=["reach", "door-open"],
        episodes_per_task=2,
        cameras=["corner", "topview"],
        image_size=32,
        progress=False,
    )
    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(out)], ["corner", "topview"], chunk=4, image_size=32, state_dim=4
    )
    assert windows.report.accepted == 4
    assert windows[0]["images"].shape == (2, 3, 32, 32) and windows[0]["state"].shape == (4,)
    clips = MixtureClipDataset([LeRobotClipSource(out, camera="corner")], num_frames=8, image_size=32)
    assert clips[0]["video"].shape == (8, 3, 32, 32)

"""`vpp-robot run` on the simulated Panda, and policy loading."""

import json
import sys

import pytest

from vpp.data.lerobot import LeRobotDataset
from vpp.data.video_io import read_video
from vpp.robots.cli import main
from vpp.robots.policies import ArtifactRuntimeUnavailableError, TorchPolicyUnavailableError, load_policy


def test_run_sim_panda_with_the_sine_policy_writes_video_report_and_episode(tmp_path):
    code = main(
        [
            "run",
            "--robot",
            "sim-panda",
            "--policy",
            "sine",
            "--instruction",
            "draw a circle",
            "--seconds",
            "2",
            "--out",
            str(tmp_path),
            "--image-size",
            "48",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "latency_report.json").read_text())
    assert report["stop_reason"] is None and report["robot"] == "sim-panda"
    assert report["ticks"] >= 5 and report["chunks"] >= 1
    assert report["servo_period"]["count"] > 50
    assert report["inference_latency"]["count"] >= 1
    video = read_video(tmp_path / "rollout.mp4")
    assert video.shape[1:] == (48, 96, 3)  # both cameras side by side
    dataset = LeRobotDataset(tmp_path / "dataset")
    assert dataset.episode(0).task == "draw a circle"
    assert dataset.episode(0).length == len(video) == report["ticks"]


def test_an_artifact_folder_without_the_runtime_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vpp.runtime", None)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(
        ArtifactRuntimeUnavailableError, match=r"artifact runtime vpp\.runtime is not available"
    ):
        load_policy(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_policy(str(tmp_path / "missing"))


def test_a_folder_without_a_manifest_is_loaded_as_a_torch_policy_through_vpp_policy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vpp.policy.policy", None)
    with pytest.raises(
        TorchPolicyUnavailableError, match=r"no manifest\.json, so it is not an exported artifact"
    ):
        load_policy(str(tmp_path))


def test_a_policy_server_url_connects_through_the_runtime_client():
    import socket

    from vpp.runtime.client import PolicyConnectionError

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PolicyConnectionError, match=f"127.0.0.1:{port}"):
        load_policy(f"ws://127.0.0.1:{port}")


def test_a_controller_that_cannot_be_reached_is_a_message_not_a_traceback(tmp_path, capsys):
    # nothing serves FCI on this loopback address (franky-sim, when a test runs one, is on 127.0.0.1)
    argv = ["run", "--robot", "franka", "--host", "127.0.0.3", "--policy", "hold", "--instruction", "x"]
    assert main([*argv, "--seconds", "1", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "vpp-robot run: RobotConnectionError: cannot connect to Franka at 127.0.0.3" in err
    assert "Traceback" not in err


def test_the_report_timeout_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "run",
                "--robot",
                "xarm",
                "--host",
                "127.0.0.3",
                "--policy",
                "hold",
                "--instruction",
                "x",
                "--report-timeout",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "expected a positive number of seconds" in capsys.readouterr().err

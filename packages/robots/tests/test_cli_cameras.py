"""`vpp-robot run --camera`: real cameras bound to the policy's camera names, checked before any
arm connects, and a whole run on the xArm (its loopback fake controller) with replayed cameras."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_cameras import coloured_frames, write_sequence, write_video_file

from vpp.data.lerobot import LeRobotDataset
from vpp.data.video_io import read_video
from vpp.robots import cli
from vpp.robots.control_loop import ACTION_DIM

pytest.importorskip("cv2")

IMAGE_SIZE = 16


class CameraPolicy:
    """Holds the arm still and keeps what it was shown; names its cameras like an artifact."""

    def __init__(self, cameras=("scene", "wrist"), image_size=IMAGE_SIZE):
        self.cameras = list(cameras)
        self.image_size = image_size
        self.observations: list[dict] = []

    def act(self, observation, instruction):
        self.observations.append(observation)
        actions = np.zeros((4, ACTION_DIM), dtype=np.float32)
        actions[:, 6] = 1.0
        return actions


@pytest.fixture
def policy(monkeypatch):
    policy = CameraPolicy()
    monkeypatch.setattr(cli, "load_policy", lambda path, threads=None: policy)
    return policy


@pytest.fixture
def arms_must_not_connect(monkeypatch):
    """Any arm connecting fails the test: binding errors must come first."""
    from vpp.robots.drivers.franka import FrankaRobot
    from vpp.robots.drivers.xarm import XArmRobot

    connected = []
    for cls in (FrankaRobot, XArmRobot):
        monkeypatch.setattr(cls, "connect", lambda self: connected.append(type(self).__name__))
    yield
    assert connected == [], f"an arm connected: {connected}"


@pytest.fixture
def recordings(tmp_path):
    """A 64x48 video and a 64x48 image sequence: each can give 16-pixel and 48-pixel squares."""
    video = write_video_file(tmp_path / "scene.mp4", coloured_frames(10, 48, 64), fps=20)
    frames = write_sequence(tmp_path / "wrist", coloured_frames(4, 48, 64)[::-1])
    return {"scene": f"opencv:{video},loop=1", "wrist": f"opencv:{frames}/%04d.png,loop=1"}


def run(tmp_path, robot="xarm", *extra):
    return cli.main(
        [
            "run",
            "--robot",
            robot,
            "--host",
            "127.0.0.1",
            "--policy",
            "stand-in",
            "--instruction",
            "pick",
            "--out",
            str(tmp_path / "out"),
            # the fake controller's reports share this process: see test_real_robot_e2e.py
            "--report-timeout",
            "1.0",
            *extra,
        ]
    )


@pytest.mark.usefixtures("policy", "arms_must_not_connect")
@pytest.mark.parametrize("robot", ["xarm", "franka"])
def test_a_camera_the_policy_needs_but_nobody_bound_stops_the_run_before_the_arm(
    tmp_path, recordings, capsys, robot
):
    assert run(tmp_path, robot, "--camera", f"scene={recordings['scene']}") == 2
    error = capsys.readouterr().err
    assert (
        "CameraBindingError: the policy needs cameras ['scene', 'wrist'], and ['wrist'] is not bound" in error
    )
    assert "add --camera wrist=..." in error
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("policy", "arms_must_not_connect")
def test_a_camera_name_the_policy_does_not_have_is_refused(tmp_path, recordings, capsys):
    code = run(
        tmp_path,
        "xarm",
        "--camera",
        f"scene={recordings['scene']}",
        "--camera",
        f"wrist={recordings['wrist']}",
        "--camera",
        f"side={recordings['scene']}",
    )
    assert code == 2
    assert "--camera side=...: the policy has no camera 'side'; its cameras are ['scene', 'wrist']" in (
        capsys.readouterr().err
    )


@pytest.mark.usefixtures("arms_must_not_connect")
def test_a_camera_too_small_for_the_policy_says_which_resolution_to_stream(
    tmp_path, recordings, monkeypatch, capsys
):
    monkeypatch.setattr(cli, "load_policy", lambda path, threads=None: CameraPolicy(image_size=64))
    code = run(
        tmp_path,
        "xarm",
        "--camera",
        f"scene={recordings['scene']}",
        "--camera",
        f"wrist={recordings['wrist']}",
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "camera 'scene'" in error and "streams 64x48, but the policy needs 64x64 images" in error
    assert "shorter side is at least 64 pixels (add size=WxH to the camera" in error


@pytest.mark.usefixtures("policy", "arms_must_not_connect")
def test_a_missing_camera_device_stops_the_run_before_the_arm(tmp_path, recordings, capsys):
    code = run(
        tmp_path,
        "franka",
        "--camera",
        "scene=opencv:/dev/video99",
        "--camera",
        f"wrist={recordings['wrist']}",
    )
    assert code == 2
    assert "CameraNotFoundError: camera 'scene' (opencv:/dev/video99): /dev/video99 does not exist" in (
        capsys.readouterr().err
    )


@pytest.mark.usefixtures("policy", "arms_must_not_connect")
def test_a_missing_realsense_stops_the_run_before_the_arm(tmp_path, recordings, capsys):
    code = run(
        tmp_path,
        "xarm",
        "--camera",
        "scene=realsense:123456789012",
        "--camera",
        f"wrist={recordings['wrist']}",
    )
    assert code == 2
    error = capsys.readouterr().err
    # Without pyrealsense2 the error says how to install it; with it, that no such camera is connected.
    assert "no RealSense with serial number 123456789012" in error or "vpp-robots[realsense]" in error


@pytest.mark.usefixtures("policy", "arms_must_not_connect")
def test_bad_and_repeated_bindings_are_refused(tmp_path, recordings, capsys):
    assert run(tmp_path, "xarm", "--camera", "scene=webcam:0") == 2
    assert "unknown camera kind 'webcam'" in capsys.readouterr().err
    assert (
        run(tmp_path, "xarm", "--camera", f"scene={recordings['scene']}", "--camera", "scene=opencv:1") == 2
    )
    assert "--camera binds ['scene'] more than once" in capsys.readouterr().err


@pytest.mark.usefixtures("policy")
def test_a_simulated_arm_renders_its_own_cameras_and_refuses_camera_flags(tmp_path, recordings, capsys):
    code = cli.main(
        [
            "run",
            "--robot",
            "sim-panda",
            "--policy",
            "stand-in",
            "--instruction",
            "pick",
            "--out",
            str(tmp_path / "out"),
            "--camera",
            f"scene={recordings['scene']}",
        ]
    )
    assert code == 2
    assert "--robot sim-panda renders its own cameras ['scene', 'wrist']" in capsys.readouterr().err


def test_franka_enforces_realtime_unless_told_not_to(tmp_path, monkeypatch):
    from vpp.robots.drivers import franka

    configs = []

    class RefusedError(Exception):
        pass

    class RecordingFranka:
        def __init__(self, config, safety_filter):
            configs.append(config)

        def __enter__(self):
            raise RefusedError

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(franka, "FrankaRobot", RecordingFranka)
    for flags in ([], ["--no-enforce-realtime"], ["--enforce-realtime"]):
        with pytest.raises(RefusedError):
            cli.main(
                [
                    *("run", "--robot", "franka", "--host", "10.0.0.2", "--policy", "hold"),
                    *("--instruction", "x", "--out", str(tmp_path / "out"), *flags),
                ]
            )
    assert [config.enforce_realtime for config in configs] == [True, False, True]
    assert configs[0].hostname == "10.0.0.2"


def test_run_on_an_xarm_with_replayed_cameras_feeds_and_records_them(tmp_path, recordings, policy, fake_xarm):
    code = run(
        tmp_path,
        "xarm",
        "--camera",
        f"scene={recordings['scene']}",
        "--camera",
        f"wrist={recordings['wrist']}",
        "--seconds",
        "1.5",
        "--rate",
        "5",
    )
    out = tmp_path / "out"
    report = json.loads((out / "latency_report.json").read_text())
    assert code == 0, report["stop_reason"]
    assert report["robot"] == "xarm" and report["image_size"] == IMAGE_SIZE
    assert report["cameras"] == {"scene": recordings["scene"], "wrist": recordings["wrist"]}
    assert fake_xarm.enabled and fake_xarm.received
    # The policy saw both cameras as 16-pixel squares cut from the 64x48 recordings: the video's
    # frames have blue 30 and a red that rises by 20 a frame; the sequence is the same, reversed.
    assert len(policy.observations) >= 3
    for observation in policy.observations:
        assert set(observation) == {"scene", "wrist", "state"}
        for name in ("scene", "wrist"):
            image = observation[name]
            assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
            red_step = (int(image[0, 0, 0]) - 10) % 20
            assert abs(int(image[..., 2].mean()) - 30) <= 3 and min(red_step, 20 - red_step) <= 3
    rollout = read_video(out / "rollout.mp4")
    assert rollout.shape[1:] == (IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    episode = LeRobotDataset(out / "dataset").episode(0)
    assert episode.task == "pick" and episode.length == report["ticks"] == len(rollout)


@pytest.mark.usefixtures("arms_must_not_connect")
def test_a_torch_policy_names_its_cameras_and_image_size_through_its_configs(
    tmp_path, recordings, monkeypatch, capsys
):
    from types import SimpleNamespace

    torch_like = SimpleNamespace(
        config=SimpleNamespace(cameras=("static", "gripper")),
        tvp=SimpleNamespace(config=SimpleNamespace(image_size=64)),
    )
    assert cli.policy_cameras(torch_like) == ["static", "gripper"] and cli.policy_image_size(torch_like) == 64
    assert cli.policy_cameras(cli.BUILT_IN_POLICIES["hold"]()) is None
    monkeypatch.setattr(cli, "load_policy", lambda path, threads=None: torch_like)
    assert run(tmp_path, "xarm", "--camera", f"static={recordings['scene']}") == 2
    assert (
        "the policy needs cameras ['static', 'gripper'], and ['gripper'] is not bound"
        in capsys.readouterr().err
    )

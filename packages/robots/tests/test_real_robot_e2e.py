"""`vpp-robot run` end to end on the real-arm drivers, over loopback only: `--robot franka` against
franky-sim (MuJoCo FR3 speaking libfranka's protocol) and `--robot xarm` against the fake xArm
controller, each for 10 s at 10 Hz with the `sine` policy and with a tiny exported artifact, a
replayed video as the `scene` camera, and a clean stop; and franky-sim killed mid-run, which must
end the run with a RobotConnectionError in the written report and no traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_xarm_controller import STATE_STOPPED, serving_fake_xarm
from franky_sim_process import FrankySimProcess
from tiny_robot_artifact import IMAGE_SIZE as ARTIFACT_IMAGE_SIZE
from tiny_robot_artifact import INSTRUCTIONS, write_tiny_robot_artifact

from vpp.data.lerobot import LeRobotDataset
from vpp.data.video_io import read_video, write_video
from vpp.robots import cli
from vpp.robots.drivers.franka import FrankaConfig, FrankaRobot
from vpp.robots.safety import SafetyFilter, SafetyLimits

pytest.importorskip("cv2")

SECONDS, RATE_HZ, SERVO_HZ = 10.0, 10.0, 100.0
# The fake controller's report thread shares the test's process (and its GIL): on a loaded
# machine its 100 Hz reports can stall past the 0.3 s default, which reads as a lost link.
FAKE_REPORT_TIMEOUT = "1.0"
SINE_IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory) -> Path:
    """A 64x48 clip whose frames differ, replayed in a loop as the scene camera."""
    frames = np.zeros((20, 48, 64, 3), dtype=np.uint8)
    for index in range(len(frames)):
        frames[index] = (10 * index, 200 - 5 * index, 60)
    path = tmp_path_factory.mktemp("camera") / "scene.mp4"
    write_video(path, frames, fps=20)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return write_tiny_robot_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


@pytest.fixture
def franky_sim():
    sim = FrankySimProcess()
    yield sim
    sim.stop()


@pytest.fixture
def fake_xarm():
    with serving_fake_xarm(pose=[400.0, 0.0, 300.0, math.pi, 0.0, 0.0]) as fake:
        yield fake


def run_arguments(robot: str, host: str, policy: str, instruction: str, out: Path, video: Path) -> list[str]:
    arguments = [
        *("run", "--robot", robot, "--host", host, "--policy", policy, "--instruction", instruction),
        *("--seconds", str(SECONDS), "--rate", str(RATE_HZ), "--servo-rate", str(SERVO_HZ)),
        *("--camera", f"scene=opencv:{video},loop=1", "--inference-threads", "1", "--out", str(out)),
    ]
    if policy == "sine":
        arguments += ["--image-size", str(SINE_IMAGE_SIZE)]
    if robot == "franka":
        arguments.append("--no-enforce-realtime")
    else:
        arguments += ["--report-timeout", FAKE_REPORT_TIMEOUT]
    return arguments


def check_run(out: Path, robot: str, image_size: int) -> tuple[dict, np.ndarray]:
    """The written report, video and episode of a clean 10 s run; returns the report and states."""
    report = json.loads((out / "latency_report.json").read_text())
    assert report["stop_reason"] is None and report["robot"] == robot
    assert list(report["cameras"]) == ["scene"]
    # The loop keeps wall-clock time; on a loaded 2-core test machine (the simulator takes one
    # core) a tick can stall for a few hundred ms, so the bounds leave room for one or two.
    expected_ticks = SECONDS * RATE_HZ
    assert 0.85 * expected_ticks <= report["ticks"] <= expected_ticks + 1
    assert 0.85 * RATE_HZ <= report["policy_rate_hz"] <= 1.05 * RATE_HZ
    assert report["policy_period"]["p50_ms"] == pytest.approx(1000.0 / RATE_HZ, rel=0.05)
    assert report["servo_period"]["count"] >= 0.8 * SECONDS * SERVO_HZ
    assert report["servo_period"]["p50_ms"] == pytest.approx(1000.0 / SERVO_HZ, rel=0.1)
    assert report["chunks"] >= 5 and report["inference_latency"]["count"] >= 5
    video = read_video(out / "rollout.mp4")
    assert video.shape == (report["ticks"], image_size, image_size, 3)
    assert len(np.unique(video.reshape(len(video), -1)[:, 0])) > 1, "the replayed camera's frames must change"
    episode = LeRobotDataset(out / "dataset").episode(0)
    assert episode.length == report["ticks"]
    return report, episode.column("observation.state")


def check_franka_left_clean(host: str) -> None:
    """After a clean stop a new session connects and reads the arm without any fault."""
    arm = FrankaRobot(FrankaConfig(host, enforce_realtime=False), SafetyFilter(SafetyLimits.franka_fr3()))
    with arm:
        for _ in range(5):
            assert arm.observe().is_finite()
            time.sleep(0.02)


@pytest.mark.slow
def test_franka_runs_the_sine_policy_for_10_s_and_stops_cleanly(franky_sim, scene_video, tmp_path):
    out = tmp_path / "sine"
    assert cli.main(run_arguments("franka", franky_sim.host, "sine", "circle", out, scene_video)) == 0
    _, states = check_run(out, "franka", SINE_IMAGE_SIZE)
    # A 3 cm circle: the arm swept about 6 cm in x and y, and the gripper opened and closed.
    assert np.ptp(states[:, 0]) > 0.04 and np.ptp(states[:, 1]) > 0.04
    assert np.ptp(states[:, 7]) > 0.3
    check_franka_left_clean(franky_sim.host)


@pytest.mark.slow
def test_franka_runs_an_exported_artifact_for_10_s_and_stops_cleanly(
    franky_sim, scene_video, artifact, tmp_path
):
    out = tmp_path / "artifact"
    assert (
        cli.main(run_arguments("franka", franky_sim.host, str(artifact), INSTRUCTIONS[0], out, scene_video))
        == 0
    )
    _, states = check_run(out, "franka", ARTIFACT_IMAGE_SIZE)
    assert np.ptp(states[:, :3], axis=0).max() > 0.002, "the artifact's actions must move the arm"
    check_franka_left_clean(franky_sim.host)


@pytest.mark.slow
def test_xarm_runs_the_sine_policy_for_10_s_and_stops_cleanly(fake_xarm, scene_video, tmp_path):
    out = tmp_path / "sine"
    assert cli.main(run_arguments("xarm", "127.0.0.1", "sine", "circle", out, scene_video)) == 0
    _, states = check_run(out, "xarm", SINE_IMAGE_SIZE)
    assert np.ptp(states[:, 0]) > 0.04 and np.ptp(states[:, 1]) > 0.04
    # The gripper followed the circle's opening and closing (0.5 + 0.5 cos), read back from the fake.
    assert np.ptp(states[:, 7]) > 0.5
    assert len(fake_xarm.gripper.targets) >= 20
    assert fake_xarm.state == STATE_STOPPED  # the run ended with a stop
    assert fake_xarm.received and all(motion.executed for motion in fake_xarm.received)


@pytest.mark.slow
def test_xarm_runs_an_exported_artifact_for_10_s_and_stops_cleanly(
    fake_xarm, scene_video, artifact, tmp_path
):
    out = tmp_path / "artifact"
    assert cli.main(run_arguments("xarm", "127.0.0.1", str(artifact), INSTRUCTIONS[0], out, scene_video)) == 0
    _, states = check_run(out, "xarm", ARTIFACT_IMAGE_SIZE)
    assert np.ptp(states[:, :3], axis=0).max() > 0.002
    assert fake_xarm.state == STATE_STOPPED
    assert all(motion.executed for motion in fake_xarm.received)


def test_killing_franky_sim_mid_run_writes_a_report_with_the_connection_error(
    franky_sim, scene_video, tmp_path
):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "vpp.robots.cli",
        *run_arguments("franka", franky_sim.host, "sine", "circle", out, scene_video),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    running = threading.Event()

    def read_stderr() -> None:
        for line in process.stderr:
            stderr_lines.append(line)
            if " policy " in line and "Hz" in line:  # the live readout: the loop is running
                running.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert running.wait(60.0), "".join(stderr_lines)
        time.sleep(1.0)
        franky_sim.kill()
        stdout, _ = process.communicate(timeout=30.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=5.0)
    stderr = "".join(stderr_lines)
    assert process.returncode == 1, stderr
    report = json.loads((out / "latency_report.json").read_text())
    assert report["stop_reason"].startswith("RobotConnectionError: lost connection to Franka"), report[
        "stop_reason"
    ]
    assert report["ticks"] >= 10
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    assert stdout.startswith("policy rate "), "the run ends with its rate verdict, as a clean one does"

"""`vpp-robot collect replay`: a LeRobot dataset's actions replayed on a real arm (the xArm's
loopback fake controller here) while a bound camera is recorded into a new dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_cameras import coloured_frames, write_video_file

from vpp.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from vpp.robots import cli
from vpp.robots.control_loop import ACTION_DIM, chunk_to_waypoints, rollout_features
from vpp.robots.replay import GoToPosePolicy, ReplayError, parse_episodes

pytest.importorskip("cv2")

# The fake xArm starts at x 400 mm, y 0, z 300 mm, pointing down (roll pi).
HOME = np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, 1.0])


def source_actions() -> list[tuple[str, np.ndarray]]:
    first = np.zeros((10, ACTION_DIM), dtype=np.float32)
    first[:, 0], first[:, 6] = 0.004, 1.0  # 4 cm along x, gripper open
    second = np.zeros((8, ACTION_DIM), dtype=np.float32)
    second[:, 1], second[:, 6] = -0.003, 0.5  # 2.4 cm along -y
    return [("push right", first), ("slide back", second)]


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "source"
    writer = LeRobotDatasetWriter(
        root, fps=10, features=rollout_features({"scene": (8, 8, 3)}), robot_type="xarm"
    )
    try:
        for task, actions in source_actions():
            states = np.tile(HOME.astype(np.float32), (len(actions), 1))
            frames = np.zeros((len(actions), 8, 8, 3), dtype=np.uint8)
            writer.add_episode(
                {"observation.images.scene": frames, "observation.state": states, "action": actions},
                task=task,
            )
    finally:
        writer.finalize()
    return root


@pytest.fixture
def camera(tmp_path) -> str:
    video = write_video_file(tmp_path / "scene.mp4", coloured_frames(10, 48, 64), fps=20)
    return f"scene=opencv:{video},loop=1"


def collect(source, camera, out, *extra):
    return cli.main(
        [
            *("collect", "replay", "--source", str(source), "--robot", "xarm", "--host", "127.0.0.1"),
            *("--camera", camera, "--out", str(out), "--image-size", "16", "--report-timeout", "1.0", *extra),
        ]
    )


def test_replayed_episodes_are_recorded_with_the_camera_and_resume(
    tmp_path, source, camera, fake_xarm, capsys
):
    out = tmp_path / "demos"
    # On a loaded machine (Pants runs test batches side by side) a replay may miss a 10 Hz tick;
    # the collector drops such an attempt and replays again, which extra attempts leave room for.
    assert collect(source, camera, out, "--max-attempts", "6") == 0
    assert "2 expert episodes kept" in capsys.readouterr().out
    dataset = LeRobotDataset(out)
    assert dataset.num_episodes == 2 and dataset.fps == 10 and dataset.robot_type == "xarm"
    for index, (task, actions) in enumerate(source_actions()):
        episode = dataset.episode(index)
        assert episode.task == task and episode.length == len(actions)
        # What the loop commanded at each tick is the replayed action.
        np.testing.assert_allclose(episode.column("action"), actions, atol=1e-5)
        states = episode.column("observation.state")
        # Every replay starts where the collection began (the arm is brought back in between)
        # and moves as its actions say.
        np.testing.assert_allclose(states[0, :3], HOME[:3], atol=0.004)
        moved = states[-1, :3] - states[0, :3]
        expected = actions[:-1, :3].sum(axis=0)
        np.testing.assert_allclose(moved, expected, atol=0.01)
        assert np.linalg.norm(moved) > 0.5 * np.linalg.norm(expected)
        frames = episode.read_frames("observation.images.scene", range(episode.length))
        assert frames.shape == (len(actions), 16, 16, 3)
        assert abs(float(frames[..., 2].mean()) - 30) < 4  # the video's blue, not an empty frame
    state = json.loads((out / "collection_state.json").read_text())
    assert state["source"] == "replayed-actions" and state["settings"]["cameras"] == ["scene"]
    assert sorted(state["tasks"]) == ["episode-000000", "episode-000001"]
    for attempts in state["tasks"].values():
        # every attempt but the last was dropped (an overrun); the last one was kept
        assert [attempt.get("episode_index") is not None for attempt in attempts] == [False] * (
            len(attempts) - 1
        ) + [True]
    # Resumed: nothing is replayed twice; a wider selection adds only what is new.
    received = len(fake_xarm.received)
    assert collect(source, camera, out, "--episodes", "0-1") == 0
    assert len(fake_xarm.received) == received and LeRobotDataset(out).num_episodes == 2


@pytest.mark.usefixtures("fake_xarm")
def test_replay_refuses_what_it_cannot_use_before_the_arm_connects(
    tmp_path, source, camera, monkeypatch, capsys
):
    from vpp.robots.drivers.xarm import XArmRobot

    connected = []
    monkeypatch.setattr(XArmRobot, "connect", connected.append)
    assert collect(source, camera, tmp_path / "a", "--episodes", "0,7") == 2
    assert "[7]; the source holds episodes 0 to 1" in capsys.readouterr().err
    code = cli.main(
        [
            *("collect", "replay", "--source", str(source), "--robot", "xarm", "--host", "127.0.0.1"),
            *("--out", str(tmp_path / "b")),
        ]
    )
    assert code == 2 and "bind at least one with --camera" in capsys.readouterr().err
    assert collect(tmp_path / "nothing", camera, tmp_path / "c") == 2
    assert "not a LeRobot v3 dataset folder" in capsys.readouterr().err
    assert collect(source, "scene=opencv:/dev/video99", tmp_path / "d") == 2
    assert "/dev/video99 does not exist" in capsys.readouterr().err
    assert connected == []


def test_parse_episodes():
    assert parse_episodes(None, 3) == [0, 1, 2] and parse_episodes("all", 2) == [0, 1]
    assert parse_episodes("4,0-2,1", 5) == [4, 0, 1, 2]
    with pytest.raises(ReplayError, match="'x' is not an index"):
        parse_episodes("x", 5)


def test_go_to_pose_steps_reach_the_target_within_the_step_limits():
    start = np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, 1.0])
    target = np.array(
        [0.43, -0.02, 0.28, *np.array([0.9950042, 0.0, 0.0998334, 0.0]), 0.0]
    )  # 0.2 rad about y
    policy = GoToPosePolicy(target, step_m=0.01, step_rad=0.05)
    actions = policy.act({"state": start}, "")
    final = chunk_to_waypoints(actions.astype(np.float64), start[:3], start[3:7])[-1]
    # 4.1 cm takes 5 steps of at most 1 cm (0.2 rad would take 4 of 0.05 rad).
    assert len(actions) == 5
    assert np.all(np.linalg.norm(actions[:, :3], axis=1) <= 0.01 + 1e-7)
    assert np.all(np.linalg.norm(actions[:, 3:6], axis=1) <= 0.05 + 1e-7)
    np.testing.assert_allclose(final[:3], target[:3], atol=1e-6)
    assert abs(abs(final[3:7] @ target[3:7]) - 1.0) < 1e-6 and final[7] == 0.0

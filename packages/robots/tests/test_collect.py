"""The scripted expert grasps the cube in the sim; `vpp-robot collect` writes and resumes a LeRobot dataset."""

from dataclasses import replace

import numpy as np
import pytest

from vpp.data.lerobot import LeRobotDataset
from vpp.robots.collect import CollectConfig, CollectionError, collect_sim_demos
from vpp.robots.control_loop import chunk_to_waypoints, state_vector
from vpp.robots.drivers.sim import CUBE_HALF_SIZE_M, SimConfig, SimPanda
from vpp.robots.experts import GRASP_INSTRUCTION, GraspCubeExpert
from vpp.robots.interfaces import EndEffectorPose
from vpp.robots.safety import SafetyFilter

SERVO_PERIOD_S = 0.01
POLICY_PERIOD_S = 0.1


@pytest.fixture
def arm():
    robot = SimPanda(SimConfig(realtime=False, image_height=32, image_width=32, start_tcp_position="ready", object_jitter_m=0.1))
    # Physics only moves in advance(): the filter's rate limits must run on simulated time.
    limits = replace(SimPanda.default_limits(), control_period_s=SERVO_PERIOD_S)
    robot.safety_filter = SafetyFilter(limits, robot.forward_kinematics, clock=lambda: robot.data.time)
    robot.connect()
    yield robot
    robot.close()


@pytest.mark.parametrize("seed", [3, 11])
def test_the_expert_grasps_the_cube_from_the_ready_pose(arm, seed):
    arm.reset(seed)
    start = arm.observe()
    np.testing.assert_allclose(start.ee_position, SimPanda.ready_tcp_position, atol=5e-3)
    spawn = arm.object_position()
    expert = GraspCubeExpert(arm)
    # The ControlLoop's pattern in simulated time: one chunk per policy tick, its first waypoint
    # streamed to the servo at the servo rate.
    for _ in range(round(10.0 / POLICY_PERIOD_S)):
        state = arm.observe()
        if expert.done(state):
            break
        chunk = expert.act({"state": state_vector(state)}, GRASP_INSTRUCTION)
        waypoint = chunk_to_waypoints(chunk[:1], state.ee_position, state.ee_quaternion)[0]
        for _ in range(round(POLICY_PERIOD_S / SERVO_PERIOD_S)):
            arm.send(EndEffectorPose(waypoint[:3], waypoint[3:7], gripper=float(waypoint[7])))
            arm.advance(SERVO_PERIOD_S)
    final = arm.observe()
    assert expert.done(final), f"tcp {final.ee_position.round(3)} cube {arm.object_position().round(3)} gripper {final.gripper_opening:.2f}"
    assert arm.data.time < 8.0
    # It closed on the cube instead of shoving it aside, and the fingers did not shut on nothing.
    assert np.linalg.norm(arm.object_position()[:2] - spawn[:2]) < 0.01
    # (on the 5 cm cube the 8 cm hand stops at about 0.62 of its opening)
    assert final.gripper_opening > 0.4


def test_reset_respawns_the_cube_by_seed_and_homes_the_arm(arm):
    arm.reset(1)
    first = arm.object_position()
    arm.advance(0.2)
    arm.reset(2)
    second = arm.object_position()
    arm.reset(1)
    np.testing.assert_allclose(arm.object_position(), first, atol=1e-9)
    assert np.linalg.norm(first[:2] - second[:2]) > 1e-3
    assert first[2] == pytest.approx(CUBE_HALF_SIZE_M, abs=1e-6)
    np.testing.assert_allclose(arm.observe().ee_position, SimPanda.ready_tcp_position, atol=5e-3)


@pytest.mark.slow
def test_collect_writes_expert_episodes_that_read_back_and_resumes(tmp_path):
    config = CollectConfig(episodes=1, image_size=32)
    progress = collect_sim_demos(tmp_path, config, progress_bar=False)
    assert progress.kept == 1
    dataset = LeRobotDataset(tmp_path)
    assert dataset.num_episodes == 1 and dataset.fps == 10 and dataset.robot_type == "sim_panda"
    assert set(dataset.video_keys) == {"observation.images.scene", "observation.images.wrist"}
    episode = dataset.episode(0)
    assert episode.task == GRASP_INSTRUCTION and episode.length >= config.min_ticks
    frames = episode.read_frames("observation.images.scene", [0, episode.length - 1])
    assert frames.shape == (2, 32, 32, 3) and frames.std() > 5
    actions = episode.column("action")
    states = episode.column("observation.state")
    assert actions.shape == (episode.length, 7) and states.shape == (episode.length, 8)
    # It moved down to the cube and closed the gripper at the end.
    assert states[-1, 2] < states[0, 2] - 0.1
    assert actions[0, 6] == 1.0 and actions[-1, 6] == 0.0
    first_length = episode.length

    more = collect_sim_demos(tmp_path, replace(config, episodes=2), progress_bar=False)
    assert more.kept == 2
    resumed = LeRobotDataset(tmp_path)
    assert resumed.num_episodes == 2 and resumed.episode(0).length == first_length
    np.testing.assert_array_equal(resumed.episode(0).column("action"), actions)
    # Asking for what is already there collects nothing; other settings are refused.
    assert collect_sim_demos(tmp_path, replace(config, episodes=2), progress_bar=False).next_attempt == more.next_attempt
    with pytest.raises(CollectionError, match="object_jitter_m"):
        collect_sim_demos(tmp_path, replace(config, episodes=3, object_jitter_m=0.05), progress_bar=False)

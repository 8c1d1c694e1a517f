"""The scripted expert grasps and lifts the cube in the sim; the simulator's grasp test; the
simulated-time loop; `vpp-robot collect grasp` writes and resumes a LeRobot dataset."""

import json
from dataclasses import replace

import numpy as np
import pytest

from vpp.data.lerobot import LeRobotDataset
from vpp.robots.collect import (
    GRASP_TASK,
    STATE_FILE,
    CollectConfig,
    CollectionError,
    CollectionState,
    OldCollectionError,
    collect_sim_demos,
)
from vpp.robots.control_loop import RolloutRecorder, chunk_to_waypoints
from vpp.robots.drivers.sim import CUBE_HALF_SIZE_M, GRASP_LIFT_M, SimConfig, SimPanda, build_sim_arm
from vpp.robots.experts import GRASP_INSTRUCTION, GraspCubeExpert
from vpp.robots.policies import HoldPolicy
from vpp.robots.sim_loop import PolicyOutputError, SimulatedTimeConfig, SimulatedTimeLoop


@pytest.fixture
def arm():
    robot = build_sim_arm(
        "sim-panda",
        SimConfig(
            realtime=False, image_height=32, image_width=32, start_tcp_position="ready", object_jitter_m=0.1
        ),
        100.0,
    )
    robot.connect()
    yield robot
    robot.close()


def run_expert(arm, seed: int, recorder: RolloutRecorder | None = None):
    arm.reset(seed)
    expert = GraspCubeExpert(arm)
    loop = SimulatedTimeLoop(
        arm,
        arm.cameras() if recorder is not None else [],
        expert,
        SimulatedTimeConfig(execute_steps=None),
        recorder=recorder,
    )
    return expert, loop.run(GRASP_INSTRUCTION, max_ticks=150, until=expert.done)


@pytest.mark.parametrize("seed", [3, 11])
def test_the_expert_grasps_and_lifts_the_cube_from_the_ready_pose(arm, seed):
    arm.reset(seed)
    np.testing.assert_allclose(arm.observe().ee_position, SimPanda.ready_tcp_position, atol=5e-3)
    spawn = arm.object_position()
    assert not arm.object_grasped() and arm.object_lift_m() == pytest.approx(0.0, abs=1e-6)
    expert, report = run_expert(arm, seed)
    final = arm.observe()
    assert report.finished, (
        f"tcp {final.ee_position.round(3)} cube {arm.object_position().round(3)} gripper {final.gripper_opening:.2f}"
    )
    assert report.simulated_s < 8.0
    assert arm.object_grasped(lift_m=expert.lift_m) and arm.object_held()
    # It closed on the cube instead of shoving it aside, and the fingers did not shut on nothing.
    assert np.linalg.norm(arm.object_position()[:2] - spawn[:2]) < 0.01
    # (on the 5 cm cube the 8 cm hand stops at about 0.62 of its opening)
    assert final.gripper_opening > 0.4


def test_the_grasp_test_needs_the_cube_both_lifted_and_between_the_fingers(arm):
    _, report = run_expert(arm, 5)
    assert report.finished and arm.object_grasped()
    # Opened, the hand lets the cube fall back to the table: no longer held, no longer lifted.
    arm.reset(5)
    cube = arm._cube_qpos
    # A cube placed in the air away from the hand is lifted but held by nothing.
    arm.data.qpos[cube + 2] = CUBE_HALF_SIZE_M + 2 * GRASP_LIFT_M
    arm.data.qpos[cube] += 0.1
    arm._mujoco.mj_forward(arm.model, arm.data)
    assert arm.object_lift_m() > GRASP_LIFT_M and not arm.object_held() and not arm.object_grasped()
    arm.advance(1.0)
    assert arm.object_lift_m() == pytest.approx(0.0, abs=2e-3), (
        "the unsupported cube falls back onto the table"
    )


def test_closing_on_the_cube_without_lifting_it_is_not_a_grasp(arm):
    arm.reset(7)
    expert = GraspCubeExpert(arm, lift_m=0.0)
    # lift_m=0: the expert stops as soon as it holds the cube, still resting on the table.
    SimulatedTimeLoop(arm, [], expert, SimulatedTimeConfig(execute_steps=None)).run(
        GRASP_INSTRUCTION, 150, until=lambda _: expert.holding(arm.observe().gripper_opening)
    )
    arm.advance(0.3)
    assert arm.object_held()
    assert arm.object_lift_m() < GRASP_LIFT_M and not arm.object_grasped()


def test_the_simulated_time_loop_records_steps_that_replay_the_commanded_waypoints(arm):
    recorder = RolloutRecorder(["scene", "wrist"])
    _, report = run_expert(arm, 2, recorder)
    assert report.finished and len(recorder) == report.ticks
    assert report.simulated_s == pytest.approx(report.ticks * 0.1, abs=1e-6)
    states, actions = np.stack(recorder.states), np.stack(recorder.actions)
    # The recorded steps, accumulated from the first observed pose, end where the hand went (it
    # trails the last waypoint by its tracking lag only), as the policy's chunks will be replayed.
    replayed = chunk_to_waypoints(actions, states[0, :3], states[0, 3:7])
    assert np.linalg.norm(replayed[-1, :3] - arm.observe().ee_position) < 0.01
    # Steps, not gaps to a lagging arm: while it travels, a recorded move is the expert's per-tick step.
    assert np.median(np.linalg.norm(actions[:, :3], axis=1)) == pytest.approx(
        GraspCubeExpert.speed_m_s * 0.1, abs=1e-6
    )
    assert actions[0, 6] == 1.0 and actions[-1, 6] == 0.0
    assert recorder.images["scene"][0].shape == (32, 32, 3)


def test_the_simulated_time_loop_refuses_a_realtime_arm_and_bad_chunks():
    realtime = SimPanda(SimConfig(image_height=32, image_width=32))
    with pytest.raises(ValueError, match="realtime=False"):
        SimulatedTimeLoop(realtime, [], HoldPolicy())

    class WrongShape:
        def act(self, observation, instruction):
            return np.zeros((4, 6))

    stepped = build_sim_arm("sim-panda", SimConfig(realtime=False, image_height=32, image_width=32), 100.0)
    with stepped, pytest.raises(PolicyOutputError, match=r"\(4, 6\)"):
        SimulatedTimeLoop(stepped, [], WrongShape()).run("x", max_ticks=3)


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
    state = collect_sim_demos(tmp_path, config, progress=False)
    assert state.tasks[GRASP_TASK].kept == 1
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
    # It moved down to the cube, closed the gripper and lifted the cube.
    assert states[:, 2].min() < states[0, 2] - 0.2 and states[-1, 2] > states[:, 2].min() + 0.04
    assert actions[0, 6] == 1.0 and actions[-1, 6] == 0.0
    first_length = episode.length
    progress = CollectionState.read(tmp_path).tasks[GRASP_TASK]
    assert (
        progress.next_attempt == 1
        and progress.attempts[0].seed == config.seed
        and len(progress.attempts[0].start) == 3
    )

    more = collect_sim_demos(tmp_path, replace(config, episodes=2), progress=False).tasks[GRASP_TASK]
    assert more.kept == 2
    resumed = LeRobotDataset(tmp_path)
    assert resumed.num_episodes == 2 and resumed.episode(0).length == first_length
    np.testing.assert_array_equal(resumed.episode(0).column("action"), actions)
    progress = CollectionState.read(tmp_path).tasks[GRASP_TASK]
    starts = [attempt.start for attempt in progress.attempts]
    assert [attempt.seed for attempt in progress.attempts] == list(range(progress.next_attempt))
    assert progress.next_attempt == 2 and starts[0] != starts[1]
    # Asking for what is already there collects nothing; other settings are refused.
    again = collect_sim_demos(tmp_path, replace(config, episodes=2), progress=False).tasks[GRASP_TASK]
    assert again.next_attempt == more.next_attempt
    with pytest.raises(CollectionError, match="object_jitter_m"):
        collect_sim_demos(tmp_path, replace(config, episodes=3, object_jitter_m=0.05), progress=False)


def test_a_state_of_the_previous_sim_arm_collector_is_refused_with_the_way_out(tmp_path):
    (tmp_path / STATE_FILE).write_text(
        json.dumps(
            {
                "settings": {"seed": 0},
                "progress": {"next_attempt": 1, "kept": 1, "dropped": 0, "cube_starts": [[0.5, 0.0, 0.025]]},
            }
        )
    )
    with pytest.raises(OldCollectionError, match=r"old sim-arm collector.*collect into a new folder"):
        collect_sim_demos(tmp_path, CollectConfig(episodes=1), progress=False)

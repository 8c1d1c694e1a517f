"""ControlLoop against a fake arm: timing under a slow model, stale/missed handling, faults,
safety of what reaches the driver, ensembling math and recording."""

import math
import threading
import time

import numpy as np
import pytest

from vpp.data.lerobot import LeRobotDataset
from vpp.robots.control_loop import (
    ControlLoop,
    ControlLoopConfig,
    RolloutRecorder,
    chunk_to_waypoints,
    combine_waypoints,
    ensemble_weights,
    waypoint_step,
)
from vpp.robots.interfaces import Camera, ControllerFaultError, EndEffectorPose, Robot, RobotState
from vpp.robots.policies import HoldPolicy, SinePolicy
from vpp.robots.rotations import rotation_angle_between, rotvec_to_quaternion, rpy_to_quaternion
from vpp.robots.safety import SafetyFilter, SafetyLimits

DOWN = rpy_to_quaternion([math.pi, 0.0, 0.0])
START = np.array([0.5, 0.0, 0.3])


class IdealArm(Robot):
    """Reaches every target at once; records what the driver received and when."""

    num_joints = 7

    def __init__(self, limits: SafetyLimits, fail_after: int | None = None):
        super().__init__(SafetyFilter(limits))
        self.position, self.quaternion, self.gripper = START.copy(), DOWN.copy(), 1.0
        self.received: list[tuple[float, EndEffectorPose]] = []
        self.fail_after = fail_after
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def connect(self) -> None:
        pass

    def observe(self) -> RobotState:
        with self.lock:
            return RobotState(
                np.zeros(7), self.position.copy(), self.quaternion.copy(), self.gripper, time.monotonic()
            )

    def _send_filtered(self, command) -> None:
        if self.fail_after is not None and len(self.received) >= self.fail_after:
            raise ControllerFaultError("joint 4 torque limit", code=7)
        with self.lock:
            self.received.append((time.monotonic(), command))
            self.position, self.quaternion = command.position.copy(), command.quaternion.copy()
            if command.gripper is not None:
                self.gripper = command.gripper

    def stop(self) -> None:
        self.stopped.set()

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoiseCamera(Camera):
    def __init__(self, name: str):
        self.name = name
        self.rng = np.random.default_rng(len(name))

    def read(self) -> np.ndarray:
        return self.rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)

    def close(self) -> None:
        pass


class SlowPolicy:
    """Takes `delay_s` per chunk and moves +x by `step_m` per action."""

    def __init__(self, delay_s: float, chunk: int = 4, step_m: float = 0.001):
        self.delay_s, self.chunk, self.step_m = delay_s, chunk, step_m
        self.calls = 0

    def act(self, observation, instruction):
        self.calls += 1
        time.sleep(self.delay_s)
        actions = np.zeros((self.chunk, 7))
        actions[:, 0] = self.step_m
        actions[:, 6] = 1.0
        return actions


def make_loop(policy, rate=20.0, servo=200.0, fail_after=None, **config):
    arm = IdealArm(SafetyLimits(control_period_s=1.0 / servo), fail_after=fail_after)
    loop = ControlLoop(
        arm,
        [NoiseCamera("scene")],
        policy,
        ControlLoopConfig(policy_rate_hz=rate, servo_rate_hz=servo, **config),
    )
    return arm, loop


def test_a_slow_model_never_blocks_the_loops_and_misses_are_held():
    policy = SlowPolicy(delay_s=0.12, chunk=2)
    arm, loop = make_loop(policy, execute_steps=2)
    report = loop.run("push", seconds=1.0)
    assert report.stop_reason is None
    # The policy loop kept its own clock (20 Hz) although every chunk took 2.4 periods.
    assert report.ticks >= 14
    assert policy.calls <= 9
    assert report.servo_period["p50_ms"] < 8.0
    assert report.inference_latency["mean_ms"] >= 120.0
    # Chunk actions due before the chunk arrived were dropped; the ticks with none were held.
    assert report.stale_actions_dropped >= 1
    assert report.missed_deadlines >= 1
    assert arm.stopped.is_set()
    gaps = np.diff([t for t, _ in arm.received])
    assert gaps.max() < 0.1, "the servo thread stalled"


def test_hold_keeps_the_pose_when_every_deadline_is_missed():
    policy = SlowPolicy(delay_s=0.3, chunk=1, step_m=0.0)
    arm, loop = make_loop(policy, execute_steps=1)
    report = loop.run("wait", seconds=0.8)
    assert report.missed_deadlines >= 3
    positions = np.array([command.position for _, command in arm.received])
    np.testing.assert_allclose(positions - START, 0.0, atol=1e-9)


def test_the_loop_stops_the_arm_on_a_driver_fault():
    arm, loop = make_loop(HoldPolicy(), fail_after=20)
    started = time.monotonic()
    report = loop.run("hold", seconds=5.0)
    assert time.monotonic() - started < 2.0
    assert "ControllerFaultError" in report.stop_reason and "torque limit" in report.stop_reason
    assert arm.stopped.is_set()
    assert len(arm.received) == 20


class BrokenArm(IdealArm):
    """An IdealArm whose link dies the way franky's does: after `observe_ok` observations (or
    `send_ok` sends) it raises a bare RuntimeError, not a RobotError; its stop may raise too."""

    def __init__(self, limits, observe_ok=None, send_ok=None, stop_raises=False):
        super().__init__(limits)
        self.observe_ok, self.send_ok, self.stop_raises = observe_ok, send_ok, stop_raises
        self.observations = 0

    def observe(self):
        self.observations += 1
        if self.observe_ok is not None and self.observations > self.observe_ok:
            raise RuntimeError("Net Exception")
        return super().observe()

    def _send_filtered(self, command):
        if self.send_ok is not None and len(self.received) >= self.send_ok:
            raise RuntimeError("Net Exception")
        super()._send_filtered(command)

    def stop(self):
        super().stop()
        if self.stop_raises:
            raise RuntimeError("Net Exception")


@pytest.fixture
def thread_crashes(monkeypatch):
    """Exceptions that escaped a thread (the traceback Python prints for them)."""
    crashes = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    return crashes


@pytest.mark.parametrize(
    "failure",
    [
        {"observe_ok": 30},  # the policy loop's and the servo's reads fail
        {"send_ok": 20},  # only the servo thread's commands fail
        {"send_ok": 20, "stop_raises": True},  # and stopping the arm afterwards fails too
    ],
)
def test_any_driver_exception_ends_the_run_with_its_report_and_no_thread_dies(failure, thread_crashes, capfd):
    arm = BrokenArm(SafetyLimits(control_period_s=1.0 / 200.0), **failure)
    loop = ControlLoop(arm, [NoiseCamera("scene")], HoldPolicy(), ControlLoopConfig(20.0, 200.0))
    started = time.monotonic()
    report = loop.run("hold", seconds=5.0)
    assert time.monotonic() - started < 2.0
    assert report.stop_reason == "RuntimeError: Net Exception"
    assert arm.stopped.is_set()
    assert thread_crashes == []
    assert "Traceback" not in capfd.readouterr().err


def test_a_dead_arm_at_the_start_gives_a_report_of_no_ticks():
    arm = BrokenArm(SafetyLimits(control_period_s=1.0 / 200.0), observe_ok=0)
    loop = ControlLoop(arm, [NoiseCamera("scene")], HoldPolicy(), ControlLoopConfig(20.0, 200.0))
    report = loop.run("hold", seconds=5.0)
    assert report.ticks == 0 and report.servo_commands == 0
    assert report.stop_reason == "RuntimeError: Net Exception"
    assert arm.stopped.is_set()


class WildPolicy:
    """Alternates NaN chunks with huge translations, rotations and gripper values."""

    def __init__(self):
        self.calls = 0

    def act(self, observation, instruction):
        self.calls += 1
        if self.calls % 2:
            return np.full((4, 7), np.nan)
        actions = np.zeros((4, 7))
        actions[:, :3] = [5.0, -3.0, 100.0]
        actions[:, 3:6] = [3.0, 0.0, -2.0]
        actions[:, 6] = 40.0
        return actions


def test_nothing_outside_the_safety_limits_reaches_the_driver():
    arm, loop = make_loop(WildPolicy(), rate=20.0, servo=200.0, replan_when_remaining=None)
    report = loop.run("go wild", seconds=0.8)
    limits = arm.safety_filter.limits
    assert report.rejected_chunks >= 1 and report.chunks >= 1
    commands = [command for _, command in arm.received]
    assert len(commands) > 50
    previous_position, previous_quaternion = START, DOWN
    for command in commands:
        assert np.all(np.isfinite(command.position)) and np.all(np.isfinite(command.quaternion))
        assert np.all(command.position >= np.array(limits.workspace_min) - 1e-9)
        assert np.all(command.position <= np.array(limits.workspace_max) + 1e-9)
        assert np.linalg.norm(command.position - previous_position) <= limits.position_step_limit_m + 1e-9
        assert (
            rotation_angle_between(previous_quaternion, command.quaternion)
            <= limits.rotation_step_limit_rad + 1e-6
        )
        assert limits.gripper_min <= command.gripper <= limits.gripper_max
        previous_position, previous_quaternion = command.position, command.quaternion
    assert commands[-1].position[2] > START[2], "the clamped motion still went the way the policy asked"


def test_ensemble_weights_follow_act():
    weights = ensemble_weights(3, decay=0.5)
    expected = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(weights, expected / expected.sum())
    np.testing.assert_allclose(ensemble_weights(4, decay=0.0), 0.25)


def test_combine_waypoints_weights_positions_and_rotations():
    quarter_turn = rotvec_to_quaternion([0.0, 0.0, math.pi / 2])
    old = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    new = np.array([1.0, 2.0, 0.0, *quarter_turn, 0.0])
    combined = combine_waypoints([old, new], decay=math.log(3.0))  # weights 3/4, 1/4
    np.testing.assert_allclose(combined[:3], [0.25, 0.5, 0.0])
    assert combined[7] == pytest.approx(0.75)
    # A weighted quaternion mean between identity and a quarter turn lies on that arc, nearer the heavier one.
    angle = rotation_angle_between(old[3:7], combined[3:7])
    assert 0.2 < angle < 0.45
    flipped = new.copy()
    flipped[3:7] = -new[3:7]
    np.testing.assert_allclose(combine_waypoints([old, flipped], decay=math.log(3.0)), combined, atol=1e-12)


def test_chunk_deltas_accumulate_from_the_observed_pose():
    chunk = np.zeros((3, 7))
    chunk[:, 0] = 0.01
    chunk[:, 5] = 0.1
    chunk[:, 6] = [0.0, 0.5, 1.0]
    waypoints = chunk_to_waypoints(chunk, START, DOWN)
    np.testing.assert_allclose(waypoints[:, 0], START[0] + [0.01, 0.02, 0.03])
    assert rotation_angle_between(DOWN, waypoints[2, 3:7]) == pytest.approx(0.3)
    np.testing.assert_allclose(waypoints[:, 7], [0.0, 0.5, 1.0])


def test_temporal_ensembling_runs_and_moves_smoothly():
    arm, loop = make_loop(
        SlowPolicy(delay_s=0.0, chunk=6),
        execute_steps=6,
        temporal_ensemble_decay=0.1,
        replan_when_remaining=None,
    )
    report = loop.run("push", seconds=0.6)
    assert report.stop_reason is None and report.chunks >= 5
    assert arm.position[0] > START[0] + 0.003


def test_a_recorded_rollout_reads_back_as_a_lerobot_episode(tmp_path):
    arm = IdealArm(SafetyLimits(control_period_s=0.01))
    cameras = [NoiseCamera("scene"), NoiseCamera("wrist")]
    recorder = RolloutRecorder([c.name for c in cameras])
    loop = ControlLoop(arm, cameras, SinePolicy(), ControlLoopConfig(policy_rate_hz=10.0), recorder=recorder)
    report = loop.run("draw a circle", max_ticks=6)
    recorder.save_episode(tmp_path / "dataset", fps=10, instruction="draw a circle", robot_type="ideal")
    dataset = LeRobotDataset(tmp_path / "dataset")
    assert dataset.num_episodes == 1 and dataset.robot_type == "ideal"
    episode = dataset.episode(0)
    assert episode.length == len(recorder) == report.ticks
    assert episode.task == "draw a circle"
    np.testing.assert_allclose(episode.column("observation.state"), np.stack(recorder.states), rtol=1e-6)
    np.testing.assert_allclose(episode.column("action"), np.stack(recorder.actions), rtol=1e-6)
    frames = episode.read_frames("observation.images.wrist", [0, episode.length - 1])
    assert frames.shape == (2, 32, 48, 3)


class LaggingArm(IdealArm):
    """Moves a fixed fraction of the way to each target it receives, like a servo behind its setpoint."""

    def __init__(self, limits: SafetyLimits, follow: float):
        super().__init__(limits)
        self.follow = follow

    def _send_filtered(self, command) -> None:
        with self.lock:
            self.received.append((time.monotonic(), command))
            self.position = self.position + self.follow * (command.position - self.position)
            self.quaternion = command.quaternion.copy()


def test_waypoint_steps_invert_chunk_to_waypoints():
    rng = np.random.default_rng(0)
    chunk = np.concatenate(
        [rng.uniform(-0.01, 0.01, (5, 3)), rng.uniform(-0.05, 0.05, (5, 3)), rng.uniform(0, 1, (5, 1))],
        axis=1,
    )
    waypoints = chunk_to_waypoints(chunk, START, DOWN)
    previous = np.concatenate([START, DOWN, [1.0]])
    steps = []
    for waypoint in waypoints:
        steps.append(waypoint_step(previous, waypoint))
        previous = waypoint
    np.testing.assert_allclose(np.stack(steps), chunk, atol=1e-6)


def test_recorded_actions_are_the_commanded_steps_not_the_arms_tracking_lag():
    # An arm that trails its targets: the gap between its observed pose and the next waypoint is
    # the commanded step plus the lag. A recording that stored that gap as the action would make a
    # replayed chunk run ahead of the motion it was recorded from (1.6x on the sim Panda).
    step = 0.002
    arm = LaggingArm(SafetyLimits(control_period_s=0.01), follow=0.1)
    recorder = RolloutRecorder(["scene"])
    policy = SlowPolicy(delay_s=0.0, chunk=8, step_m=step)
    loop = ControlLoop(
        arm,
        [NoiseCamera("scene")],
        policy,
        ControlLoopConfig(policy_rate_hz=20.0, servo_rate_hz=100.0, execute_steps=8),
        recorder=recorder,
    )
    report = loop.run("push", max_ticks=20)
    assert report.stop_reason is None and report.chunks >= 2
    actions = np.stack(recorder.actions)
    # Within a chunk every recorded action is the policy's step (a chunk's first one differs: it
    # starts from the observed, lagging pose, after any stale actions were dropped).
    assert np.median(actions[:, 0]) == pytest.approx(step, abs=1e-6)
    # Replayed from the first observed pose, the recorded steps end where the commands ended.
    travelled = START[0] + actions[:, 0].sum()
    assert abs(travelled - arm.received[-1][1].position[0]) < 2 * step


def test_until_ends_the_run_at_the_first_tick_it_holds_and_that_tick_is_not_recorded():
    arm = IdealArm(SafetyLimits(control_period_s=0.01))
    recorder = RolloutRecorder(["scene"])
    loop = ControlLoop(
        arm,
        [NoiseCamera("scene")],
        SlowPolicy(delay_s=0.0, step_m=0.002),
        ControlLoopConfig(policy_rate_hz=20.0),
        recorder=recorder,
    )
    report = loop.run("push", seconds=5.0, until=lambda state: state.ee_position[0] > START[0] + 0.01)
    assert report.stop_reason is None and report.duration_s < 3.0
    assert len(recorder) == report.ticks
    assert all(state[0] <= START[0] + 0.01 for state in recorder.states)
    assert arm.observe().ee_position[0] > START[0] + 0.01


def test_the_report_says_whether_the_policy_rate_held():
    _, loop = make_loop(HoldPolicy(), rate=20.0)
    report = loop.run("hold", seconds=0.6)
    assert report.target_rate_hz == 20.0
    assert report.policy_rate_hz == pytest.approx(20.0, rel=0.05)
    assert report.rate_held and report.missed_deadlines == 0
    assert report.observe_latency["count"] == report.ticks
    _, late = make_loop(SlowPolicy(delay_s=0.2, chunk=1), rate=20.0, execute_steps=1)
    late_report = late.run("push", seconds=0.8)
    assert late_report.missed_deadlines >= 1 and not late_report.rate_held


def test_a_model_slower_than_a_tick_misses_no_deadline_and_its_first_chunk_is_ready_at_the_start():
    def seconds_until_the_arm_moves(arm) -> float:
        first_command_time = arm.received[0][0]
        return next(t for t, command in arm.received if command.position[0] > START[0]) - first_command_time

    arm, loop = make_loop(SlowPolicy(delay_s=0.2, chunk=10), rate=20.0, execute_steps=None)
    report = loop.run("push", seconds=1.5)
    assert report.warmup_inference_s >= 0.2 and report.chunks >= 3
    assert report.missed_deadlines == 0 and report.rate_held
    assert seconds_until_the_arm_moves(arm) < 0.1
    # Started cold, the arm waits out the model's first call after the clock has started.
    cold_arm, cold = make_loop(
        SlowPolicy(delay_s=0.2, chunk=10), rate=20.0, execute_steps=None, warmup_inference=False
    )
    cold.run("push", seconds=1.0)
    assert seconds_until_the_arm_moves(cold_arm) > 0.2

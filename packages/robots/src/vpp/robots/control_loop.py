"""Runs a chunking policy on an arm at a fixed policy rate without ever waiting on the model.

Three threads:
- the policy loop (the caller of `ControlLoop.run`): at each tick of the policy rate it reads the
  cameras and the arm, feeds finished chunks into the schedule, hands the interpolator the
  waypoint due at the next tick, and gives the model a fresh observation when it is idle and
  the schedule runs short (shorter than the model's recent latency, by default);
- inference: `policy.act(observation, instruction)` in the background, one call at a time;
- the servo: interpolates between waypoints at the controller's rate and streams every target
  through `Robot.send` (so through the SafetyFilter). It does no image work.

Actions are 7 numbers per step: end-effector translation delta (m) and rotation-vector delta
(rad) in the base frame, and the absolute gripper opening in [0, 1]. A chunk computed from the
observation taken at tick n is turned into absolute waypoints (deltas accumulated from the
observed pose), and its action i is due at tick n + 1 + i. A recording stores, per tick, the step
from the waypoint the arm was heading for to the one handed out (`waypoint_step`). Only the first `execute_steps`
actions of a chunk are scheduled; those whose tick has already been handed out when the chunk
arrives are stale and dropped (as diffusion_policy's real-robot loop drops actions whose
timestamp has passed). With `temporal_ensemble_decay` set, every chunk's prediction for a tick is
kept and they are averaged with ACT's weights exp(-m * j), j = 0 for the oldest prediction;
without it the newest chunk replaces the schedule. A tick with no waypoint is a missed deadline:
the arm holds the last target. A driver fault or a lost connection ends the run in `stop()`,
with the reason logged and returned in the report; so does any other exception from the driver,
a camera or the model, in any thread: `run` returns its report rather than raising, and no thread
dies with an unhandled exception.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpp.robots.interfaces import (
    ActionPolicy,
    Camera,
    EndEffectorPose,
    Robot,
    RobotError,
    RobotState,
    read_cameras,
)
from vpp.robots.rotations import (
    normalize_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_rotvec,
    rotvec_to_quaternion,
    slerp,
)

logger = logging.getLogger(__name__)

ACTION_DIM = 7
STATE_DIM = 8


@dataclass(frozen=True)
class ControlLoopConfig:
    policy_rate_hz: float = 10.0
    servo_rate_hz: float = 100.0
    # k: how many actions of each chunk are scheduled (None: all of them).
    execute_steps: int | None = 8
    # A new observation goes to an idle model once at most this many scheduled ticks remain
    # (None: whenever the model is idle, as temporal ensembling wants).
    replan_when_remaining: int | None = 1
    # Raise that threshold to the ticks the model took on its recent chunks (+1), so that a model
    # slower than one tick is asked early enough for its next chunk to land before the schedule
    # runs out, instead of leaving the arm holding while it thinks.
    replan_from_latency: bool = True
    # The first chunk is computed before the clock starts, from the arm at rest: a runtime's first
    # call (allocation, graph warm-up) is much slower than the rest, and the arm then has actions
    # from the first tick on instead of missing deadlines while the model starts up.
    warmup_inference: bool = True
    # ACT's m; None turns temporal ensembling off.
    temporal_ensemble_decay: float | None = None

    def __post_init__(self) -> None:
        if not (self.policy_rate_hz > 0 and self.servo_rate_hz >= self.policy_rate_hz):
            raise ValueError(
                f"policy_rate_hz={self.policy_rate_hz}, servo_rate_hz={self.servo_rate_hz}; "
                "expected 0 < policy rate <= servo rate"
            )
        if self.execute_steps is not None and self.execute_steps < 1:
            raise ValueError(f"execute_steps={self.execute_steps}; expected >= 1 or None")
        if self.replan_when_remaining is not None and self.replan_when_remaining < 0:
            raise ValueError(f"replan_when_remaining={self.replan_when_remaining}; expected >= 0 or None")
        if self.temporal_ensemble_decay is not None and not self.temporal_ensemble_decay >= 0:
            raise ValueError(f"temporal_ensemble_decay={self.temporal_ensemble_decay}; expected >= 0 or None")

    @property
    def policy_period_s(self) -> float:
        return 1.0 / self.policy_rate_hz

    @property
    def servo_period_s(self) -> float:
        return 1.0 / self.servo_rate_hz


def timing_stats(samples_s: Sequence[float]) -> dict[str, float]:
    """Summary of durations in milliseconds (count, mean, std, p50, p95, max)."""
    values = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std()),
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "max_ms": float(values.max()),
    }


def ensemble_weights(num_predictions: int, decay: float) -> np.ndarray:
    """ACT's temporal-ensembling weights, oldest prediction first, summing to one."""
    weights = np.exp(-decay * np.arange(num_predictions, dtype=np.float64))
    return weights / weights.sum()


def combine_waypoints(predictions: Sequence[np.ndarray], decay: float) -> np.ndarray:
    """Weighted mean of waypoints [x, y, z, qx, qy, qz, qw, gripper] (oldest first)."""
    weights = ensemble_weights(len(predictions), decay)
    stacked = np.stack(predictions)
    reference = stacked[0, 3:7]
    # q and -q are the same rotation: align signs before averaging.
    quaternions = np.where((stacked[:, 3:7] @ reference)[:, None] < 0, -stacked[:, 3:7], stacked[:, 3:7])
    combined = weights @ stacked
    combined[3:7] = normalize_quaternion(weights @ quaternions)
    return combined


def chunk_to_waypoints(chunk: np.ndarray, position: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
    """Delta actions (N, 7) -> absolute waypoints (N, 8), accumulated from the given pose."""
    waypoints = np.empty((len(chunk), 8))
    for index, action in enumerate(chunk):
        position = position + action[:3]
        quaternion = normalize_quaternion(quaternion_multiply(rotvec_to_quaternion(action[3:6]), quaternion))
        waypoints[index] = [*position, *quaternion, action[6]]
    return waypoints


def state_vector(state: RobotState) -> np.ndarray:
    gripper = state.gripper_opening if state.gripper_opening is not None else 1.0
    return np.concatenate([state.ee_position, state.ee_quaternion, [gripper]]).astype(np.float32)


def waypoint_step(previous: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
    """The delta action from one waypoint to the next (what a recording stores): the inverse of
    `chunk_to_waypoints`, so that a recorded stretch of actions replayed from the pose observed at
    its start retraces the waypoints the loop commanded. (The gap between the observed pose and
    its waypoint is the arm's tracking lag; folded into every action, it would make a replayed
    chunk run ahead of the motion it was recorded from.)"""
    rotation = quaternion_to_rotvec(quaternion_multiply(waypoint[3:7], quaternion_conjugate(previous[3:7])))
    return np.concatenate([waypoint[:3] - previous[:3], rotation, [waypoint[7]]]).astype(np.float32)


# The achieved policy rate counts as holding the target within this fraction (a tick skipped
# in a 10 s run at 10 Hz is 1%).
RATE_TOLERANCE = 0.02


@dataclass
class ControlLoopReport:
    ticks: int = 0
    duration_s: float = 0.0
    target_rate_hz: float = 0.0
    # 1 / mean tick interval.
    policy_rate_hz: float = 0.0
    # The achieved rate is within RATE_TOLERANCE of the target and no tick lacked an action.
    rate_held: bool = False
    chunks: int = 0
    rejected_chunks: int = 0
    stale_actions_dropped: int = 0
    missed_deadlines: int = 0
    overrun_ticks: int = 0
    servo_commands: int = 0
    warmup_inference_s: float = 0.0
    stop_reason: str | None = None
    policy_period: dict[str, float] = field(default_factory=dict)
    policy_jitter: dict[str, float] = field(default_factory=dict)
    # Reading the arm and rendering/grabbing every camera, per tick: the policy thread's own cost.
    observe_latency: dict[str, float] = field(default_factory=dict)
    servo_period: dict[str, float] = field(default_factory=dict)
    servo_jitter: dict[str, float] = field(default_factory=dict)
    inference_latency: dict[str, float] = field(default_factory=dict)
    send_latency: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RolloutRecorder:
    """Keeps one rollout's frames and writes it as a LeRobotDataset v3 episode."""

    def __init__(self, camera_names: Sequence[str]):
        self.camera_names = list(camera_names)
        self.images: dict[str, list[np.ndarray]] = {name: [] for name in self.camera_names}
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.states)

    def add(self, images: Mapping[str, np.ndarray], state: np.ndarray, action: np.ndarray) -> None:
        for name in self.camera_names:
            self.images[name].append(images[name])
        self.states.append(np.asarray(state, dtype=np.float32))
        self.actions.append(np.asarray(action, dtype=np.float32))

    def frames(self) -> dict[str, np.ndarray]:
        """The rollout as LeRobot columns (see `rollout_features`), one row per tick."""
        if not self.states:
            raise ValueError("the rollout has no frames; expected at least one tick before saving")
        frames: dict[str, np.ndarray] = {
            f"observation.images.{name}": np.stack(images) for name, images in self.images.items()
        }
        frames["observation.state"] = np.stack(self.states)
        frames["action"] = np.stack(self.actions)
        return frames

    def save_episode(self, root: str | Path, fps: int, instruction: str, robot_type: str | None) -> None:
        from vpp.data.lerobot import LeRobotDatasetWriter

        frames = self.frames()
        shapes = {name: frames[f"observation.images.{name}"].shape[1:] for name in self.camera_names}
        writer = LeRobotDatasetWriter(root, fps=fps, features=rollout_features(shapes), robot_type=robot_type)
        try:
            writer.add_episode(frames, task=instruction)
        finally:
            writer.finalize()


def rollout_features(camera_shapes: Mapping[str, Sequence[int]]) -> dict[str, dict]:
    """LeRobot v3 features of a recorded rollout: one video per camera (H, W, 3), the state
    [x, y, z, qx, qy, qz, qw, gripper] and the delta action the loop commanded at each tick."""
    features: dict[str, dict] = {
        f"observation.images.{name}": {"dtype": "video", "shape": tuple(shape)}
        for name, shape in camera_shapes.items()
    }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": (STATE_DIM,),
        "names": ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"],
    }
    features["action"] = {
        "dtype": "float32",
        "shape": (ACTION_DIM,),
        "names": ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"],
    }
    return features


class WaypointInterpolator:
    """The servo thread's target: a straight segment (slerp for rotation) ending at a due time."""

    def __init__(self, waypoint: np.ndarray, now: float):
        self._lock = threading.Lock()
        self._start, self._end = waypoint.copy(), waypoint.copy()
        self._start_time = self._end_time = now

    def target(self, now: float) -> np.ndarray:
        with self._lock:
            return self._interpolate(now)

    def _interpolate(self, now: float) -> np.ndarray:
        span = self._end_time - self._start_time
        fraction = 1.0 if span <= 0 else min(1.0, max(0.0, (now - self._start_time) / span))
        result = self._start + fraction * (self._end - self._start)
        result[3:7] = slerp(self._start[3:7], self._end[3:7], fraction)
        result[7] = self._end[7]
        return result

    def retarget(self, waypoint: np.ndarray, due: float, now: float) -> None:
        with self._lock:
            self._start = self._interpolate(now)
            self._start_time = now
            self._end, self._end_time = waypoint.copy(), due


class ControlLoop:
    def __init__(
        self,
        robot: Robot,
        cameras: Sequence[Camera],
        policy: ActionPolicy,
        config: ControlLoopConfig | None = None,
        recorder: RolloutRecorder | None = None,
        on_progress: Callable[[ControlLoopReport], None] | None = None,
        progress_interval_s: float = 1.0,
    ):
        self.robot = robot
        self.cameras = list(cameras)
        self.policy = policy
        self.config = config or ControlLoopConfig()
        self.recorder = recorder
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        filter_period = robot.safety_filter.limits.control_period_s
        if not math.isclose(filter_period, self.config.servo_period_s, rel_tol=1e-3):
            logger.warning(
                "safety filter period %.4f s differs from the servo period %.4f s: "
                "its per-step caps assume one command per %.4f s",
                filter_period,
                self.config.servo_period_s,
                filter_period,
            )
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._stop_reason_lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue()
        self._inference_busy = threading.Event()
        self._report = ControlLoopReport()
        self._inference_latency: list[float] = []
        self._servo_intervals: list[float] = []
        self._send_latency: list[float] = []
        self._observe_latency: list[float] = []

    # -- failure handling ----------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        with self._stop_reason_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
                logger.error("control loop stopping: %s", reason)
        self._stop.set()

    def _fail_with(self, error: Exception, where: str) -> None:
        """Ends the run because `where` raised `error`. A RobotError is the driver doing its job
        (its message says what happened); anything else is unexpected, so its traceback is logged."""
        if not isinstance(error, RobotError):
            logger.error("unexpected %s in %s", type(error).__name__, where, exc_info=error)
        self._fail(f"{type(error).__name__}: {error}")

    # -- threads -------------------------------------------------------------------------------

    def _inference_worker(self, instruction: str) -> None:
        while not self._stop.is_set():
            try:
                tick, observation, state = self._requests.get(timeout=0.05)
            except queue.Empty:
                continue
            started = time.monotonic()
            try:
                chunk = np.asarray(self.policy.act(observation, instruction), dtype=np.float64)
            except Exception as error:  # any model failure must end the run, not kill the thread silently
                self._fail(f"policy raised {type(error).__name__}: {error}")
                return
            finally:
                self._inference_latency.append(time.monotonic() - started)
                self._inference_busy.clear()
            self._results.put((tick, chunk, state))

    def _servo_worker(self, interpolator: WaypointInterpolator) -> None:
        period = self.config.servo_period_s
        next_tick = time.monotonic()
        previous = None
        while not self._stop.is_set():
            now = time.monotonic()
            if previous is not None:
                self._servo_intervals.append(now - previous)
            previous = now
            waypoint = interpolator.target(now)
            try:
                self.robot.send(EndEffectorPose(waypoint[:3], waypoint[3:7], gripper=float(waypoint[7])))
            except Exception as error:  # whatever the driver raises ends the run, not just this thread
                self._fail_with(error, "the servo thread's send")
                return
            self._send_latency.append(time.monotonic() - now)
            self._report.servo_commands += 1
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_tick = time.monotonic()

    # -- the policy loop -----------------------------------------------------------------------

    def _accept_chunk(
        self,
        schedule: dict[int, list[np.ndarray]],
        tick: int,
        chunk: np.ndarray,
        state: RobotState,
        now_tick: int,
    ) -> None:
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
            self._fail(f"policy returned actions of shape {chunk.shape}; expected (chunk, {ACTION_DIM})")
            return
        if not np.all(np.isfinite(chunk)):
            self._report.rejected_chunks += 1
            logger.warning("rejected a chunk with non-finite actions (from tick %d); holding", tick)
            return
        self._report.chunks += 1
        steps = chunk[: self.config.execute_steps] if self.config.execute_steps else chunk
        waypoints = chunk_to_waypoints(steps, state.ee_position, state.ee_quaternion)
        if self.config.temporal_ensemble_decay is None:
            for stale in [t for t in schedule if t > now_tick]:
                del schedule[stale]
        for index, waypoint in enumerate(waypoints):
            due_tick = tick + 1 + index
            # The waypoint for tick t is handed out at tick t - 1; later than that it is stale.
            if due_tick <= now_tick:
                self._report.stale_actions_dropped += 1
                continue
            schedule.setdefault(due_tick, []).append(waypoint)

    def _replan_threshold(self) -> int | None:
        threshold = self.config.replan_when_remaining
        if threshold is None or not self.config.replan_from_latency:
            return threshold
        recent = max(self._inference_latency[-3:] or [self._report.warmup_inference_s])
        return max(threshold, math.ceil(recent / self.config.policy_period_s) + 1)

    def _observe(self, need_images: bool) -> tuple[RobotState, dict[str, np.ndarray]]:
        started = time.monotonic()
        state = self.robot.observe()
        images = read_cameras(self.cameras) if need_images else {}
        self._observe_latency.append(time.monotonic() - started)
        return state, images

    def run(
        self,
        instruction: str,
        seconds: float | None = None,
        max_ticks: int | None = None,
        until: Callable[[RobotState], bool] | None = None,
    ) -> ControlLoopReport:
        """Runs until `seconds` or `max_ticks` pass, `until(observed state)` holds at a tick (a task
        is done; that tick is not recorded), a fault, or Ctrl-C; the arm is stopped at the end."""
        if seconds is None and max_ticks is None:
            raise ValueError("run() needs seconds or max_ticks; expected at least one bound")
        config = self.config
        period = config.policy_period_s
        # A camera's first frame can take seconds (a simulator makes its GL context, a real camera
        # starts streaming): take it before the clock starts, not inside the first tick.
        warmup_images = read_cameras(self.cameras)
        try:
            state = self.robot.observe()
        except Exception as error:  # the arm is unusable before the start: a run of no ticks
            self._fail_with(error, "the first observe")
            self._stop_after_run()
            report = self._summarise([], time.monotonic())
            report.stop_reason = self._stop_reason
            return report
        if config.warmup_inference:
            started = time.monotonic()
            first_chunk = np.asarray(
                self.policy.act({**warmup_images, "state": state_vector(state)}, instruction),
                dtype=np.float64,
            )
            self._report.warmup_inference_s = time.monotonic() - started
            # Taken as tick 0's chunk: its actions are due from tick 1, as if just observed.
            self._results.put((0, first_chunk, state))
        held = np.concatenate(
            [
                state.ee_position,
                state.ee_quaternion,
                [state.gripper_opening if state.gripper_opening is not None else 1.0],
            ]
        )
        start = time.monotonic()
        interpolator = WaypointInterpolator(held, start)
        threads = [
            threading.Thread(
                target=self._inference_worker, args=(instruction,), name="vpp-inference", daemon=True
            ),
            threading.Thread(target=self._servo_worker, args=(interpolator,), name="vpp-servo", daemon=True),
        ]
        for thread in threads:
            thread.start()
        schedule: dict[int, list[np.ndarray]] = {}
        tick_times: list[float] = []
        last_progress = start
        tick = 0
        first_chunk_seen = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if (seconds is not None and now - start >= seconds) or (
                    max_ticks is not None and tick >= max_ticks
                ):
                    break
                tick_times.append(now)
                self._report.ticks += 1
                threshold = self._replan_threshold()
                wants_inference = not self._inference_busy.is_set() and (
                    threshold is None or sum(1 for t in schedule if t > tick + 1) <= threshold
                )
                try:
                    state, images = self._observe(need_images=wants_inference or self.recorder is not None)
                except Exception as error:  # the arm or a camera failed: end the run with its report
                    self._fail_with(error, "the policy loop's observe")
                    break
                if until is not None and until(state):
                    self._report.ticks -= 1
                    tick_times.pop()
                    break
                while True:
                    try:
                        chunk_tick, chunk, chunk_state = self._results.get_nowait()
                    except queue.Empty:
                        break
                    first_chunk_seen = True
                    self._accept_chunk(schedule, chunk_tick, chunk, chunk_state, tick)
                due = tick + 1
                previous_waypoint = held
                predictions = schedule.pop(due, None)
                for old in [t for t in schedule if t < due]:
                    del schedule[old]
                if predictions:
                    decay = (
                        config.temporal_ensemble_decay if config.temporal_ensemble_decay is not None else 0.0
                    )
                    waypoint = (
                        combine_waypoints(predictions, decay) if len(predictions) > 1 else predictions[0]
                    )
                    interpolator.retarget(waypoint, start + due * period, time.monotonic())
                    held = waypoint
                elif first_chunk_seen:
                    self._report.missed_deadlines += 1
                    logger.debug("no waypoint for tick %d; holding", due)
                if wants_inference:
                    observation = {**images, "state": state_vector(state)}
                    self._inference_busy.set()
                    self._requests.put((tick, observation, state))
                if self.recorder is not None:
                    self.recorder.add(images, state_vector(state), waypoint_step(previous_waypoint, held))
                if self.on_progress is not None and now - last_progress >= self.progress_interval_s:
                    last_progress = now
                    self.on_progress(self._summarise(tick_times, start))
                tick += 1
                # Late ticks are skipped, not run back to back: the schedule is in wall time.
                next_possible = int((time.monotonic() - start) // period) + 1
                if next_possible > tick:
                    self._report.overrun_ticks += 1
                    tick = next_possible
                self._stop.wait(max(0.0, start + tick * period - time.monotonic()))
        except KeyboardInterrupt:
            self._fail("interrupted (Ctrl-C)")
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=5.0)
            self._stop_after_run()
        report = self._summarise(tick_times, start)
        report.stop_reason = self._stop_reason
        logger.info(
            "control loop done: %d ticks in %.2f s, %d chunks, %d missed deadlines, "
            "%d stale actions dropped, stop reason %s",
            report.ticks,
            report.duration_s,
            report.chunks,
            report.missed_deadlines,
            report.stale_actions_dropped,
            report.stop_reason,
        )
        return report

    def _stop_after_run(self) -> None:
        try:
            self.robot.stop()
        except Exception as error:  # the run's own outcome is what the report must carry
            logger.error("stop() after the run failed: %s: %s", type(error).__name__, error)

    def _summarise(self, tick_times: list[float], start: float) -> ControlLoopReport:
        report = self._report
        report.duration_s = time.monotonic() - start
        intervals = np.diff(tick_times) if len(tick_times) > 1 else np.array([])
        report.policy_period = timing_stats(intervals)
        report.policy_jitter = timing_stats(np.abs(intervals - self.config.policy_period_s))
        report.target_rate_hz = self.config.policy_rate_hz
        report.policy_rate_hz = float(1.0 / intervals.mean()) if intervals.size else 0.0
        report.rate_held = (
            report.policy_rate_hz >= (1.0 - RATE_TOLERANCE) * report.target_rate_hz
            and report.missed_deadlines == 0
        )
        report.observe_latency = timing_stats(self._observe_latency)
        servo = np.array(self._servo_intervals[-100_000:])
        report.servo_period = timing_stats(servo)
        report.servo_jitter = timing_stats(np.abs(servo - self.config.servo_period_s))
        report.inference_latency = timing_stats(self._inference_latency)
        report.send_latency = timing_stats(self._send_latency[-100_000:])
        return ControlLoopReport(**asdict(report))

"""Franka (FR3 / Panda) driver on franky-control (libfranka 0.21).

Every `send` starts an asynchronous franky motion to the filtered absolute target; franky lets
a new motion take over a running one smoothly, so streaming targets at the policy rate works
without a real-time loop in Python. Faults from a running motion surface on the next
`observe`/`send` (franky re-raises them from `poll_motion`).

Everything franky raises reaches callers as a `RobotError`: a dead link as `RobotConnectionError`
(libfranka's `NetworkException`, and the bare `RuntimeError("Net Exception")` franky raises on
every read after the first failed one), a refusal or abort as `ControllerFaultError`, and a kernel
without real-time capabilities (while `enforce_realtime` is on) as `RealtimeKernelError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from vpp.robots.interfaces import (
    ControllerFaultError,
    EndEffectorPose,
    GripperCommand,
    JointPositions,
    Robot,
    RobotConnectionError,
    RobotState,
)
from vpp.robots.safety import SafetyFilter

logger = logging.getLogger(__name__)

_RECOVERY_TIMEOUT_S = 2.0
# How long `stop` waits for the motion it stopped to end (franky hands its outcome over at once).
_STOP_JOIN_TIMEOUT_S = 1.0
# franky raises a bare RuntimeError with this text on reads after libfranka's link has failed.
_FRANKY_NET_FAILURE = "Net Exception"
# libfranka's text for a motion ended by a stop request (ours) rather than by the controller.
_PREEMPTED = "preempted"


class RealtimeKernelError(RobotConnectionError):
    """libfranka refused to control the arm: `enforce_realtime` is on and the kernel is not real-time."""


def _blocked_modes():
    """Modes in which the arm accepts no motion until someone intervenes."""
    import franky

    return (franky.RobotMode.Reflex, franky.RobotMode.UserStopped)


def _franky_idle_mode():
    import franky

    return franky.RobotMode.Idle


@dataclass(frozen=True)
class FrankaConfig:
    hostname: str
    relative_dynamics_factor: float = 0.1
    use_gripper: bool = True
    gripper_speed_m_s: float = 0.05
    # Targets closer than this to the last commanded width are not resent (gripper commands
    # are slow, blocking actions on the Franka hand, unlike arm targets).
    gripper_deadband_m: float = 0.002
    # libfranka's default (RealtimeConfig.Enforce): a real arm needs a PREEMPT_RT kernel to hold its
    # 1 kHz loop. A simulator or a development PC without one needs False (`--no-enforce-realtime`).
    enforce_realtime: bool = True
    # The robot clock in each state must advance; a frozen clock means franky's control loop
    # stalled (seen when a reflex lands as a motion ends) and its cached state is stale.
    state_timeout_s: float = 0.2


class FrankaRobot(Robot):
    num_joints = 7

    def __init__(self, config: FrankaConfig, safety_filter: SafetyFilter):
        super().__init__(safety_filter)
        self.config = config
        self._robot = None
        self._gripper = None
        self._gripper_max_width = 0.0
        self._gripper_future = None
        self._gripper_target_m: float | None = None
        self._last_robot_time_ms: int | None = None
        self._last_robot_time_seen_at = 0.0

    def connect(self) -> None:
        import franky

        realtime = (
            franky.RealtimeConfig.Enforce if self.config.enforce_realtime else franky.RealtimeConfig.Ignore
        )
        try:
            self._robot = franky.Robot(self.config.hostname, realtime_config=realtime)
            self._robot.relative_dynamics_factor = self.config.relative_dynamics_factor
            if self.config.use_gripper:
                self._gripper = franky.Gripper(self.config.hostname)
                self._gripper_max_width = float(self._gripper.max_width)
        except franky.RealtimeException as error:
            self._robot = self._gripper = None
            raise RealtimeKernelError(
                f"cannot control Franka at {self.config.hostname}: libfranka enforces real-time scheduling and "
                f"this kernel has none ({error}). On a real arm, boot a PREEMPT_RT kernel (Franka's requirement); "
                "for a simulator or a test without one, pass --no-enforce-realtime "
                "(FrankaConfig(enforce_realtime=False))"
            ) from error
        except (franky.NetworkException, RuntimeError) as error:
            self._robot = self._gripper = None
            raise RobotConnectionError(
                f"cannot connect to Franka at {self.config.hostname}: {error}"
            ) from error
        except franky.Exception as error:
            self._robot = self._gripper = None
            raise RobotConnectionError(
                f"cannot start controlling Franka at {self.config.hostname}: {type(error).__name__}: {error}"
            ) from error
        if self._robot.has_errors:
            logger.warning(
                "Franka at %s starts with errors %s; recovering",
                self.config.hostname,
                self._robot.state.current_errors,
            )
            self._robot.recover_from_errors()
        self.safety_filter.reset()
        self._last_robot_time_ms = None
        logger.info("Franka at %s connected", self.config.hostname)

    def _require_robot(self):
        if self._robot is None:
            raise RobotConnectionError(
                f"Franka at {self.config.hostname} is not connected; call connect() first"
            )
        return self._robot

    def _translate_failures(self, action: str, call):
        """Runs `call`, turning franky's exceptions into ours after stopping the arm."""
        import franky

        try:
            return call()
        except franky.NetworkException as error:
            self._stop_after_failure()
            raise RobotConnectionError(
                f"lost connection to Franka at {self.config.hostname} during {action}: {error}"
            ) from error
        except RuntimeError as error:
            if _FRANKY_NET_FAILURE not in str(error):
                raise
            self._stop_after_failure()
            raise RobotConnectionError(
                f"lost connection to Franka at {self.config.hostname} during {action}: franky: {error}"
            ) from error
        except franky.Exception as error:
            # ControlException, CommandException, GripperException and the rarer protocol, model and
            # invalid-operation failures: the controller refused or aborted what we asked.
            self._stop_after_failure()
            errors = self._current_errors()
            raise ControllerFaultError(
                f"Franka controller fault during {action}: {type(error).__name__}: {error}; arm stopped, "
                "call recover()",
                code=errors,
            ) from error

    def _current_errors(self) -> str | None:
        try:
            return str(self._robot.state.last_motion_errors)
        except Exception:  # a dead link must not hide the fault being reported
            return None

    def observe(self) -> RobotState:
        robot = self._require_robot()

        def read() -> RobotState:
            robot.poll_motion()
            state = robot.state
            if state.robot_mode in _blocked_modes():
                raise_fault_from_state(state)
            check_state_is_fresh(state)
            pose = state.O_T_EE
            opening = None
            if self._gripper is not None and self._gripper_max_width > 0:
                opening = float(np.clip(self._gripper.width / self._gripper_max_width, 0.0, 1.0))
            return RobotState(
                joint_positions=np.asarray(state.q, dtype=np.float64),
                ee_position=np.asarray(pose.translation, dtype=np.float64),
                ee_quaternion=np.asarray(pose.quaternion, dtype=np.float64),
                gripper_opening=opening,
                timestamp=time.monotonic(),
                joint_velocities=np.asarray(state.dq, dtype=np.float64),
            )

        def raise_fault_from_state(state) -> None:
            self._stop_after_failure()
            raise ControllerFaultError(
                f"Franka at {self.config.hostname} is in mode {state.robot_mode.name} with errors "
                f"{state.current_errors}; arm stopped, call recover()",
                code=str(state.current_errors),
            )

        def check_state_is_fresh(state) -> None:
            now = time.monotonic()
            robot_time_ms = state.time.to_msec()
            if robot_time_ms != self._last_robot_time_ms:
                self._last_robot_time_ms = robot_time_ms
                self._last_robot_time_seen_at = now
                return
            stalled_for = now - self._last_robot_time_seen_at
            if stalled_for > self.config.state_timeout_s:
                self._stop_after_failure()
                raise RobotConnectionError(
                    f"lost connection to Franka at {self.config.hostname}: robot clock frozen at "
                    f"{robot_time_ms} ms for {stalled_for:.3f} s (limit {self.config.state_timeout_s} s)"
                )

        return self._translate_failures("observe", read)

    def _send_filtered(self, command: EndEffectorPose | JointPositions | GripperCommand) -> None:
        import franky

        robot = self._require_robot()
        if isinstance(command, EndEffectorPose):
            motion = franky.CartesianMotion(
                franky.Affine(command.position, command.quaternion), franky.ReferenceType.Absolute
            )
            self._translate_failures("Cartesian move", lambda: robot.move(motion, asynchronous=True))
        elif isinstance(command, JointPositions):
            motion = franky.JointMotion(command.positions)
            self._translate_failures("joint move", lambda: robot.move(motion, asynchronous=True))
        opening = command.opening if isinstance(command, GripperCommand) else command.gripper
        if opening is not None and self._gripper is not None:
            self._translate_failures("gripper move", lambda: self._move_gripper(opening))

    def _move_gripper(self, opening: float) -> None:
        width = opening * self._gripper_max_width
        if (
            self._gripper_target_m is not None
            and abs(width - self._gripper_target_m) < self.config.gripper_deadband_m
        ):
            return
        if self._gripper_future is not None and not self._gripper_future.wait(0):
            return  # the next send retries once the hand has finished its current move
        self._gripper_future = self._gripper.move_async(width, self.config.gripper_speed_m_s)
        self._gripper_target_m = width

    def _stop_after_failure(self) -> None:
        self.safety_filter.reset()
        try:
            self.stop()
        except Exception:  # the failure being reported matters more than a failed stop
            logger.exception("stopping Franka after a failure also failed")

    def stop(self) -> None:
        if self._robot is None:
            return
        try:
            self._robot.stop()
        except Exception as error:  # franky.Exception or RuntimeError: stop must not raise on a dead link
            logger.warning("Franka stop: %s", error)
        else:
            self._collect_stopped_motion()
        if self._gripper is not None and self._gripper_future is not None:
            try:
                if not self._gripper_future.wait(0):
                    self._gripper.stop()
                    # The hand answers the interrupted move (Aborted); until it has, franky's next
                    # gripper command and the Gripper's destructor wait for that answer.
                    if not self._gripper_future.wait(_STOP_JOIN_TIMEOUT_S):
                        logger.warning(
                            "Franka hand has not ended its move %.1f s after stop", _STOP_JOIN_TIMEOUT_S
                        )
            except Exception as error:  # as above
                logger.warning("Franka gripper stop: %s", error)
        self._gripper_future = None
        self._gripper_target_m = None

    def _collect_stopped_motion(self) -> None:
        """Takes the outcome of the motion `stop` just ended. franky reports it as a fault
        (ControlException "Move command preempted!") on the next poll_motion, so left there it
        would fail the first observe() after every stop; a preemption we asked for is no fault."""
        import franky

        try:
            if not self._robot.join_motion(_STOP_JOIN_TIMEOUT_S):
                logger.warning("Franka motion still running %.1f s after stop", _STOP_JOIN_TIMEOUT_S)
        except franky.ControlException as error:
            if _PREEMPTED not in str(error):
                # A reflex that landed as we stopped: the next observe() reports it from the robot mode.
                logger.warning("Franka motion ended with %s as it was stopped", error)
        except Exception as error:  # a dead link: the next observe() reports it
            logger.warning("Franka stop: %s", error)

    def recover(self) -> None:
        robot = self._require_robot()
        self._translate_failures("error recovery", robot.recover_from_errors)
        # Recovery is acknowledged before the state stream shows it; wait for a clean state.
        deadline = time.monotonic() + _RECOVERY_TIMEOUT_S
        while (
            self._translate_failures("error recovery", lambda: robot.state.robot_mode) != _franky_idle_mode()
        ):
            if time.monotonic() > deadline:
                raise ControllerFaultError(
                    f"Franka at {self.config.hostname} still reports errors {self._current_errors()} "
                    f"{_RECOVERY_TIMEOUT_S} s after error recovery; expected it idle",
                    code=self._current_errors(),
                )
            time.sleep(0.01)
        self.safety_filter.reset()

    def close(self) -> None:
        if self._robot is None:
            return
        try:
            self.stop()
        finally:
            self._robot = None
            self._gripper = None

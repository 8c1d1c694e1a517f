"""UFactory xArm driver on xarm-python-sdk, streaming targets in servo mode (mode 1).

Servo mode executes only the newest target, so `send` is non-blocking and the caller sets the
rate (UFactory's examples stream at 100-200 Hz). State comes from the SDK's report socket; a
report older than `report_timeout_s` counts as a lost connection.

Units at the SDK boundary: millimetres and radians (`is_radian=True`); roll-pitch-yaw poses.

The xArm Gripper (`use_gripper`) is driven through the SDK's Modbus gripper API over the same
control socket: position mode, enabled at connect; an opening in [0, 1] maps linearly onto
`gripper_closed_pulses`..`gripper_open_pulses`. A target is sent only when it moved by more than
`gripper_deadband` (each is a request over the tool bus), and never waits for the fingers. Its
width is read at most every `gripper_poll_period_s` (no report carries it); between reads
`observe` returns the last one. Gripper errors (the SDK's END_EFFECTOR_HAS_FAULT and the
gripper's own code) raise ControllerFaultError; `recover` clears them and re-enables it.
"""

from __future__ import annotations

import logging
import threading
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
from vpp.robots.rotations import quaternion_to_rpy, rpy_to_quaternion
from vpp.robots.safety import SafetyFilter

logger = logging.getLogger(__name__)

SERVO_MODE = 1
STATE_STOP = 4
_MM_PER_M = 1000.0
# SDK return codes (xarm.x3.code.APIState) that mean the link is gone rather than a refusal.
_CONNECTION_CODES = {-1, 3, 8}
_HAS_ERROR = 1
_HAS_WARNING = 2
# xarm.x3.code.APIState: the end effector (gripper) reports an error of its own.
_END_EFFECTOR_HAS_FAULT = 102
# xArm controller errors meaning nothing answers on the tool RS485 bus (gripper absent or unplugged).
_END_EFFECTOR_LINK_ERRORS = {19, 28}
_GRIPPER_POSITION_MODE = 0


@dataclass(frozen=True)
class XArmConfig:
    host: str
    num_joints: int = 7
    connect_timeout_s: float = 5.0
    report_timeout_s: float = 0.3
    # Bounds how long one SDK request (a stop on a dying link included) may block.
    command_timeout_s: float = 1.0
    # The SDK prefers /tmp/xarmcontroller_uds_<port> when it exists (only true on the
    # controller box itself); a networked arm must be reached over TCP.
    forbid_unix_socket: bool = True
    clear_errors_on_connect: bool = False
    # The xArm Gripper on the tool flange; False for an arm without it (its targets are then ignored).
    use_gripper: bool = True
    # The gripper's position in pulses when fully open and fully closed (UFactory: 850 and 0).
    gripper_open_pulses: float = 850.0
    gripper_closed_pulses: float = 0.0
    # Finger speed in the SDK's unit, r/min (the xArm Gripper takes 1000-5000).
    gripper_speed_rpm: int = 5000
    # Openings closer than this (fraction of the full stroke) to the last target sent are not resent.
    gripper_deadband: float = 0.01
    # How often `observe` reads the gripper's position over the control socket.
    gripper_poll_period_s: float = 0.05

    def __post_init__(self) -> None:
        if self.gripper_open_pulses == self.gripper_closed_pulses:
            raise ValueError(
                f"gripper_open_pulses == gripper_closed_pulses == {self.gripper_open_pulses}; "
                "expected the open and closed positions to differ (UFactory's gripper: 850 and 0)"
            )
        if not 0 <= self.gripper_deadband < 1:
            raise ValueError(f"gripper_deadband={self.gripper_deadband}; expected a fraction in [0, 1)")
        if self.gripper_poll_period_s < 0:
            raise ValueError(f"gripper_poll_period_s={self.gripper_poll_period_s}; expected >= 0")


def describe_controller_error(code: int) -> str:
    from xarm.core.config.x_code import ControllerError

    title = ControllerError(code).title["en"]
    return f"xArm controller error {code}: {title}"


def describe_gripper_error(code: int | None) -> str:
    from xarm.core.config.x_code import GripperError

    if code is None:
        return "xArm gripper error (its code could not be read)"
    return f"xArm gripper error {code}: {GripperError(code).title['en']}"


def describe_controller_warning(code: int) -> str:
    from xarm.core.config.x_code import ControllerWarn

    return f"xArm controller warning {code}: {ControllerWarn(code).title['en']}"


class XArmRobot(Robot):
    def __init__(self, config: XArmConfig, safety_filter: SafetyFilter):
        super().__init__(safety_filter)
        self.config = config
        self._arm = None
        self._report_lock = threading.Lock()
        self._latest_report: tuple[float, list[float], list[float]] | None = None
        self._last_warning = 0
        self._gripper_lock = threading.Lock()
        self._gripper_opening: float | None = None
        self._gripper_read_at = -float("inf")
        self._gripper_target: float | None = None
        self._warned_about_gripper = False

    @property
    def num_joints(self) -> int:
        return self.config.num_joints

    def connect(self) -> None:
        from xarm.wrapper import XArmAPI

        arm = XArmAPI(
            self.config.host,
            is_radian=True,
            do_not_open=True,
            report_type="normal",
            forbid_uds=self.config.forbid_unix_socket,
        )
        try:
            arm.connect()
        except Exception as error:  # the SDK raises bare Exception on socket failure
            raise RobotConnectionError(f"cannot connect to xArm at {self.config.host}: {error}") from error
        self._arm = arm
        arm.set_timeout(self.config.command_timeout_s)
        arm.register_report_location_callback(self._on_report, report_cartesian=True, report_joints=True)
        self._wait_for_first_report()
        if arm.error_code:
            if not self.config.clear_errors_on_connect:
                raise ControllerFaultError(describe_controller_error(arm.error_code), code=arm.error_code)
            logger.warning("clearing %s at connect", describe_controller_error(arm.error_code))
        self._enable()
        if self.config.use_gripper:
            self._enable_gripper()
        logger.info("xArm at %s connected, version %s", self.config.host, arm.version)

    def _on_report(self, report: dict) -> None:
        with self._report_lock:
            self._latest_report = (time.monotonic(), list(report["joints"]), list(report["cartesian"]))

    def _wait_for_first_report(self) -> None:
        deadline = time.monotonic() + self.config.connect_timeout_s
        while self._latest_report is None:
            if time.monotonic() > deadline:
                self._disconnect_quietly()
                raise RobotConnectionError(
                    f"no state report from xArm at {self.config.host} within {self.config.connect_timeout_s} s"
                )
            time.sleep(0.005)

    def _enable(self) -> None:
        arm = self._require_arm()
        requested_at = time.monotonic()
        if self.config.clear_errors_on_connect or arm.error_code or arm.warn_code:
            arm.clean_error()
            arm.clean_warn()
        for step, code in (
            ("motion_enable", arm.motion_enable(enable=True)),
            ("set_mode", arm.set_mode(SERVO_MODE)),
            ("set_state", arm.set_state(0)),
        ):
            self._check_code(code, step)
        deadline = time.monotonic() + self.config.connect_timeout_s
        # Only a report produced after the requests proves that they took effect.
        while not (
            self._latest_report[0] > requested_at
            and arm.error_code == 0
            and arm.mode == SERVO_MODE
            and arm.state in (1, 2)
        ):
            if time.monotonic() > deadline:
                raise ControllerFaultError(
                    f"xArm did not enter servo mode within {self.config.connect_timeout_s} s "
                    f"(mode {arm.mode}, state {arm.state}, error {arm.error_code}); expected mode 1, state 1 or 2",
                    code=arm.error_code or None,
                )
            time.sleep(0.005)
        self.safety_filter.reset()

    def _enable_gripper(self) -> None:
        arm = self._require_arm()
        for call, code in (
            ("set_gripper_mode", arm.set_gripper_mode(_GRIPPER_POSITION_MODE)),
            ("set_gripper_enable", arm.set_gripper_enable(True)),
            ("set_gripper_speed", arm.set_gripper_speed(self.config.gripper_speed_rpm)),
        ):
            self._check_gripper_code(code, call)
        with self._gripper_lock:
            self._gripper_target = None
            self._gripper_read_at = -float("inf")
        self._read_gripper_opening()

    def _check_gripper_code(self, code: int, call: str) -> None:
        """Turns an SDK return code from a gripper call into our errors (0 and warnings pass)."""
        if code == 0:
            return
        arm = self._require_arm()
        if code == _HAS_WARNING:
            logger.warning("%s: %s", call, describe_controller_warning(arm.warn_code))
            return
        if code in _CONNECTION_CODES or not arm.connected:
            self._stop_after_failure()
            raise RobotConnectionError(
                f"lost connection to xArm at {self.config.host} during {call} (SDK code {code})"
            )
        if code == _END_EFFECTOR_HAS_FAULT:
            gripper_code = self._gripper_error_code()
            self._stop_after_failure()
            raise ControllerFaultError(
                f"{describe_gripper_error(gripper_code)} during {call}; arm stopped, call recover()",
                code=gripper_code,
            )
        if arm.error_code in _END_EFFECTOR_LINK_ERRORS:
            error = arm.error_code
            self._stop_after_failure()
            raise ControllerFaultError(
                f"{describe_controller_error(error)} during {call}: the xArm Gripper does not answer on the "
                "tool bus; check that it is attached and powered, or set XArmConfig(use_gripper=False) "
                "for an arm without it",
                code=error,
            )
        if arm.error_code:
            self._raise_on_controller_error()
        self._stop_after_failure()
        raise ControllerFaultError(
            f"{call} refused by the xArm gripper (SDK code {code}, see xarm.x3.code.APIState); arm stopped",
            code=code,
        )

    def _gripper_error_code(self) -> int | None:
        """The gripper's own error code (xarm.core.config.x_code.GripperError), None if unreadable."""
        code, gripper_code = self._require_arm().get_gripper_err_code()
        return gripper_code if code in (0, _HAS_WARNING) else None

    def _read_gripper_opening(self) -> None:
        """Reads the gripper's position now and caches it as an opening in [0, 1]."""
        arm = self._require_arm()
        result = arm.get_gripper_position()
        # The SDK returns (code, pulses), but a bare code when the gripper reports an error.
        code, pulses = result if isinstance(result, (tuple, list)) else (result, None)
        self._check_gripper_code(code, "get_gripper_position")
        if pulses is None:
            gripper_code = self._gripper_error_code()
            self._stop_after_failure()
            raise ControllerFaultError(
                f"xArm gripper position unreadable (gripper error code {gripper_code}); arm stopped",
                code=gripper_code or None,
            )
        closed, open_ = self.config.gripper_closed_pulses, self.config.gripper_open_pulses
        self._gripper_opening = float(np.clip((pulses - closed) / (open_ - closed), 0.0, 1.0))
        self._gripper_read_at = time.monotonic()

    def _gripper_state(self) -> float | None:
        if not self.config.use_gripper:
            return None
        # One thread reads while the others use the cached value (the SDK serialises requests anyway).
        if self._gripper_lock.acquire(blocking=self._gripper_opening is None):
            try:
                if time.monotonic() - self._gripper_read_at >= self.config.gripper_poll_period_s:
                    self._read_gripper_opening()
            finally:
                self._gripper_lock.release()
        return self._gripper_opening

    def _move_gripper(self, opening: float) -> None:
        with self._gripper_lock:
            if (
                self._gripper_target is not None
                and abs(opening - self._gripper_target) < self.config.gripper_deadband
            ):
                return
            closed, open_ = self.config.gripper_closed_pulses, self.config.gripper_open_pulses
            pulses = round(closed + float(np.clip(opening, 0.0, 1.0)) * (open_ - closed))
            # wait_motion=False: the SDK would otherwise first wait for the arm to finish its motion.
            code = self._require_arm().set_gripper_position(pulses, wait=False, wait_motion=False)
            self._check_gripper_code(code, "set_gripper_position")
            self._gripper_target = opening

    def _require_arm(self):
        if self._arm is None:
            raise RobotConnectionError(f"xArm at {self.config.host} is not connected; call connect() first")
        return self._arm

    def observe(self) -> RobotState:
        arm = self._require_arm()
        with self._report_lock:
            received_at, joints, cartesian = self._latest_report
        age = time.monotonic() - received_at
        if not arm.connected or age > self.config.report_timeout_s:
            self._stop_after_failure()
            raise RobotConnectionError(
                f"lost connection to xArm at {self.config.host}: last report {age:.3f} s ago "
                f"(limit {self.config.report_timeout_s} s), socket connected={arm.connected}"
            )
        self._raise_on_controller_error()
        return RobotState(
            joint_positions=np.asarray(joints[: self.num_joints], dtype=np.float64),
            ee_position=np.asarray(cartesian[:3], dtype=np.float64) / _MM_PER_M,
            ee_quaternion=rpy_to_quaternion(np.asarray(cartesian[3:6], dtype=np.float64)),
            gripper_opening=self._gripper_state(),
            timestamp=received_at,
        )

    def _raise_on_controller_error(self) -> None:
        arm = self._require_arm()
        if arm.warn_code and arm.warn_code != self._last_warning:
            logger.warning(describe_controller_warning(arm.warn_code))
        self._last_warning = arm.warn_code
        if arm.error_code:
            code = arm.error_code
            self._stop_after_failure()
            raise ControllerFaultError(
                describe_controller_error(code) + "; arm stopped, call recover()", code=code
            )

    def _send_filtered(self, command: EndEffectorPose | JointPositions | GripperCommand) -> None:
        arm = self._require_arm()
        if isinstance(command, EndEffectorPose):
            pose = np.concatenate([command.position * _MM_PER_M, quaternion_to_rpy(command.quaternion)])
            code = arm.set_servo_cartesian(pose.tolist(), is_radian=True)
            self._check_code(code, "set_servo_cartesian")
        elif isinstance(command, JointPositions):
            code = arm.set_servo_angle_j(command.positions.tolist(), is_radian=True)
            self._check_code(code, "set_servo_angle_j")
        gripper = command.opening if isinstance(command, GripperCommand) else command.gripper
        if gripper is None:
            return
        if self.config.use_gripper:
            self._move_gripper(gripper)
        elif not self._warned_about_gripper:
            self._warned_about_gripper = True
            logger.warning("xArm gripper targets are ignored: XArmConfig(use_gripper=False)")

    def _check_code(self, code: int, call: str) -> None:
        if code == 0:
            return
        arm = self._require_arm()
        if code in _CONNECTION_CODES or not arm.connected:
            self._stop_after_failure()
            raise RobotConnectionError(
                f"lost connection to xArm at {self.config.host} during {call} (SDK code {code})"
            )
        if code == _HAS_WARNING:
            logger.warning("%s: %s", call, describe_controller_warning(arm.warn_code))
            return
        if code == _HAS_ERROR or arm.error_code:
            self._raise_on_controller_error()
        self._stop_after_failure()
        raise ControllerFaultError(
            f"{call} refused by xArm (SDK code {code}, state {arm.state}, mode {arm.mode}); arm stopped",
            code=code,
        )

    def _stop_after_failure(self) -> None:
        self.safety_filter.reset()
        try:
            self.stop()
        except Exception:  # the failure being reported matters more than a failed stop
            logger.exception("stopping xArm after a failure also failed")

    def stop(self) -> None:
        if self._arm is not None and self._arm.connected:
            self._arm.set_state(STATE_STOP)

    def recover(self) -> None:
        arm = self._require_arm()
        if not arm.connected:
            raise RobotConnectionError(
                f"xArm at {self.config.host} is disconnected; reconnect instead of recover"
            )
        arm.clean_error()
        arm.clean_warn()
        if self.config.use_gripper:
            # Unconditionally: the SDK only knows of a gripper error once a gripper call read it.
            self._check_gripper_code(arm.clean_gripper_error(), "clean_gripper_error")
        self._enable()
        if self.config.use_gripper:
            self._enable_gripper()

    def _disconnect_quietly(self) -> None:
        arm, self._arm = self._arm, None
        if arm is not None:
            arm.release_report_location_callback(self._on_report)
            arm.disconnect()

    def close(self) -> None:
        if self._arm is None:
            return
        try:
            self.stop()
        finally:
            self._disconnect_quietly()

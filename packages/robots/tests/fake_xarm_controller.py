"""A loopback stand-in for an xArm controller, speaking enough of xarm-python-sdk's TCP protocol.

Control socket (the SDK's private Modbus-TCP variant): request = transaction id u16 BE,
protocol id u16 BE, length u16 BE (function code + payload), function code u8, payload;
reply = same header, then a status byte (0x40 error, 0x20 warning, 0x10 not ready to move)
and the answer. Floats are little-endian fp32. Report socket: a 145-byte "normal" report every
`report_period_s`, starting with its own length as u32 BE.

The fake records every motion command it received (`received`), whether or not it executed it,
so tests can assert on exactly what reached the controller. Joint and Cartesian targets are
tracked independently (there is no kinematics): a servo-joint target moves the reported joints
only, a servo-Cartesian target moves the reported pose only.

The xArm Gripper (`FakeGripper`) hangs off the arm's tool RS485 bus, as on the real arm: the SDK
reaches it with function code 124 (RS485_RTU), whose payload is the bus host id (9) and a Modbus
RTU frame without CRC for the gripper (slave 8): 0x03 reads and 0x10 writes of 16-bit registers
(enable 0x0100, mode 0x0101, error code 0x000F, reset error 0x0109, speed 0x0303, target position
0x0700 and current position 0x0702 as big-endian s32 pulses, status 0x0000, version 0x0801-0x0803);
the answer is the host id and the RTU reply. Before its first gripper call the SDK reads the tool
bus's baud-rate index (function 128, register 0x0A0B) and rewrites it if it is not 2 Mbaud's.
A gripper error disables the gripper until the error is reset and it is enabled again; a request
to an absent gripper gets no RTU reply and sets controller error 19 (End Effector Communication
Error), which is how the SDK's `_check_modbus_code` expects a silent tool bus to show up.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

GET_VERSION = 1
GET_ROBOT_SN = 2
MOTION_EN = 11
SET_STATE = 12
GET_STATE = 13
GET_CMDNUM = 14
GET_ERROR = 15
CLEAN_ERR = 16
CLEAN_WAR = 17
SET_MODE = 19
MOVE_SERVOJ = 29
MOVE_SERVO_CART = 30
GET_TCP_POSE = 41
GET_JOINT_POS = 42
RS485_RTU = 124
TGPIO_W16B = 127
TGPIO_R16B = 128

TOOL_BUS_HOST_ID = 9
GRIPPER_SLAVE_ID = 8
MODBUS_READ = 0x03
MODBUS_WRITE = 0x10
BAUD_REGISTER = 0x0A0B
BAUD_2M_INDEX = 11  # index of 2_000_000 in the SDK's UxbusCmd.BAUDRATES
END_EFFECTOR_COMMUNICATION_ERROR = 19
GRIPPER_STATUS, GRIPPER_ERR_CODE = 0x0000, 0x000F
GRIPPER_ENABLE, GRIPPER_MODE, GRIPPER_RESET_ERR = 0x0100, 0x0101, 0x0109
GRIPPER_SPEED = 0x0303
GRIPPER_TARGET, GRIPPER_POSITION = 0x0700, 0x0702
GRIPPER_VERSION = (0x0801, 0x0802, 0x0803)

STATE_MOVING = 1
STATE_READY = 2
STATE_STOPPED = 4

STATUS_ERROR = 0x40
STATUS_WARNING = 0x20
STATUS_NOT_READY = 0x10

NORMAL_REPORT_LENGTH = 145
VERSION = b"7,7,XF1300000000,AC1300000000,v2.5.0"
SOCKET_TIMEOUT_S = 0.2


@dataclass(frozen=True)
class ReceivedMotion:
    kind: str  # "servo_joint" or "servo_cartesian"
    values: tuple[float, ...]  # joints in rad, or x, y, z in mm + roll, pitch, yaw in rad
    executed: bool


class FakeGripper:
    """The xArm Gripper's Modbus registers and a first-order model of its fingers: the position
    (pulses, 0 closed to 850 open) moves toward the target at `pulses_per_s_per_rpm` * speed while
    enabled, in position mode (0) and free of errors. Accessed under the controller's lock."""

    def __init__(self, position: float = 850.0, pulses_per_s_per_rpm: float = 0.3):
        self.installed = True
        self.enabled = False
        self.mode = 0
        self.speed_rpm = 0
        self.error_code = 0
        self.position = position
        self.target = position
        self.pulses_per_s_per_rpm = pulses_per_s_per_rpm
        self.version = (3, 4, 3)
        self.targets: list[int] = []  # every target position written, in order
        self._updated_at = time.monotonic()

    def update(self) -> None:
        now = time.monotonic()
        elapsed, self._updated_at = now - self._updated_at, now
        if self.enabled and self.mode == 0 and not self.error_code:
            step = self.pulses_per_s_per_rpm * self.speed_rpm * elapsed
            self.position += max(-step, min(step, self.target - self.position))

    def moving(self) -> bool:
        return self.enabled and not self.error_code and abs(self.target - self.position) > 0.5

    def read(self, address: int, count: int) -> bytes | None:
        self.update()
        if address == GRIPPER_POSITION and count == 2:
            return struct.pack(">i", round(self.position))
        if address == GRIPPER_TARGET and count == 2:
            return struct.pack(">i", round(self.target))
        if count != 1:
            return None
        value = {
            GRIPPER_STATUS: 1 if self.moving() else 0,
            GRIPPER_ERR_CODE: self.error_code,
            GRIPPER_ENABLE: int(self.enabled),
            GRIPPER_MODE: self.mode,
            GRIPPER_SPEED: self.speed_rpm,
            **dict(zip(GRIPPER_VERSION, self.version, strict=True)),
        }.get(address)
        return None if value is None else struct.pack(">H", value)

    def write(self, address: int, data: bytes) -> bool:
        self.update()
        if address in (GRIPPER_TARGET, GRIPPER_POSITION) and len(data) == 4:
            if address == GRIPPER_TARGET:
                self.target = struct.unpack(">i", data)[0]
                self.targets.append(self.target)
            return True
        if len(data) != 2:
            return False
        value = struct.unpack(">H", data)[0]
        if address == GRIPPER_ENABLE:
            # A gripper in error refuses to be enabled until the error is reset.
            self.enabled = bool(value) and not self.error_code
        elif address == GRIPPER_MODE:
            self.mode = value
        elif address == GRIPPER_SPEED:
            self.speed_rpm = value
        elif address == GRIPPER_RESET_ERR:
            self.error_code = 0
        else:
            return False
        return True


class FakeXArmController:
    def __init__(self, host: str = "127.0.0.1", report_period_s: float = 0.01):
        self.host = host
        self.report_period_s = report_period_s
        self.lock = threading.Lock()
        self.joints = [0.0, -0.3, 0.0, 0.6, 0.0, 0.9, 0.0]
        self.pose = [400.0, 0.0, 300.0, 3.14159, 0.0, 0.0]
        self.mode = 0
        self.state = STATE_STOPPED
        self.enabled = False
        self.error_code = 0
        self.warn_code = 0
        self.cmd_count = 0
        self.received: list[ReceivedMotion] = []
        self.function_codes: list[int] = []
        self.gripper = FakeGripper()
        self.tool_baud_index = BAUD_2M_INDEX
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._listeners: list[socket.socket] = []
        self.control_port = 0
        self.report_port = 0

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeXArmController:
        control = self._listen()
        report = self._listen()
        self.control_port = control.getsockname()[1]
        self.report_port = report.getsockname()[1]
        self._running.set()
        self._spawn(self._accept_loop, control, self._serve_control)
        self._spawn(self._accept_loop, report, self._serve_reports)
        return self

    def stop(self) -> None:
        """Close every socket and join every thread (each loop wakes within SOCKET_TIMEOUT_S)."""
        self._running.clear()
        self.drop_connections()
        for listener in self._listeners:
            listener.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"fake xArm threads still running after stop: {alive}")

    def drop_connections(self) -> None:
        """Simulate a cable pull: every client connection closes at once."""
        with self.lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def inject_error(self, code: int) -> None:
        """A controller fault: the arm stops and refuses motion until the error is cleared."""
        with self.lock:
            self.error_code = code
            self.state = STATE_STOPPED

    def inject_warning(self, code: int) -> None:
        with self.lock:
            self.warn_code = code

    def inject_gripper_error(self, code: int) -> None:
        """A gripper fault (e.g. 11, current overlimit): the fingers stop and the gripper disables."""
        with self.lock:
            self.gripper.update()
            self.gripper.error_code = code
            self.gripper.enabled = False

    def reset_gripper(self, installed: bool = True, position: float = 850.0) -> None:
        with self.lock:
            self.gripper = FakeGripper(position)
            self.gripper.installed = installed

    # plumbing ---------------------------------------------------------------------------------
    def _listen(self) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(4)
        listener.settimeout(SOCKET_TIMEOUT_S)
        self._listeners.append(listener)
        return listener

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"fake-xarm-{target.__name__}")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket, serve) -> None:
        while self._running.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            connection.settimeout(SOCKET_TIMEOUT_S)
            with self.lock:
                self._connections.append(connection)
            self._spawn(serve, connection)

    def _receive_exactly(self, connection: socket.socket, size: int) -> bytes | None:
        data = b""
        while len(data) < size and self._running.is_set():
            try:
                chunk = connection.recv(size - len(data))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data if len(data) == size else None

    def _serve_control(self, connection: socket.socket) -> None:
        while self._running.is_set():
            header = self._receive_exactly(connection, 6)
            if header is None:
                return
            transaction_id, protocol_id, length = struct.unpack(">HHH", header)
            body = self._receive_exactly(connection, length)
            if body is None:
                return
            function_code, payload = body[0], body[1:]
            if protocol_id not in (2, 3):
                continue  # heartbeats (protocol 1) need no answer
            status, answer = self._handle(function_code, payload)
            reply = (
                struct.pack(">HHHBB", transaction_id, protocol_id, len(answer) + 2, function_code, status)
                + answer
            )
            try:
                connection.sendall(reply)
            except OSError:
                return

    def _serve_reports(self, connection: socket.socket) -> None:
        next_time = time.monotonic()
        while self._running.is_set():
            try:
                connection.sendall(self._normal_report())
            except OSError:
                return
            next_time += self.report_period_s
            time.sleep(max(0.0, next_time - time.monotonic()))

    # controller behaviour -------------------------------------------------------------------
    def _status(self) -> int:
        status = 0
        if self.error_code:
            status |= STATUS_ERROR
        if self.warn_code:
            status |= STATUS_WARNING
        if self.error_code or not self.enabled or self.state not in (STATE_MOVING, STATE_READY):
            status |= STATUS_NOT_READY
        return status

    def _handle(self, function_code: int, payload: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.function_codes.append(function_code)
            if function_code == GET_VERSION:
                answer = VERSION.ljust(40, b"\0")
            elif function_code == GET_ROBOT_SN:
                answer = b"XF130000000000".ljust(40, b"\0")
            elif function_code == MOTION_EN:
                self.enabled = bool(payload[1])
                answer = b""
            elif function_code == SET_STATE:
                requested = payload[0]
                if requested == 0 and not self.error_code and self.enabled:
                    self.state = STATE_READY
                elif requested in (3, STATE_STOPPED):
                    self.state = requested
                answer = b""
            elif function_code == GET_STATE:
                answer = bytes([self.state])
            elif function_code == GET_CMDNUM:
                answer = struct.pack(">H", self.cmd_count)
            elif function_code == GET_ERROR:
                answer = bytes([self.error_code, self.warn_code])
            elif function_code == CLEAN_ERR:
                self.error_code = 0
                answer = b""
            elif function_code == CLEAN_WAR:
                self.warn_code = 0
                answer = b""
            elif function_code == SET_MODE:
                self.mode = payload[0]
                answer = b""
            elif function_code == MOVE_SERVOJ:
                values = struct.unpack("<10f", payload[:40])
                self._move("servo_joint", values[:7])
                answer = b""
            elif function_code == MOVE_SERVO_CART:
                values = struct.unpack("<9f", payload[:36])
                self._move("servo_cartesian", values[:6])
                answer = b""
            elif function_code == GET_TCP_POSE:
                answer = struct.pack("<6f", *self.pose)
            elif function_code == GET_JOINT_POS:
                answer = struct.pack("<7f", *self.joints)
            elif function_code == TGPIO_R16B:
                # bid, register u16 BE -> the register as a big-endian 32-bit integer.
                register = struct.unpack(">H", payload[1:3])[0]
                answer = struct.pack(">i", self.tool_baud_index if register == BAUD_REGISTER else 0)
            elif function_code == TGPIO_W16B:
                register = struct.unpack(">H", payload[1:3])[0]
                if register in (BAUD_REGISTER, 0x1A0B):
                    self.tool_baud_index = round(struct.unpack("<f", payload[3:7])[0])
                answer = b""
            elif function_code == RS485_RTU:
                answer = self._tool_bus(payload)
            else:
                answer = b""
            return self._status(), answer

    def _tool_bus(self, payload: bytes) -> bytes:
        """One Modbus RTU exchange on the tool RS485 bus: host id, slave, function, registers."""
        host_id, frame = payload[0], payload[1:]
        if frame[0] != GRIPPER_SLAVE_ID or not self.gripper.installed:
            # Nobody answers on the bus: the controller flags the end effector link.
            self.error_code = END_EFFECTOR_COMMUNICATION_ERROR
            self.state = STATE_STOPPED
            return bytes([host_id])
        function, address, count = frame[1], *struct.unpack(">HH", frame[2:6])
        if function == MODBUS_READ:
            data = self.gripper.read(address, count)
            if data is not None:
                return bytes([host_id, GRIPPER_SLAVE_ID, MODBUS_READ, len(data)]) + data
        elif function == MODBUS_WRITE:
            data = frame[7 : 7 + frame[6]]
            if len(data) == 2 * count and self.gripper.write(address, data):
                return bytes([host_id]) + frame[:6]
        # Modbus exception 2: illegal data address.
        return bytes([host_id, GRIPPER_SLAVE_ID, function | 0x80, 0x02])

    def _move(self, kind: str, values: tuple[float, ...]) -> None:
        executable = (
            self.enabled
            and not self.error_code
            and self.mode == 1
            and self.state in (STATE_MOVING, STATE_READY)
        )
        self.received.append(ReceivedMotion(kind, tuple(values), executable))
        if not executable:
            return
        if kind == "servo_joint":
            self.joints = list(values)
        else:
            self.pose = list(values)
        self.state = STATE_MOVING
        self.cmd_count += 1

    def _normal_report(self) -> bytes:
        with self.lock:
            enabled_bits = 0xFF if self.enabled else 0x00
            report = struct.pack(">I", NORMAL_REPORT_LENGTH)
            report += bytes([(self.mode << 4) | self.state])
            report += struct.pack(">H", self.cmd_count)
            report += struct.pack("<7f", *self.joints)
            report += struct.pack("<6f", *self.pose)
            report += struct.pack("<7f", *([0.0] * 7))
            report += bytes([enabled_bits, enabled_bits, self.error_code, self.warn_code])
            report += struct.pack("<6f", *([0.0] * 6))
            report += struct.pack("<4f", *([0.0] * 4))
            report += bytes([3, 3])
            report += struct.pack("<3f", 0.0, 0.0, -1.0)
        assert len(report) == NORMAL_REPORT_LENGTH
        return report


@contextlib.contextmanager
def serving_fake_xarm(joints=None, pose=None):
    """A started FakeXArmController that ``XArmAPI("127.0.0.1")`` connects to: the SDK's control and
    report ports are pointed at the fake's (and its report layout, which it picks by the well-known
    port number, mapped onto ours) until the block ends. ``joints`` / ``pose`` set the reported
    start state."""
    import pytest
    from xarm.core.config.x_config import XCONF
    from xarm.x3.report import ReportDataStructure

    fake = FakeXArmController().start()
    if joints is not None:
        fake.joints = list(joints)
    if pose is not None:
        fake.pose = list(pose)
    original_create = ReportDataStructure.create.__func__
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(XCONF.SocketConf, "TCP_CONTROL_PORT", fake.control_port)
            patch.setattr(XCONF.SocketConf, "TCP_REPORT_NORM_PORT", fake.report_port)
            patch.setattr(
                ReportDataStructure,
                "create",
                classmethod(
                    lambda cls, port, **kw: original_create(
                        cls, 30001 if port == fake.report_port else port, **kw
                    )
                ),
            )
            yield fake
    finally:
        fake.stop()

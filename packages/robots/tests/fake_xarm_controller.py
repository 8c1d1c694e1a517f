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
            else:
                answer = b""
            return self._status(), answer

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

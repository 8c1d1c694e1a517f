"""Runs franky-sim's MuJoCo FR3 on a loopback address only, as a child process of the Franka
tests: ``python franky_sim_server.py [127.x.y.z]`` (default 127.0.0.1).

franky-sim binds its TCP servers to the hostname it is given, but its per-client UDP state
socket to 0.0.0.0; the socket class seen by its server module is swapped for one that maps
that wildcard to the same loopback address, so nothing the tests start listens beyond loopback.
Prints READY once the servers accept connections and exits when stdin closes or on SIGTERM.
A line "reflex" on stdin makes the robot abort its motion with a joint-position-limit reflex,
as a real controller would (franky-sim itself never raises errors); error recovery clears it.

A gripper Stop answers the move or grasp it interrupts with status Aborted, as the Franka Hand
does (libfranka's Gripper::move then returns false). franky-sim 1.0.4 drops that answer, so the
client's pending move never ends: franky's next gripper command and its Gripper destructor then
wait for it forever.
"""

import ipaddress
import signal
import socket
import sys
import threading
import types

LOOPBACK = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
if not ipaddress.ip_address(LOOPBACK).is_loopback:
    raise SystemExit(
        f"franky_sim_server: {LOOPBACK!r} is not a loopback address; the tests serve on 127.0.0.0/8 only"
    )


class _LoopbackSocket(socket.socket):
    def bind(self, address):
        host, *rest = address
        if host in ("0.0.0.0", ""):
            host = LOOPBACK
        super().bind((host, *rest))


def _loopback_only_socket_module() -> types.ModuleType:
    shim = types.ModuleType("socket")
    shim.__dict__.update(socket.__dict__)
    shim.socket = _LoopbackSocket
    return shim


def _install_reflex_injection() -> list:
    """Makes robot servers able to fake a reflex; returns the list the servers register in."""
    from franky_sim import franka_robot_protocol, franka_robot_server, simulation_server
    from franky_sim.franka_robot_protocol import BaseCommand, MoveStatus, RobotCommand, RobotMode

    servers = []
    joint_position_limits_violation = (True,) + (False,) * 40

    class ReflexRobotServer(franka_robot_server.FrankaRobotServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reflex_requested = threading.Event()
            self.in_reflex = False
            servers.append(self)

        def _pre_process_commands(self):
            super()._pre_process_commands()
            # Runs on the simulation thread, so the TCP reply cannot interleave with others.
            if self.reflex_requested.is_set() and not self.in_reflex:
                self.in_reflex = True
                if self.current_motion_id:
                    BaseCommand.send_response(
                        self._tcp_socket,
                        RobotCommand.kMove,
                        self.current_motion_id,
                        MoveStatus.kReflexAborted,
                    )
                    self.stop_motion(send_preemption_signal=False)
                    self.reset_current_motion_id()

        @property
        def robot_state(self):
            state = super().robot_state
            if not self.in_reflex:
                return state
            return state.replace(
                robot_mode=RobotMode.kReflex,
                errors=joint_position_limits_violation,
                reflex_reason=joint_position_limits_violation,
            )

    original_recovery = franka_robot_protocol.AutomaticErrorRecoveryCommand.handle

    def recover_and_clear(self, server):
        server.reflex_requested.clear()
        server.in_reflex = False
        original_recovery(self, server)

    franka_robot_protocol.AutomaticErrorRecoveryCommand.handle = recover_and_clear
    simulation_server.FrankaRobotServer = ReflexRobotServer
    return servers


def _install_gripper_stop_that_answers_the_interrupted_move() -> None:
    from franky_sim import franka_gripper_server
    from franky_sim.franka_gripper_protocol import GripperCommandStatus
    from franky_sim.franka_server import BaseCommand

    original_stop = franka_gripper_server.FrankaGripperServer.stop

    def stop(self, command_id, tcp_socket):
        # Commands are handled on the simulation thread, which also answers settled moves: no race.
        command_type, pending_id, pending_socket = (
            self._pending_command_type,
            self._pending_command_id,
            self._pending_tcp_socket,
        )
        self._pending_command_id = self._pending_tcp_socket = None
        if pending_id is not None and pending_socket is not None:
            BaseCommand.send_response(
                pending_socket,
                command_type,
                pending_id,
                GripperCommandStatus.kAborted,
                command_type_struct="H",
                status_type_struct="H",
            )
        original_stop(self, command_id, tcp_socket)

    franka_gripper_server.FrankaGripperServer.stop = stop


def _read_commands(servers: list, stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "reflex":
            for server in servers:
                server.reflex_requested.set()
    stop.set()


def main() -> None:
    from franky_sim import SimulationServer, franka_server
    from franky_sim.mujoco_simulator import MujocoSimulator

    franka_server.socket = _loopback_only_socket_module()
    servers = _install_reflex_injection()
    _install_gripper_stop_that_answers_the_interrupted_move()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_read_commands, args=(servers, stop), daemon=True).start()

    with MujocoSimulator(enable_visualization=False) as sim:
        sim.add_robot()
        with SimulationServer(sim, hostname_candidates=[LOOPBACK]) as server:
            server.run_async()
            print("READY", flush=True)
            stop.wait()


if __name__ == "__main__":
    main()

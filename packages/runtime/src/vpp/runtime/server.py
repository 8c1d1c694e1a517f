"""A policy server: one :class:`~vpp.runtime.policy.Policy` on the GPU box, answering
:class:`~vpp.runtime.client.PolicyClient` calls from robot PCs over WebSocket (``vpp.runtime.protocol``).

Each connection gets a thread (websockets' threading server), so keep-alive pings are answered
while a request waits; inference runs one request at a time under a lock, because the Policy's
noise generator and text cache are not thread-safe and interleaved requests would only make
every reply later. Each reply says how long its request waited for the model (``queue_ms``)
apart from the inference itself (``infer_ms``). Bad input is answered with an error reply and
the connection stays open.

Health: an HTTP ``GET /healthz`` on the same port (what Kubernetes probes, Docker's
HEALTHCHECK and ``curl -f`` expect) answers 200 with a JSON body (``status`` "ok", protocol and
server versions, open connections, requests in flight and served, uptime), or 503 with
``status`` "shutting_down" once :meth:`PolicyServer.shutdown` has begun;
``vpp.runtime.client.check_health`` and ``vpp-runtime health URL`` read it.

Shutting down (SIGTERM/SIGINT in ``vpp-runtime serve``): new connections are refused (HTTP 503),
every request already received is answered, and each connection is then closed with code
1001 (going away).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError
from vpp.runtime.policy import Policy
from vpp.runtime.protocol import (
    HEALTH_PATH,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    actions_reply,
    error_reply,
    message_id,
    pack,
    parse_act_request,
    unpack,
)

logger = logging.getLogger(__name__)

# Answered without a traceback in the server's log: the client's fault, or (non-finite actions)
# explained in the message itself.
BAD_REQUEST_ERRORS = (ObservationError, UnknownInstructionError, ProtocolError, NonFiniteActionsError)
# How often an idle connection's thread looks up from waiting for a request to see whether the
# server is shutting down; it then closes its connection itself, so that no request it has
# received goes unanswered.
SHUTDOWN_POLL_SECONDS = 0.1


def server_version() -> str | None:
    try:
        return version("vpp-runtime")
    except PackageNotFoundError:  # sources on the path without an installed distribution
        return None


def _milliseconds(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


def warm_up(policy: Policy) -> float:
    """One chunk from a blank observation, so that ORT's allocations (and TensorRT's engine
    build) happen before the first robot request; returns its milliseconds. Draws its noise
    from its own generator: a seeded policy's sequence is the same with or without it."""
    observation: dict[str, Any] = {
        camera: np.zeros((policy.image_size, policy.image_size, 3), np.uint8) for camera in policy.cameras
    }
    if policy.state_dim is not None:
        observation["state"] = policy.state_normalizer.midpoint()
    started = time.perf_counter()
    policy.act(observation, policy.instructions[0], noise=policy.sample_noise(np.random.default_rng(0)))
    return _milliseconds(started)


class PolicyServer:
    """Listens on ``host:port`` (``port=0``: a free port, see :attr:`port`) from construction;
    :meth:`serve_forever` answers until :meth:`shutdown` (from another thread), which first
    answers every request already received (waiting up to ``drain_timeout`` seconds)."""

    def __init__(
        self, policy: Policy, host: str = "127.0.0.1", port: int = 8000, drain_timeout: float = 60.0
    ) -> None:
        self.policy = policy
        self.drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._noise_shapes = {
            name: noise.shape for name, noise in policy.sample_noise(np.random.default_rng(0)).items()
        }
        self._closing = threading.Event()
        # Guards the counts below; notified when a connection's thread ends.
        self._activity = threading.Condition()
        self._connections = 0
        self._in_flight = 0
        self._served = 0
        self._started = time.monotonic()
        # permessage-deflate off: compressing camera frames cost ~10 ms a message, more than it saves
        # on a LAN (the client offers none either).
        self._server = serve(
            self._serve_connection,
            host,
            port,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            process_request=self._process_request,
        )

    @property
    def host(self) -> str:
        return self._server.socket.getsockname()[0]

    @property
    def port(self) -> int:
        return self._server.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def metadata(self) -> dict[str, Any]:
        """What a client learns on connecting (instructions as cached now: new ones join the
        cache when the artifact has a text encoder)."""
        policy = self.policy
        return {
            "type": "metadata",
            "protocol_version": PROTOCOL_VERSION,
            "server_version": server_version(),
            "format_version": policy.artifact.manifest.format_version,
            "cameras": policy.cameras,
            "image_size": policy.image_size,
            "action_dim": policy.action_dim,
            "chunk": policy.chunk,
            "state_dim": policy.state_dim,
            "instructions": policy.instructions,
            "text_encoder": policy.text_session is not None,
            "noise_shapes": {name: list(shape) for name, shape in self._noise_shapes.items()},
            "providers": policy.policy_session.get_providers(),
            "max_image_side": policy.max_image_side,
        }

    def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` answers (see the module's docstring)."""
        with self._activity:
            connections, in_flight, served = self._connections, self._in_flight, self._served
        return {
            "status": "shutting_down" if self._closing.is_set() else "ok",
            "protocol_version": PROTOCOL_VERSION,
            "server_version": server_version(),
            "connections": connections,
            "in_flight": in_flight,
            "served": served,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answers the health check over plain HTTP; refuses new WebSocket connections while
        shutting down; lets every other request on to the WebSocket handshake."""
        if urlsplit(request.path).path == HEALTH_PATH:
            health = self.health()
            status = HTTPStatus.OK if health["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            response = connection.respond(status, json.dumps(health) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if self._closing.is_set():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the policy server is shutting down\n")
        return None

    def serve_forever(self) -> None:
        logger.info("policy server listening on %s", self.url)
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Refuses new connections, answers every request already received, closes each
        connection (code 1001) once it has no request left, then stops listening and waits for
        the connections' threads. After ``drain_timeout`` seconds the connections still open are
        closed whatever they are doing. Idempotent."""
        self._closing.set()
        with self._activity:
            drained = self._activity.wait_for(lambda: self._connections == 0, timeout=self.drain_timeout)
        if not drained:
            logger.warning(
                "%d requests still in flight after %.0f s: closing their connections",
                self._in_flight,
                self.drain_timeout,
            )
        self._server.shutdown()

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _check_noise(self, noise: Mapping[str, np.ndarray]) -> None:
        # ORT's own complaint about a bad feed names graph internals, not what to send.
        for name, shape in self._noise_shapes.items():
            given = noise.get(name)
            if given is None or given.shape != shape or given.dtype != np.float32:
                got = "nothing" if given is None else f"{given.dtype} {given.shape}"
                raise ProtocolError(
                    f"noise[{name!r}] is {got}; this policy takes float32 {shape} (noise shapes: {self._noise_shapes})"
                )

    def handle(self, frame: bytes | str) -> bytes:
        """One request frame -> its reply frame. Never raises: every failure is an error reply."""
        arrived = time.perf_counter()
        request_id, queue_ms, infer_ms = None, 0.0, 0.0
        try:
            message = unpack(frame)
            request_id = message_id(message)
            request = parse_act_request(message)
            if request.noise is not None:
                self._check_noise(request.noise)
            queued = time.perf_counter()
            with self._lock:
                started = time.perf_counter()
                queue_ms = (started - queued) * 1e3
                try:
                    actions = self.policy.act(request.observation, request.instruction, noise=request.noise)
                finally:
                    infer_ms = _milliseconds(started)
        except Exception as error:
            if isinstance(error, BAD_REQUEST_ERRORS):
                logger.warning("request %s rejected: %s: %s", request_id, type(error).__name__, error)
            else:
                logger.exception("request %s failed inside the server", request_id)
            timing = {"queue_ms": queue_ms, "infer_ms": infer_ms, "total_ms": _milliseconds(arrived)}
            return error_reply(request_id, error, timing)
        total_ms = _milliseconds(arrived)
        logger.info(
            "request %s %r: inference %.1f ms, queued %.1f ms, total %.1f ms",
            request_id,
            request.instruction,
            infer_ms,
            queue_ms,
            total_ms,
        )
        return actions_reply(
            request_id, actions, {"queue_ms": queue_ms, "infer_ms": infer_ms, "total_ms": total_ms}
        )

    def _serve_connection(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        logger.info("client %s connected", peer)
        with self._activity:
            self._connections += 1
        try:
            connection.send(pack(self.metadata()))
            while True:
                # A timeout, not a plain recv: the thread must see a shutdown begin while idle,
                # and close the connection itself between requests, not in the middle of one.
                # Once it has begun, requests already received are still answered.
                closing = self._closing.is_set()
                try:
                    frame = connection.recv(timeout=0 if closing else SHUTDOWN_POLL_SECONDS)
                except TimeoutError:
                    if closing:
                        connection.close(CloseCode.GOING_AWAY, "the policy server is shutting down")
                        logger.info("client %s closed: the server is shutting down", peer)
                        return
                    continue
                with self._activity:
                    self._in_flight += 1
                try:
                    connection.send(self.handle(frame))
                finally:
                    with self._activity:
                        self._in_flight -= 1
                        self._served += 1
        except ConnectionClosedOK:
            logger.info("client %s disconnected", peer)
        except ConnectionClosed as closed:
            logger.info("client %s gone: %s", peer, closed)
        finally:
            with self._activity:
                self._connections -= 1
                self._activity.notify_all()

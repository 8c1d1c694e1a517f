"""A policy server: one :class:`~vpp.runtime.policy.Policy` on the GPU box, answering
:class:`~vpp.runtime.client.PolicyClient` calls from robot PCs over WebSocket (``vpp.runtime.protocol``).

Each connection gets a thread (websockets' threading server), so keep-alive pings are answered
while a request waits; inference runs one request at a time under a lock, because the Policy's
noise generator and text cache are not thread-safe and interleaved requests would only make
every reply later. Bad input is answered with an error reply and the connection stays open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from vpp.runtime.errors import ObservationError, UnknownInstructionError
from vpp.runtime.policy import Policy
from vpp.runtime.protocol import (
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

# The client's fault: answered without a traceback in the server's log.
BAD_REQUEST_ERRORS = (ObservationError, UnknownInstructionError, ProtocolError)


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
    :meth:`serve_forever` answers until :meth:`shutdown` (from another thread)."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._noise_shapes = {
            name: noise.shape for name, noise in policy.sample_noise(np.random.default_rng(0)).items()
        }
        # permessage-deflate off: compressing camera frames costs more time than it saves on a LAN.
        self._server = serve(self._serve_connection, host, port, compression=None, max_size=MAX_MESSAGE_BYTES)

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
        }

    def serve_forever(self) -> None:
        logger.info("policy server listening on %s", self.url)
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stops listening, closes every connection (code 1001) and waits for their threads,
        so a request already in inference finishes first. Idempotent."""
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
        request_id, infer_ms = None, 0.0
        try:
            message = unpack(frame)
            request_id = message_id(message)
            request = parse_act_request(message)
            if request.noise is not None:
                self._check_noise(request.noise)
            with self._lock:
                started = time.perf_counter()
                try:
                    actions = self.policy.act(request.observation, request.instruction, noise=request.noise)
                finally:
                    infer_ms = _milliseconds(started)
        except Exception as error:
            if isinstance(error, BAD_REQUEST_ERRORS):
                logger.warning("request %s rejected: %s: %s", request_id, type(error).__name__, error)
            else:
                logger.exception("request %s failed inside the server", request_id)
            return error_reply(request_id, error, {"infer_ms": infer_ms, "total_ms": _milliseconds(arrived)})
        total_ms = _milliseconds(arrived)
        logger.info(
            "request %s %r: inference %.1f ms, total %.1f ms",
            request_id,
            request.instruction,
            infer_ms,
            total_ms,
        )
        return actions_reply(request_id, actions, {"infer_ms": infer_ms, "total_ms": total_ms})

    def _serve_connection(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        logger.info("client %s connected", peer)
        try:
            connection.send(pack(self.metadata()))
            for frame in connection:
                connection.send(self.handle(frame))
        except ConnectionClosed as closed:
            logger.info("client %s gone: %s", peer, closed)
        else:
            logger.info("client %s disconnected", peer)

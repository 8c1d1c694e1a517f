"""The light client of a policy server (``vpp-runtime serve``): a robot PC without a GPU asks a
remote :class:`~vpp.runtime.policy.Policy` for action chunks.

Imports numpy, msgpack and websockets only (no onnxruntime), and raises what a local Policy
raises for the same input (:class:`ObservationError`, :class:`UnknownInstructionError`), so
calling code works with either::

    with PolicyClient("ws://gpu-box:8000") as policy:
        actions = policy.act({"corner": frame_uint8_hwc, "state": state}, "open the drawer")
        policy.last_timing.infer_ms, policy.last_timing.queue_ms, policy.last_timing.round_trip_ms

    check_health("ws://gpu-box:8000")["status"]  # "ok": the server's GET /healthz, no WebSocket
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError
from vpp.runtime.protocol import (
    HEALTH_PATH,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    PolicyServerError,
    ProtocolError,
    act_request,
    message_id,
    unpack,
)

logger = logging.getLogger(__name__)

# Server-side exceptions re-raised as themselves; any other arrives as PolicyServerError.
REMOTE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (ObservationError, UnknownInstructionError, NonFiniteActionsError, ProtocolError)
}


class PolicyConnectionError(ConnectionError):
    """The policy server cannot be reached, or the connection to it was lost."""


@dataclass(frozen=True)
class RequestTiming:
    """Milliseconds of one ``act``: ``infer_ms`` the server's Policy.act, ``queue_ms`` the wait
    for the model while the server answered other clients (NaN from a server that does not
    report it), ``server_total_ms`` the server from request to reply (decoding, queueing,
    inference), and ``round_trip_ms`` the client from sending to the decoded reply (adds the
    network and the messages' encoding)."""

    infer_ms: float
    server_total_ms: float
    round_trip_ms: float
    queue_ms: float = float("nan")


def health_url(url: str) -> str:
    """The HTTP health-check address of the policy server at ``url`` (ws://, wss://, http:// or https://)."""
    parts = urlsplit(url)
    schemes = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{url!r} is not a policy server address; expected ws://HOST:PORT")
    return urlunsplit((schemes[parts.scheme], parts.netloc, HEALTH_PATH, "", ""))


def check_health(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The policy server's ``GET /healthz`` answer, e.g. ``{"status": "ok", "in_flight": 0, ...}``
    (``status`` "shutting_down" once it is stopping), without opening a WebSocket. Raises
    :class:`PolicyConnectionError` when no policy server answers within ``timeout`` seconds.
    Environment proxy settings are ignored, as :class:`PolicyClient` ignores them."""
    address = health_url(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(address, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503 while shutting down still carries the JSON body
        body = error.read()
        error.close()
    except (OSError, ValueError) as error:  # URLError and timeouts are OSErrors
        raise PolicyConnectionError(
            f"no policy server answers {address} (timeout {timeout} s): {type(error).__name__}: {error}"
        ) from error
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not (isinstance(health, dict) and isinstance(health.get("status"), str)):
        raise PolicyConnectionError(
            f"{address} answered {body[:200]!r}, not a policy server's health report; is it a vpp-runtime server?"
        )
    return health


class PolicyClient:
    """A connection to ``vpp-runtime serve``, with the ``act`` call of :class:`~vpp.runtime.policy.Policy`.

    ``connect_timeout`` bounds the connection and the server's metadata message;
    ``request_timeout`` (None: wait) bounds each ``act``, after which a late reply is skipped.
    Environment proxy settings are ignored: the server is expected on the robot's own network.
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        connect_timeout: float = 10.0,
        request_timeout: float | None = None,
    ) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self.last_timing: RequestTiming | None = None
        self._lock = threading.Lock()
        self._last_id = 0
        self._exit_stack = ExitStack()
        try:
            self._connection = self._exit_stack.enter_context(
                connect(
                    url,
                    open_timeout=connect_timeout,
                    compression=None,
                    max_size=MAX_MESSAGE_BYTES,
                    proxy=None,
                )
            )
            metadata = unpack(self._connection.recv(timeout=connect_timeout))
        except (OSError, InvalidHandshake, ConnectionClosed) as error:  # OSError covers refusals and timeouts
            self._exit_stack.close()
            raise PolicyConnectionError(
                f"cannot reach a policy server at {url} (timeout {connect_timeout} s): {type(error).__name__}: {error}"
            ) from error
        except ProtocolError:
            self._exit_stack.close()
            raise
        if metadata["type"] != "metadata" or metadata.get("protocol_version") != PROTOCOL_VERSION:
            self._exit_stack.close()
            raise ProtocolError(
                f"{url} sent {metadata['type']!r} message with protocol_version "
                f"{metadata.get('protocol_version')!r} on connecting; this client speaks protocol_version "
                f"{PROTOCOL_VERSION} (is it a vpp-runtime policy server of the same release?)"
            )
        self.metadata: dict[str, Any] = metadata

    # The Policy's description, as the server reported it on connecting.
    @property
    def cameras(self) -> list[str]:
        return list(self.metadata["cameras"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def action_dim(self) -> int:
        return int(self.metadata["action_dim"])

    @property
    def chunk(self) -> int:
        return int(self.metadata["chunk"])

    @property
    def state_dim(self) -> int | None:
        return self.metadata["state_dim"]

    @property
    def instructions(self) -> list[str]:
        return list(self.metadata["instructions"])

    def act(
        self, observation: Mapping[str, Any], instruction: str, noise: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """{camera: uint8 (H, W, 3), "state": (S,)} + instruction -> actions (chunk, action_dim),
        float32, computed by the server's Policy; ``noise`` as ``Policy.act`` takes it."""
        with self._lock:
            self._last_id += 1
            request_id = self._last_id
            frame = act_request(request_id, observation, instruction, noise)
            sent = time.perf_counter()
            try:
                self._connection.send(frame)
                reply = self._reply_to(request_id, sent)
            except ConnectionClosed as closed:
                raise PolicyConnectionError(
                    f"the connection to the policy server at {self.url} is closed: {closed}"
                ) from closed
            round_trip_ms = (time.perf_counter() - sent) * 1e3
        server_timing = reply.get("server_timing") or {}
        self.last_timing = RequestTiming(
            infer_ms=float(server_timing.get("infer_ms", float("nan"))),
            server_total_ms=float(server_timing.get("total_ms", float("nan"))),
            round_trip_ms=round_trip_ms,
            queue_ms=float(server_timing.get("queue_ms", float("nan"))),
        )
        if reply["type"] == "error":
            raise self._remote_error(reply.get("error") or {})
        actions = reply.get("actions")
        if reply["type"] != "actions" or not isinstance(actions, np.ndarray):
            raise ProtocolError(
                f"reply of type {reply['type']!r} with actions {actions!r:.80}; "
                "expected an 'actions' reply with an array"
            )
        return actions

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """The server's health report (:func:`check_health`), over a separate HTTP request, so
        it answers while this connection waits for a reply."""
        return check_health(self.url, timeout=timeout)

    def _reply_to(self, request_id: int, sent: float) -> dict[str, Any]:
        deadline = None if self.request_timeout is None else sent + self.request_timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            try:
                reply = unpack(self._connection.recv(timeout=remaining))
            except TimeoutError:
                raise TimeoutError(
                    f"no reply from the policy server at {self.url} within {self.request_timeout} s "
                    f"(request {request_id}); its late reply will be skipped"
                ) from None
            reply_id = message_id(reply)
            # None: the server could not read the request's id, which only a request it could not decode lacks.
            if reply_id is None or reply_id == request_id:
                return reply
            logger.info("skipping the late reply to request %s", reply_id)

    def _remote_error(self, error: Mapping[str, Any]) -> Exception:
        name, message = str(error.get("type")), str(error.get("message"))
        cls = REMOTE_ERRORS.get(name)
        exception = PolicyServerError(name, message) if cls is None else cls(message)
        exception.add_note(f"raised by the policy server at {self.url}")
        return exception

    def close(self) -> None:
        """Closes the connection (idempotent)."""
        self._exit_stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

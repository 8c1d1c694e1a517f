"""The policy server's wire format: msgpack messages over WebSocket binary frames.

Only numpy and msgpack: a robot PC's client imports this without onnxruntime.

A numpy array (or numpy scalar) travels as msgpack extension type ``NDARRAY_EXT`` whose payload
is the msgpack array ``[dtype, shape, data]``: ``dtype`` a numpy type string with its byte order
(``"|u1"``, ``"<f4"``), ``shape`` a list of ints, ``data`` the C-order bytes. Only boolean,
integer, unsigned, float and complex arrays travel, so a message never carries pickled objects.
Everything else is plain msgpack (dict, list, str, int, float, bool, None).

Messages (each a msgpack map with a ``type``):

- server -> client on connect: ``{"type": "metadata", "protocol_version": 1, ...}`` (see
  ``vpp.runtime.server.PolicyServer.metadata``; ``max_image_side`` is the largest image side
  the policy takes).
- client -> server: ``{"type": "act", "id": int, "observation": {camera: uint8 (H, W, 3),
  "state": (S,)}, "instruction": str, "noise": {name: float32 array} | None}``.
- server -> client: ``{"type": "actions", "id": int, "actions": float32 (chunk, action_dim),
  "server_timing": {"queue_ms": float, "infer_ms": float, "total_ms": float}}`` or ``{"type":
  "error", "id": int | None, "error": {"type": exception class name, "message": str},
  "server_timing": ...}``. ``queue_ms`` is the wait for the model while it answered other
  clients' requests, ``infer_ms`` is ``Policy.act`` alone, ``total_ms`` runs from the request's
  arrival to the reply's encoding (decoding, queueing, inference).

Beside the WebSocket, the server answers an HTTP ``GET /healthz`` (``HEALTH_PATH``) on the same
port with a JSON body: 200 ``{"status": "ok", ...}``, or 503 ``{"status": "shutting_down", ...}``
(see ``vpp.runtime.server``).

Versions: ``PROTOCOL_VERSION`` changes when a message changes meaning, or a field one side needs
is added, renamed or removed; a client refuses a server of another version on connecting. New
fields the other side may ignore keep the version (``queue_ms`` and ``max_image_side`` joined
version 1 this way; a client reads a missing ``queue_ms`` as NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
HEALTH_PATH = "/healthz"
NDARRAY_EXT = 1
# Two 480x640 RGB frames are ~1.8 MB; the websockets default (1 MiB) would refuse them.
MAX_MESSAGE_BYTES = 64 * 2**20
# Numeric kinds only: object ("O") arrays would need pickle, and strings or records have no use here.
ARRAY_KINDS = "biufc"


class ProtocolError(ValueError):
    """A message that is not valid msgpack of this protocol (or asks for something it cannot)."""


class PolicyServerError(RuntimeError):
    """An error the server raised that has no class of its own on the client (a failure inside
    inference, not bad input); ``remote_type`` names the server-side exception class."""

    def __init__(self, remote_type: str, message: str) -> None:
        super().__init__(f"{remote_type} on the policy server: {message}")
        self.remote_type = remote_type


def _encode(value: Any) -> msgpack.ExtType:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise ProtocolError(
            f"cannot send a {type(value).__name__} ({value!r:.80}); send numpy arrays, numbers, strings, lists or dicts"
        )
    if value.dtype.kind not in ARRAY_KINDS:
        raise ProtocolError(
            f"cannot send an array of dtype {value.dtype}; only bool, integer, float and complex arrays travel"
        )
    payload = msgpack.packb([value.dtype.str, list(value.shape), value.tobytes(order="C")], use_bin_type=True)
    return msgpack.ExtType(NDARRAY_EXT, payload)


def _decode_ext(code: int, payload: bytes) -> np.ndarray:
    if code != NDARRAY_EXT:
        raise ProtocolError(
            f"msgpack extension type {code}; this protocol knows only {NDARRAY_EXT} (ndarray)"
        )
    fields = msgpack.unpackb(payload, raw=False)
    if not (isinstance(fields, list) and len(fields) == 3):
        raise ProtocolError(f"ndarray payload {fields!r:.80}; expected [dtype, shape, data]")
    dtype_name, shape, data = fields
    try:
        dtype = np.dtype(dtype_name)
    except TypeError as error:
        raise ProtocolError(f"ndarray dtype {dtype_name!r} is not a numpy type string ({error})") from None
    if dtype.kind not in ARRAY_KINDS:
        raise ProtocolError(
            f"ndarray dtype {dtype_name!r}; only bool, integer, float and complex arrays are accepted"
        )
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)) or not isinstance(
        data, bytes
    ):
        raise ProtocolError(
            f"ndarray shape {shape!r} / data of type {type(data).__name__}; expected a list of ints >= 0 and bytes"
        )
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            f"ndarray of dtype {dtype_name} and shape {tuple(shape)} needs {expected} bytes; got {len(data)}"
        )
    # A copy: arrays straight from the message bytes would be read-only, unlike what Policy.act returns.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def pack(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes | str) -> Any:
    """Decodes one frame; anything that is not a msgpack map of this protocol raises ProtocolError."""
    if isinstance(data, str):
        raise ProtocolError("got a text frame; this protocol sends msgpack in binary frames")
    try:
        message = msgpack.unpackb(data, ext_hook=_decode_ext, raw=False)
    except ProtocolError:
        raise
    except (
        Exception
    ) as error:  # msgpack raises several unrelated types (ExtraData, FormatError, ValueError, ...)
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ProtocolError(f"{len(data)}-byte frame is not a msgpack message ({detail})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"message {message!r:.80} is not a map with a 'type'")
    return message


@dataclass(frozen=True)
class ActRequest:
    observation: dict[str, Any]
    instruction: str
    noise: dict[str, np.ndarray] | None


def act_request(
    request_id: int, observation: Mapping[str, Any], instruction: str, noise: Mapping[str, np.ndarray] | None
) -> bytes:
    return pack(
        {
            "type": "act",
            "id": request_id,
            "observation": dict(observation),
            "instruction": instruction,
            "noise": None if noise is None else dict(noise),
        }
    )


def message_id(message: Mapping[str, Any]) -> int | None:
    """The request id to echo in the reply, even to a request that is otherwise malformed."""
    request_id = message.get("id")
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None


def parse_act_request(message: Mapping[str, Any]) -> ActRequest:
    if message["type"] != "act":
        raise ProtocolError(f"message type {message['type']!r}; the server answers only 'act'")
    observation, instruction, noise = (
        message.get("observation"),
        message.get("instruction"),
        message.get("noise"),
    )
    if not (isinstance(observation, dict) and all(isinstance(key, str) for key in observation)):
        raise ProtocolError(
            f"'observation' is {observation!r:.80}; expected a map of camera names (and 'state') to arrays"
        )
    if not isinstance(instruction, str):
        raise ProtocolError(f"'instruction' is {instruction!r:.80}; expected a string")
    if noise is not None and not (
        isinstance(noise, dict) and all(isinstance(v, np.ndarray) for v in noise.values())
    ):
        raise ProtocolError(f"'noise' is {noise!r:.80}; expected null or a map of names to arrays")
    return ActRequest(observation, instruction, noise)


def actions_reply(request_id: int | None, actions: np.ndarray, server_timing: dict[str, float]) -> bytes:
    return pack({"type": "actions", "id": request_id, "actions": actions, "server_timing": server_timing})


def error_reply(request_id: int | None, error: BaseException, server_timing: dict[str, float]) -> bytes:
    return pack(
        {
            "type": "error",
            "id": request_id,
            "error": {"type": type(error).__name__, "message": str(error)},
            "server_timing": server_timing,
        }
    )

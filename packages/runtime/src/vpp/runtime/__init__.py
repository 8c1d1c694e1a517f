"""vpp.runtime"""

from __future__ import annotations

from typing import Any

from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError

__all__ = [
    "NonFiniteActionsError",
    "ObservationError",
    "Policy",
    "PolicyClient",
    "PolicyServer",
    "UnknownInstructionError",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: Policy and PolicyServer need onnxruntime, which a robot PC that only
    # runs PolicyClient (numpy, msgpack, websockets) does not install.
    if name == "Policy":
        from vpp.runtime.policy import Policy

        return Policy
    if name == "PolicyClient":
        from vpp.runtime.client import PolicyClient

        return PolicyClient
    if name == "PolicyServer":
        from vpp.runtime.server import PolicyServer

        return PolicyServer
    raise AttributeError(f"module 'vpp.runtime' has no attribute {name!r}")

"""The errors a policy raises on bad input, importable without onnxruntime.

They live apart from ``vpp.runtime.policy`` so that ``vpp.runtime.client`` (numpy, msgpack and
websockets only) raises the very classes a local :class:`~vpp.runtime.policy.Policy` raises.
:class:`ObservationError` is vpp-data's, the class the torch policy raises too.
"""

from vpp.data.errors import ObservationError

__all__ = ["ObservationError", "UnknownInstructionError"]


class UnknownInstructionError(KeyError):
    """An instruction that is not in the artifact's text-embedding cache, from an artifact
    exported without a text encoder."""

    def __str__(self) -> str:
        return str(self.args[0])

"""The errors a policy raises on bad input or bad output, importable without onnxruntime.

They live apart from ``vpp.runtime.policy`` so that ``vpp.runtime.client`` (numpy, msgpack and
websockets only) raises the very classes a local :class:`~vpp.runtime.policy.Policy` raises.
:class:`ObservationError` is vpp-data's, the class the torch policy raises too.
"""

from vpp.data.errors import ObservationError

__all__ = ["NonFiniteActionsError", "ObservationError", "UnknownInstructionError"]


class UnknownInstructionError(KeyError):
    """An instruction that is not in the artifact's text-embedding cache, from an artifact
    exported without a text encoder."""

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteActionsError(FloatingPointError):
    """The policy computed NaN or infinite actions; the chunk is withheld, since no robot
    should be sent it. The message names the inputs that explain it (a state far outside the
    training range, non-finite noise) where it can; ``actions`` holds the chunk, for
    inspection (None when the error came over the wire from a policy server)."""

    def __init__(self, message: str, actions: object = None) -> None:
        super().__init__(message)
        self.actions = actions

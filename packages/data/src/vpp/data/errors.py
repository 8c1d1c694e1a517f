"""Errors shared by every package that acts on observations, importable without torch.

:class:`ObservationError` is raised by the torch policy (``vpp.policy``) and the exported one
(``vpp.runtime``) alike, so that code calling ``act`` on either catches one class; vpp-data is
the one package both import.
"""


class ObservationError(ValueError):
    """An observation the policy cannot act on (missing camera, bad image, NaN state)."""

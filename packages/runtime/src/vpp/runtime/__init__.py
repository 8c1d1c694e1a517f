"""vpp.runtime"""

from vpp.runtime.policy import Policy

__all__ = ["Policy"]

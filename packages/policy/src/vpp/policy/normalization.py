"""Per-dimension affine map of actions (or states) to [-1, 1] and back.

``low`` maps to -1 and ``high`` to +1. The bounds are the data's min/max, or its 1st/99th
percentiles (the paper's real-robot setting), from raw arrays or from a LeRobot-style stats dict
(``{"min", "max", "q01", "q99", ...}`` per feature). With percentile bounds some values land
outside [-1, 1]; ``normalize(..., clip=True)`` clips them, which makes the map lossy there.
Fitted to data, a dimension that never changes (a gripper that stays open) maps value +- 1 to
[-1, 1]; bounds given explicitly must have a range.
The JSON form stores the bounds as decimal floats that read back bit-exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

METHODS = ("min_max", "percentile")
# Narrower ranges than this would blow noise up to full-scale actions.
MIN_RANGE = 1e-8
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


class NormalizationError(ValueError):
    """Bounds that cannot define an invertible normalisation (NaN, inf, zero range, bad shape)."""


@dataclass(frozen=True)
class ActionNormalizer:
    low: np.ndarray
    high: np.ndarray
    method: str = "min_max"

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64)
        high = np.asarray(self.high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or low.size == 0:
            raise NormalizationError(
                f"low {low.shape} and high {high.shape} must be equal non-empty 1-D shapes"
            )
        if self.method not in METHODS:
            raise NormalizationError(f"method={self.method!r}; expected one of {METHODS}")
        bad = np.flatnonzero(~(np.isfinite(low) & np.isfinite(high)))
        if bad.size:
            raise NormalizationError(
                f"non-finite bounds in dims {bad.tolist()}: low={low[bad].tolist()}, high={high[bad].tolist()}"
            )
        narrow = np.flatnonzero(high - low < MIN_RANGE)
        if narrow.size:
            raise NormalizationError(
                f"dims {narrow.tolist()} have range {(high - low)[narrow].tolist()} (low={low[narrow].tolist()}, "
                f"high={high[narrow].tolist()}); expected high - low >= {MIN_RANGE}: a constant dimension cannot be "
                "scaled to [-1, 1]"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def dim(self) -> int:
        return int(self.low.size)

    @classmethod
    def from_actions(
        cls,
        actions: np.ndarray | torch.Tensor,
        method: str = "min_max",
        percentiles: tuple[float, float] = (1.0, 99.0),
    ) -> ActionNormalizer:
        """Bounds over every axis but the last of ``actions`` (..., D). A dimension whose data
        range is below :data:`MIN_RANGE` gets the bounds value +- 1 (logged), so that it maps to 0."""
        data = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if data.ndim == 0 or data.size == 0:
            raise NormalizationError(
                f"actions have shape {data.shape}; expected (..., D) with at least one row"
            )
        data = data.astype(np.float64).reshape(-1, data.shape[-1])
        nan_dims = np.flatnonzero(np.isnan(data).any(axis=0))
        if nan_dims.size:
            raise NormalizationError(f"actions contain NaN in dims {nan_dims.tolist()}")
        if method == "min_max":
            low, high = data.min(axis=0), data.max(axis=0)
        elif method == "percentile":
            lower, upper = percentiles
            if not 0.0 <= lower < upper <= 100.0:
                raise NormalizationError(f"percentiles={percentiles}; expected 0 <= lower < upper <= 100")
            low, high = np.percentile(data, [lower, upper], axis=0)
        else:
            raise NormalizationError(f"method={method!r}; expected one of {METHODS}")
        narrow = high - low < MIN_RANGE
        if narrow.any():
            constant = np.flatnonzero(narrow).tolist()
            logger.warning("dims %s are constant in the data; normalising them as value +- 1", constant)
            centre = (low + high) / 2
            low, high = np.where(narrow, centre - 1.0, low), np.where(narrow, centre + 1.0, high)
        return cls(low, high, method)

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Any], key: str | None = "action", method: str = "min_max"
    ) -> ActionNormalizer:
        """From LeRobot stats: the whole ``meta/stats.json`` dict (pick ``key``) or one feature's dict."""
        feature = stats[key] if key is not None and key in stats else stats
        names = {"min_max": ("min", "max"), "percentile": ("q01", "q99")}.get(method)
        if names is None:
            raise NormalizationError(f"method={method!r}; expected one of {METHODS}")
        missing = [name for name in names if name not in feature]
        if missing:
            raise NormalizationError(
                f"stats have no {missing} (keys: {sorted(feature)}); method {method!r} needs {list(names)}"
            )
        low, high = (np.asarray(feature[name], dtype=np.float64).reshape(-1) for name in names)
        return cls(low, high, method)

    def _with_bounds(self, x: ArrayLike) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
        """``x`` as floating point, and the bounds in its dtype and device."""
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise NormalizationError(f"values have shape {tuple(x.shape)}; expected (..., {self.dim})")
        if isinstance(x, torch.Tensor):
            x = x if x.is_floating_point() else x.double()
            return (
                x,
                torch.as_tensor(self.low, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.high, dtype=x.dtype, device=x.device),
            )
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
        return x, self.low.astype(x.dtype, copy=False), self.high.astype(x.dtype, copy=False)

    def normalize(self, x: ArrayLike, clip: bool = False) -> ArrayLike:
        x, low, high = self._with_bounds(x)
        out = 2.0 * (x - low) / (high - low) - 1.0
        if clip:
            return out.clamp(-1.0, 1.0) if isinstance(out, torch.Tensor) else np.clip(out, -1.0, 1.0)
        return out

    def denormalize(self, x: ArrayLike) -> ArrayLike:
        x, low, high = self._with_bounds(x)
        return (x + 1.0) * 0.5 * (high - low) + low

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionNormalizer:
        if data.get("format_version") != FORMAT_VERSION:
            raise NormalizationError(
                f"format_version={data.get('format_version')!r}; expected {FORMAT_VERSION}"
            )
        return cls(
            np.asarray(data["low"], dtype=np.float64),
            np.asarray(data["high"], dtype=np.float64),
            data["method"],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ActionNormalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionNormalizer):
            return NotImplemented
        return (
            self.method == other.method
            and np.array_equal(self.low, other.low)
            and np.array_equal(self.high, other.high)
        )

    __hash__ = None  # type: ignore[assignment]

"""Reading an exported policy artifact (``vpp-policy export``): manifest, hashes, text cache.

Only numpy and the standard library: this module runs on a robot PC without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact folder that cannot be used as it is."""


class ArtifactFileMissingError(ArtifactError, FileNotFoundError):
    """A file the artifact needs is not there."""


class ArtifactHashMismatchError(ArtifactError):
    """A file's content differs from the sha256 the manifest recorded at export."""


class UnsupportedFormatVersionError(ArtifactError):
    """The manifest was written by an exporter this runtime does not understand."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Normalizer:
    """The affine map of the exported ActionNormalizer: ``low`` <-> -1, ``high`` <-> +1."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_manifest(cls, data: dict[str, Any], what: str) -> Normalizer:
        low, high = np.asarray(data["low"], dtype=np.float64), np.asarray(data["high"], dtype=np.float64)
        if low.shape != high.shape or low.ndim != 1 or not (high > low).all():
            raise ArtifactError(f"{what} normaliser bounds low={low.tolist()} high={high.tolist()}; expected 1-D with high > low")
        return cls(low, high)

    def normalize(self, values: np.ndarray) -> np.ndarray:
        return 2.0 * (values - self.low) / (self.high - self.low) - 1.0

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        return (values + 1.0) * 0.5 * (self.high - self.low) + self.low


@dataclass(frozen=True)
class Artifact:
    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: str | Path, verify: bool = True) -> Artifact:
        """Reads the manifest and, with ``verify``, checks every file against its sha256."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactFileMissingError(f"{manifest_path} does not exist: {folder} is not an exported policy artifact")
        manifest = json.loads(manifest_path.read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise UnsupportedFormatVersionError(
                f"{manifest_path}: format_version={version!r}; this runtime reads format_version {FORMAT_VERSION}"
            )
        for name, expected in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise ArtifactFileMissingError(f"{path} is listed in {manifest_path} but does not exist")
            if verify:
                actual = sha256_file(path)
                if actual != expected:
                    raise ArtifactHashMismatchError(f"{path}: sha256 {actual}; the manifest recorded {expected}")
        return cls(folder, manifest)

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def cameras(self) -> list[str]:
        return list(self.manifest["cameras"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def action_normalizer(self) -> Normalizer:
        return Normalizer.from_manifest(self.manifest["action"]["normalizer"], "action")

    @property
    def state_normalizer(self) -> Normalizer | None:
        state = self.manifest["state"]
        return None if state is None else Normalizer.from_manifest(state["normalizer"], "state")

    def text_cache(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """instruction -> (hidden states (1, L, D), pooled embedding (1, P)), float32."""
        text = self.manifest["text"]
        hidden = np.load(self.path(text["hidden_file"])).astype(np.float32)
        pooled = np.load(self.path(text["pooled_file"])).astype(np.float32)
        instructions = text["instructions"]
        if hidden.shape[0] != len(instructions) or pooled.shape[0] != len(instructions):
            raise ArtifactError(
                f"text cache holds {hidden.shape[0]} hidden / {pooled.shape[0]} pooled rows for {len(instructions)} instructions"
            )
        return {name: (hidden[i : i + 1], pooled[i : i + 1]) for i, name in enumerate(instructions)}

    def fixed_feature_noise(self) -> np.ndarray | None:
        name = self.manifest["features"]["fixed_noise_file"]
        return None if name is None else np.load(self.path(name)).astype(np.float32)[None]

"""Reading an exported policy artifact (``vpp-export``): its manifest, file hashes, text cache.

Only numpy and the standard library: this module runs on a robot PC without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpp.runtime.manifest import (
    ArtifactError,
    ArtifactFileMissingError,
    ArtifactHashMismatchError,
    Manifest,
    ManifestValueError,
    UnsupportedFormatVersionError,
    sha256_file,
)

__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactFileMissingError",
    "ArtifactHashMismatchError",
    "UnsupportedFormatVersionError",
    "sha256_file",
]


@dataclass(frozen=True)
class Artifact:
    """An artifact folder (ONNX graphs, text cache, ``manifest.json``) and its validated
    :class:`~vpp.runtime.manifest.Manifest`. :meth:`open` reads one from disk;
    ``vpp-export`` builds one from the manifest it is about to write, to run the graphs first."""

    folder: Path
    manifest: Manifest

    @classmethod
    def open(cls, folder: str | Path, verify: bool = True) -> Artifact:
        """Reads and checks the manifest (against its sha256 sidecar) and, with ``verify``,
        every file against the sha256 the manifest recorded."""
        folder = Path(folder)
        artifact = cls(folder, Manifest.read(folder))
        artifact.check_files(verify=verify)
        return artifact

    def check_files(self, verify: bool = True) -> None:
        """Every file the manifest lists exists and, with ``verify``, has its recorded sha256."""
        for name, expected in self.manifest.files.items():
            path = self.path(name)
            if not path.is_file():
                raise ArtifactFileMissingError(
                    f"{path} is listed in {self.folder / 'manifest.json'} but does not exist"
                )
            if verify:
                actual = sha256_file(path)
                if actual != expected:
                    raise ArtifactHashMismatchError(
                        f"{path}: sha256 {actual}; the manifest recorded {expected}"
                    )

    def path(self, name: str) -> Path:
        return self.folder / name

    def text_cache(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """instruction -> (hidden states (1, L, D), pooled embedding (1, P)), float32."""
        text = self.manifest.text
        hidden = np.load(self.path(text.hidden_file)).astype(np.float32)
        pooled = np.load(self.path(text.pooled_file)).astype(np.float32)
        expected_hidden, expected_pooled = (
            (len(text.instructions), *text.hidden_shape),
            (len(text.instructions), text.pooled_dim),
        )
        if hidden.shape != expected_hidden:
            raise ManifestValueError(
                "text.hidden_shape",
                f"{text.hidden_file} holds {hidden.shape}; the manifest implies {expected_hidden}",
            )
        if pooled.shape != expected_pooled:
            raise ManifestValueError(
                "text.pooled_dim",
                f"{text.pooled_file} holds {pooled.shape}; the manifest implies {expected_pooled}",
            )
        return {name: (hidden[i : i + 1], pooled[i : i + 1]) for i, name in enumerate(text.instructions)}

    def fixed_feature_noise(self) -> np.ndarray | None:
        """The TVP's starting noise (1, V, T, C, h, w) of a policy exported with fixed noise."""
        features = self.manifest.features
        if features.fixed_noise_file is None:
            return None
        noise = np.load(self.path(features.fixed_noise_file)).astype(np.float32)[None]
        if noise.shape != features.noise_shape:
            raise ManifestValueError(
                "features.noise_shape",
                f"{features.fixed_noise_file} holds {noise.shape[1:]}; the manifest implies {features.noise_shape}",
            )
        return noise

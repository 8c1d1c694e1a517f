"""A tiny artifact built with numpy and onnx alone, for the runtime's tests (no torch): a
:class:`vpp.runtime.testing.StandInArtifact`, whose graphs are arithmetic stand-ins with the real
artifact's inputs, outputs and shapes, so every input changes the actions."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vpp.runtime.manifest import MANIFEST, MANIFEST_SHA256
from vpp.runtime.testing import StandInArtifact

INSTRUCTIONS = ["open the drawer", "close the window"]
CAMERAS = ("corner", "wrist")
IMAGE_SIZE, CHUNK, ACTION_DIM, STATE_DIM = 8, 4, 4, 3
TEXT_TOKENS, TEXT_WIDTH, POOLED_DIM = 5, 6, 7
FEATURE_SHAPE = (1, len(CAMERAS), 2, 3, 2, 2)


# vpp.runtime.testing's defaults are this artifact's sizes; named here for the tests' reading
TINY = StandInArtifact(
    cameras=CAMERAS,
    image_size=IMAGE_SIZE,
    chunk=CHUNK,
    state_low=(-1.0,) * STATE_DIM,
    state_high=(1.0,) * STATE_DIM,
    instructions=tuple(INSTRUCTIONS),
    text_tokens=TEXT_TOKENS,
    text_width=TEXT_WIDTH,
    pooled_dim=POOLED_DIM,
    producer="the runtime's tests",
)
assert TINY.feature_shape == FEATURE_SHAPE and TINY.action_dim == ACTION_DIM


def write_tiny_artifact(
    folder: Path, feature_shape: tuple = FEATURE_SHAPE, chunk: int = CHUNK, text_encoder: bool = False
) -> Path:
    """Writes the tiny artifact into ``folder``; ``feature_shape`` and ``chunk`` set its graphs'
    shapes (the manifest always says FEATURE_SHAPE and CHUNK), to build graphs that disagree;
    ``text_encoder`` adds a stand-in text encoder, which encodes any instruction."""
    return TINY.write(folder, text_encoder=text_encoder, graph_feature_shape=feature_shape, graph_chunk=chunk)


@pytest.fixture
def make_tiny_artifact() -> Callable[..., Path]:
    """write_tiny_artifact, for tests that build graphs of other shapes."""
    return write_tiny_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact"))


@pytest.fixture
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A copy of the tiny artifact that a test may break."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


@pytest.fixture
def rewrite_manifest() -> Callable[..., None]:
    """rewrite_manifest(folder, change) applies ``change`` to the manifest's JSON object (or,
    given a string, writes that text) and records the new text's sha256 in the sidecar, so
    that what a test meets is the manifest's own error, not a hash mismatch."""

    def rewrite(folder: Path, change: Callable[[dict], Any] | str) -> None:
        if isinstance(change, str):
            text = change
        else:
            data = json.loads((folder / MANIFEST).read_text())
            change(data)
            text = json.dumps(data)
        (folder / MANIFEST).write_text(text)
        (folder / MANIFEST_SHA256).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")

    return rewrite

"""A tiny artifact built with numpy and onnx alone, for the runtime's tests (no torch).

Its graphs are stand-ins with the real artifact's inputs, outputs and shapes: features.onnx
adds the mean image and mean text state to the noise, policy.onnx adds the means of its other
inputs to half the action noise, so every input changes the actions. The manifest is written
by :class:`vpp.runtime.manifest.Manifest`, as vpp-export writes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from vpp.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SHA256,
    ActionSpec,
    FeatureSpec,
    GraphSpec,
    GraphsSpec,
    Manifest,
    Normalizer,
    Parity,
    SamplerSpec,
    StateSpec,
    TextEncoderSpec,
    TextSpec,
    sha256_file,
)
from vpp.runtime.tokenizer import byte_symbols

INSTRUCTIONS = ["open the drawer", "close the window"]
CAMERAS = ("corner", "wrist")
IMAGE_SIZE, CHUNK, ACTION_DIM, STATE_DIM = 8, 4, 4, 3
TEXT_TOKENS, TEXT_WIDTH, POOLED_DIM = 5, 6, 7
FEATURE_SHAPE = (1, len(CAMERAS), 2, 3, 2, 2)


def _graph(path: Path, nodes: list, inputs: dict[str, tuple], output: str, output_shape: tuple) -> None:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
            for name, shape in inputs.items()
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _mean(name: str) -> Any:
    return helper.make_node("ReduceMean", [name], [f"{name}_mean"], keepdims=0)


def _write_text_encoder(folder: Path) -> TextEncoderSpec:
    """A stand-in text encoder: every output value is the mean token id, so different
    instructions get different embeddings; its tokenizer knows single bytes only (no merges)."""
    hidden_shape, pooled_shape = (1, TEXT_TOKENS, TEXT_WIDTH), (1, POOLED_DIM)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["ids"], ["mean"], keepdims=1),  # (1, 1)
            helper.make_node(
                "Constant",
                [],
                ["hidden_shape"],
                value=helper.make_tensor("h", TensorProto.INT64, [3], hidden_shape),
            ),
            helper.make_node(
                "Constant",
                [],
                ["pooled_shape"],
                value=helper.make_tensor("p", TensorProto.INT64, [2], pooled_shape),
            ),
            helper.make_node("Expand", ["mean", "pooled_shape"], ["pooled"]),
            helper.make_node("Unsqueeze", ["mean", "axis"], ["mean_1x1x1"]),
            helper.make_node("Expand", ["mean_1x1x1", "hidden_shape"], ["hidden"]),
        ],
        "text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, list(hidden_shape)),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, list(pooled_shape)),
        ],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    save(model, str(folder / "text_encoder.onnx"))
    symbols = byte_symbols()
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": 256 + index for index, symbol in enumerate(symbols)})
    tokenizer = {"vocab": vocab, "merges": [], "bos_id": 512, "eos_id": 513, "pad_id": 513, "unk_id": 514}
    (folder / "tokenizer.json").write_text(json.dumps({**tokenizer, "max_length": 16}))
    return TextEncoderSpec("text_encoder.onnx", "tokenizer.json")


def write_tiny_artifact(
    folder: Path, feature_shape: tuple = FEATURE_SHAPE, chunk: int = CHUNK, text_encoder: bool = False
) -> Path:
    """Writes the tiny artifact into ``folder``; ``feature_shape`` and ``chunk`` set its graphs'
    shapes (the manifest always says FEATURE_SHAPE and CHUNK), to build graphs that disagree;
    ``text_encoder`` adds a stand-in text encoder, which encodes any instruction."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = _write_text_encoder(folder) if text_encoder else None
    features_inputs = {
        "images": (1, len(CAMERAS), 3, IMAGE_SIZE, IMAGE_SIZE),
        "text_hidden": (1, TEXT_TOKENS, TEXT_WIDTH),
        "noise": feature_shape,
    }
    _graph(
        folder / "features.onnx",
        [
            _mean("images"),
            _mean("text_hidden"),
            helper.make_node("Add", ["noise", "images_mean"], ["lit"]),
            helper.make_node("Add", ["lit", "text_hidden_mean"], ["features"]),
        ],
        features_inputs,
        "features",
        feature_shape,
    )
    half = helper.make_node("Constant", [], ["half"], value_float=0.5)
    policy_inputs = {
        "features": feature_shape,
        "lang": (1, POOLED_DIM),
        "noise": (1, chunk, ACTION_DIM),
        "state": (1, STATE_DIM),
    }
    _graph(
        folder / "policy.onnx",
        [
            half,
            helper.make_node("Mul", ["noise", "half"], ["scaled"]),
            _mean("features"),
            _mean("lang"),
            _mean("state"),
            helper.make_node("Add", ["scaled", "features_mean"], ["a"]),
            helper.make_node("Add", ["a", "lang_mean"], ["b"]),
            helper.make_node("Add", ["b", "state_mean"], ["actions"]),
        ],
        policy_inputs,
        "actions",
        (1, chunk, ACTION_DIM),
    )
    rng = np.random.default_rng(0)
    (folder / "text").mkdir(exist_ok=True)
    np.save(
        folder / "text" / "hidden.npy",
        rng.normal(size=(len(INSTRUCTIONS), TEXT_TOKENS, TEXT_WIDTH)).astype(np.float32),
    )
    np.save(
        folder / "text" / "pooled.npy", rng.normal(size=(len(INSTRUCTIONS), POOLED_DIM)).astype(np.float32)
    )
    files = {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        producer="the runtime's tests",
        opset=17,
        cameras=CAMERAS,
        image_size=IMAGE_SIZE,
        encoder="tvp",
        action=ActionSpec(
            ACTION_DIM, CHUNK, Normalizer("min_max", (-1.0, -2.0, -3.0, 0.0), (1.0, 2.0, 3.0, 0.5))
        ),
        state=StateSpec(STATE_DIM, Normalizer("min_max", (-1.0,) * STATE_DIM, (1.0,) * STATE_DIM)),
        features=FeatureSpec("random", FEATURE_SHAPE, None, 700.0, FEATURE_SHAPE),
        sampler=SamplerSpec("ddim", 2, 0.5, 80.0, 1.0, (80.0, 1.0, 0.0)),
        text=TextSpec(
            tuple(INSTRUCTIONS),
            "text/hidden.npy",
            "text/pooled.npy",
            (TEXT_TOKENS, TEXT_WIDTH),
            POOLED_DIM,
            encoder,
        ),
        graphs=GraphsSpec(
            features=GraphSpec("features.onnx", ("images", "text_hidden", "noise"), "features", {}, None),
            policy=GraphSpec("policy.onnx", ("features", "lang", "noise", "state"), "actions", {}, None),
        ),
        parity=Parity(None, 0.0, 0.0, 0.0, {"features_relative": 1e-3, "normalized_actions": 1e-3}),
        export_seconds=0.0,
        files=files,
    )
    manifest.write(folder)
    return folder


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

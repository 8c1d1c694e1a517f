"""Stand-in artifacts: what runs an artifact (a robot stack, a policy server, a CI job) can be tested
without torch, an export or a trained model.

A stand-in has a real artifact's files, inputs, outputs and typed manifest, written by
:class:`vpp.runtime.manifest.Manifest` as vpp-export writes it, but its graphs are arithmetic:
``features.onnx`` adds each view's mean image and the mean text state to the noise (the views
stay apart, as in a real feature pass, so the runtime may run them one per call), ``policy.onnx`` adds
the means of its other inputs to half the action noise, so every input moves the actions, and
:meth:`vpp.runtime.Policy.act` returns chunks on the scale of the manifest's action range (not
clipped to it: the runtime does not clip). Writing one needs the ``onnx`` package
(``vpp-runtime[test]``); running it needs only what `Policy` needs.

    from vpp.runtime.testing import StandInArtifact

    folder = StandInArtifact(cameras=("scene",), image_size=16).write(tmp_path / "artifact")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpp.runtime.manifest import (
    FORMAT_VERSION,
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


@dataclass(frozen=True)
class StandInArtifact:
    """The shape of a stand-in artifact. ``action_low``/``action_high`` set the action dimension
    and the normalisation range the actions are mapped onto; ``state_low``/``state_high`` the state's (None: the
    policy takes no state). ``text_scale`` scales the cached text states (small values keep the
    actions' offset a fraction of their range)."""

    cameras: tuple[str, ...] = ("corner", "wrist")
    image_size: int = 8
    chunk: int = 4
    action_low: tuple[float, ...] = (-1.0, -2.0, -3.0, 0.0)
    action_high: tuple[float, ...] = (1.0, 2.0, 3.0, 0.5)
    state_low: tuple[float, ...] | None = (-1.0, -1.0, -1.0)
    state_high: tuple[float, ...] | None = (1.0, 1.0, 1.0)
    instructions: tuple[str, ...] = ("open the drawer", "close the window")
    text_tokens: int = 5
    text_width: int = 6
    pooled_dim: int = 7
    text_scale: float = 1.0
    producer: str = "vpp.runtime.testing"
    # features.onnx's symbolic view dimension (manifest.features.view_axis); None: a fixed one, as
    # in artifacts exported before 2026-12-03
    view_axis: str | None = "views"
    # the stand-in's own feature tensor: (batch, views, frames, channels, height, width)
    feature_frames_channels_size: tuple[int, int, int] = field(default=(2, 3, 2))

    def __post_init__(self) -> None:
        if len(self.action_low) != len(self.action_high):
            raise ValueError(
                f"action_low {self.action_low} and action_high {self.action_high} differ in length"
            )
        if (self.state_low is None) != (self.state_high is None) or (
            self.state_low is not None and len(self.state_low) != len(self.state_high)
        ):
            raise ValueError(f"state_low {self.state_low} and state_high {self.state_high} do not match")
        if not self.cameras or not self.instructions:
            raise ValueError("a stand-in artifact needs at least one camera and one instruction")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def state_dim(self) -> int | None:
        return None if self.state_low is None else len(self.state_low)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        frames, channels, size = self.feature_frames_channels_size
        return (1, len(self.cameras), frames, channels, size, size)

    def write(
        self,
        folder: str | Path,
        *,
        text_encoder: bool = False,
        graph_feature_shape: tuple[int, ...] | None = None,
        graph_chunk: int | None = None,
    ) -> Path:
        """Writes the artifact into ``folder`` and returns it. ``text_encoder`` adds a stand-in text
        encoder and tokenizer, which encode any instruction. ``graph_feature_shape`` and
        ``graph_chunk`` give the graphs other shapes than the manifest states, to build artifacts
        whose manifest and graphs disagree (the load check's tests)."""
        from onnx import helper

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        feature_shape = graph_feature_shape or self.feature_shape
        chunk = graph_chunk or self.chunk
        encoder = self._write_text_encoder(folder) if text_encoder else None
        views = len(self.cameras)

        def view_axis(shape: tuple) -> tuple:
            """``shape`` with the symbolic view axis (a deliberately wrong size stays as given)."""
            return (shape[0], self.view_axis, *shape[2:]) if self.view_axis and shape[1] == views else shape

        if self.view_axis is None:
            image_mean = [_mean("images")]
        else:  # each view's mean, (1, V, 1, 1, 1, 1)
            image_mean = [
                helper.make_node("ReduceMean", ["images"], ["view_means"], axes=[2, 3, 4], keepdims=1),
                helper.make_node("Unsqueeze", ["view_means", "last_axis"], ["images_mean"]),
            ]
        _graph(
            folder / "features.onnx",
            [
                *image_mean,
                _mean("text_hidden"),
                helper.make_node("Add", ["noise", "images_mean"], ["lit"]),
                helper.make_node("Add", ["lit", "text_hidden_mean"], ["features"]),
            ],
            {
                "images": view_axis((1, views, 3, self.image_size, self.image_size)),
                "text_hidden": (1, self.text_tokens, self.text_width),
                "noise": view_axis(feature_shape),
            },
            "features",
            view_axis(feature_shape),
            initializers={"last_axis": [5]} if self.view_axis else None,
        )
        policy_inputs = {
            "features": feature_shape,
            "lang": (1, self.pooled_dim),
            "noise": (1, chunk, self.action_dim),
        }
        nodes = [
            helper.make_node("Constant", [], ["half"], value_float=0.5),
            helper.make_node("Mul", ["noise", "half"], ["scaled"]),
            _mean("features"),
            _mean("lang"),
            helper.make_node("Add", ["scaled", "features_mean"], ["a"]),
        ]
        if self.state_dim is None:
            nodes.append(helper.make_node("Add", ["a", "lang_mean"], ["actions"]))
        else:
            policy_inputs["state"] = (1, self.state_dim)
            nodes += [
                _mean("state"),
                helper.make_node("Add", ["a", "lang_mean"], ["b"]),
                helper.make_node("Add", ["b", "state_mean"], ["actions"]),
            ]
        _graph(folder / "policy.onnx", nodes, policy_inputs, "actions", (1, chunk, self.action_dim))
        rng = np.random.default_rng(0)
        (folder / "text").mkdir(exist_ok=True)
        count = len(self.instructions)
        hidden = self.text_scale * rng.normal(size=(count, self.text_tokens, self.text_width))
        np.save(folder / "text" / "hidden.npy", hidden.astype(np.float32))
        pooled = self.text_scale * rng.normal(size=(count, self.pooled_dim))
        np.save(folder / "text" / "pooled.npy", pooled.astype(np.float32))
        files = {
            str(path.relative_to(folder)): sha256_file(path)
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        policy_graph_inputs = ("features", "lang", "noise") + (() if self.state_dim is None else ("state",))
        Manifest(
            format_version=FORMAT_VERSION,
            producer=self.producer,
            opset=17,
            cameras=self.cameras,
            image_size=self.image_size,
            encoder="tvp",
            action=ActionSpec(
                self.action_dim, self.chunk, Normalizer("min_max", self.action_low, self.action_high)
            ),
            state=None
            if self.state_dim is None
            else StateSpec(self.state_dim, Normalizer("min_max", self.state_low, self.state_high)),
            features=FeatureSpec(
                "random", self.feature_shape, None, 700.0, self.feature_shape, view_axis=self.view_axis
            ),
            sampler=SamplerSpec("ddim", 2, 0.5, 80.0, 1.0, (80.0, 1.0, 0.0)),
            text=TextSpec(
                self.instructions,
                "text/hidden.npy",
                "text/pooled.npy",
                (self.text_tokens, self.text_width),
                self.pooled_dim,
                encoder,
            ),
            graphs=GraphsSpec(
                features=GraphSpec("features.onnx", ("images", "text_hidden", "noise"), "features", {}, None),
                policy=GraphSpec("policy.onnx", policy_graph_inputs, "actions", {}, None),
            ),
            parity=Parity(None, 0.0, 0.0, 0.0, {"features_relative": 1e-3, "normalized_actions": 1e-3}),
            export_seconds=0.0,
            files=files,
        ).write(folder)
        return folder

    def _write_text_encoder(self, folder: Path) -> TextEncoderSpec:
        """Every output value is the mean token id, so different instructions get different
        embeddings; its tokenizer knows single bytes only (no merges)."""
        from onnx import TensorProto, helper, save

        hidden_shape, pooled_shape = (1, self.text_tokens, self.text_width), (1, self.pooled_dim)
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


def _graph(
    path: Path,
    nodes: list,
    inputs: dict[str, tuple],
    output: str,
    output_shape: tuple,
    initializers: dict[str, list[int]] | None = None,
) -> None:
    """Writes a float graph; ``initializers``: int64 constants by name. A dimension may be a
    str (a symbolic one)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        nodes,
        path.stem,
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
            for name, shape in inputs.items()
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
        initializer=[
            helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
            for name, values in (initializers or {}).items()
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _mean(name: str) -> Any:
    from onnx import helper

    return helper.make_node("ReduceMean", [name], [f"{name}_mean"], keepdims=0)

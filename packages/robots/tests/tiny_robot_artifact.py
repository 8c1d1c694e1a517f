"""A tiny exported artifact for an arm, built with numpy and onnx alone (no torch, no export).

It has the arm's interface: one camera (`scene`), the 8-number state [x, y, z, qx, qy, qz, qw,
gripper] and 7-number actions (end-effector deltas and the gripper opening), as `vpp.robots`
feeds and reads them. Its two graphs are stand-ins with the real artifact's inputs and outputs (as
in packages/runtime/tests/conftest.py): features.onnx adds the means of the image and of the text
state to the noise, policy.onnx adds the means of its other inputs to half the action noise. The
action bounds are small (2 mm, 2 mrad per step), so whatever it outputs is a gentle random walk.
The manifest is written by `vpp.runtime.manifest.Manifest`, as vpp-export writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, save

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
    TextSpec,
    sha256_file,
)

INSTRUCTIONS = ("wave over the table",)
CAMERAS = ("scene",)
IMAGE_SIZE, CHUNK, ACTION_DIM, STATE_DIM = 16, 8, 7, 8
TEXT_TOKENS, TEXT_WIDTH, POOLED_DIM = 4, 6, 5
FEATURE_SHAPE = (1, len(CAMERAS), 2, 3, 2, 2)
STEP_M, STEP_RAD = 0.002, 0.002


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


def _mean(name: str):
    return helper.make_node("ReduceMean", [name], [f"{name}_mean"], keepdims=0)


def write_tiny_robot_artifact(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _graph(
        folder / "features.onnx",
        [
            _mean("images"),
            _mean("text_hidden"),
            helper.make_node("Add", ["noise", "images_mean"], ["lit"]),
            helper.make_node("Add", ["lit", "text_hidden_mean"], ["features"]),
        ],
        {
            "images": (1, len(CAMERAS), 3, IMAGE_SIZE, IMAGE_SIZE),
            "text_hidden": (1, TEXT_TOKENS, TEXT_WIDTH),
            "noise": FEATURE_SHAPE,
        },
        "features",
        FEATURE_SHAPE,
    )
    _graph(
        folder / "policy.onnx",
        [
            helper.make_node("Constant", [], ["half"], value_float=0.5),
            helper.make_node("Mul", ["noise", "half"], ["scaled"]),
            _mean("features"),
            _mean("lang"),
            _mean("state"),
            helper.make_node("Add", ["scaled", "features_mean"], ["a"]),
            helper.make_node("Add", ["a", "lang_mean"], ["b"]),
            helper.make_node("Add", ["b", "state_mean"], ["actions"]),
        ],
        {
            "features": FEATURE_SHAPE,
            "lang": (1, POOLED_DIM),
            "noise": (1, CHUNK, ACTION_DIM),
            "state": (1, STATE_DIM),
        },
        "actions",
        (1, CHUNK, ACTION_DIM),
    )
    rng = np.random.default_rng(0)
    (folder / "text").mkdir(exist_ok=True)
    # Small text states, so that the actions' offset stays a fraction of a step.
    np.save(
        folder / "text" / "hidden.npy",
        0.1 * rng.normal(size=(len(INSTRUCTIONS), TEXT_TOKENS, TEXT_WIDTH)).astype(np.float32),
    )
    np.save(
        folder / "text" / "pooled.npy",
        0.1 * rng.normal(size=(len(INSTRUCTIONS), POOLED_DIM)).astype(np.float32),
    )
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    action_low = (-STEP_M,) * 3 + (-STEP_RAD,) * 3 + (0.0,)
    action_high = (STEP_M,) * 3 + (STEP_RAD,) * 3 + (1.0,)
    Manifest(
        format_version=FORMAT_VERSION,
        producer="vpp-robots' end-to-end tests",
        opset=17,
        cameras=CAMERAS,
        image_size=IMAGE_SIZE,
        encoder="tvp",
        action=ActionSpec(ACTION_DIM, CHUNK, Normalizer("min_max", action_low, action_high)),
        state=StateSpec(
            STATE_DIM,
            Normalizer("min_max", (-1.0,) * 7 + (0.0,), (1.0,) * STATE_DIM),
        ),
        features=FeatureSpec("random", FEATURE_SHAPE, None, 700.0, FEATURE_SHAPE),
        sampler=SamplerSpec("ddim", 2, 0.5, 80.0, 1.0, (80.0, 1.0, 0.0)),
        text=TextSpec(
            INSTRUCTIONS,
            "text/hidden.npy",
            "text/pooled.npy",
            (TEXT_TOKENS, TEXT_WIDTH),
            POOLED_DIM,
            None,
        ),
        graphs=GraphsSpec(
            features=GraphSpec("features.onnx", ("images", "text_hidden", "noise"), "features", {}, None),
            policy=GraphSpec("policy.onnx", ("features", "lang", "noise", "state"), "actions", {}, None),
        ),
        parity=Parity(None, 0.0, 0.0, 0.0, {"features_relative": 1e-3, "normalized_actions": 1e-3}),
        export_seconds=0.0,
        files=files,
    ).write(folder)
    return folder

"""project_before_broadcast: the rewritten graph computes the same thing with the projection
done once per distinct row, and graphs where the rewrite would be wrong are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vpp.export.graph_passes import project_before_broadcast

K, N = 6, 5


def _model(broadcast: str, reshape_to: list[int], extra_consumer: bool = False) -> onnx.ModelProto:
    """x (2, 1, 3, K) -> Expand to (2, 4, 3, K) or Tile x4 on axis 1 -> Reshape -> MatMul W (K, N),
    with the broadcast's second input computed at run time as the exporter writes it."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "W2"),
        numpy_helper.from_array(np.asarray(reshape_to, dtype=np.int64), "reshape_to"),
        numpy_helper.from_array(np.asarray([1, 4, 1, 1], dtype=np.int64), "base"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Mul", ["x_shape", "base"], ["target"]),
    ]
    if broadcast == "Expand":
        nodes.append(helper.make_node("Expand", ["x", "target"], ["wide"]))
    else:
        nodes.append(helper.make_node("Tile", ["x", "base"], ["wide"]))
    nodes += [
        helper.make_node("Reshape", ["wide", "reshape_to"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["k"]),
        helper.make_node("MatMul", ["flat", "W2"], ["v"]),
        helper.make_node("Add", ["k", "v"], ["y"]),
    ]
    wide_shape = (2, 4, 3, K)
    flat = [wide_shape[i] if d == 0 else d for i, d in enumerate(reshape_to)]
    flat_shape = np.empty(wide_shape).reshape(flat).shape
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*flat_shape[:-1], N])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["flat"], ["flat_relu"]))
        outputs.append(helper.make_tensor_value_info("flat_relu", TensorProto.FLOAT, list(flat_shape)))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 3, K])],
        outputs,
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )


def _matmul_rows(model: onnx.ModelProto, x: np.ndarray) -> list[int]:
    """Rows each MatMul multiplies (the product of its first input's leading dimensions)."""
    shapes = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(shapes.graph.value_info) + list(shapes.graph.input)
    }
    return [int(np.prod(known[n.input[0]][:-1])) for n in model.graph.node if n.op_type == "MatMul"]


@pytest.mark.parametrize("broadcast", ["Expand", "Tile"])
@pytest.mark.parametrize("reshape_to", [[8, 3, K], [-1, 3, K], [0, -1, K], [24, -1]])
def test_rewrite_is_exact_and_projects_each_distinct_row_once(broadcast, reshape_to):
    model = _model(broadcast, reshape_to)
    x = np.random.default_rng(1).standard_normal((2, 1, 3, K)).astype(np.float32)
    rewritten, count = project_before_broadcast(model)
    assert count == 2
    np.testing.assert_array_equal(_run(rewritten, x)[0], _run(model, x)[0])
    assert _matmul_rows(model, x) == [24, 24] and _matmul_rows(rewritten, x) == [6, 6]
    assert broadcast not in {n.op_type for n in rewritten.graph.node if "vpp_pbb" not in n.name}
    assert len(model.graph.node) == 7, "the input model is not modified"


def test_reshape_that_changes_the_last_axis_is_left_alone():
    # (2, 4, 3, K) -> (8, K, 3): the last axis changes, so the MatMul does not commute with the reshape.
    model = _model("Expand", [8, K, 3])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((3, N), np.float32), "W"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((3, N), np.float32), "W2"))
    rewritten, count = project_before_broadcast(model)
    assert count == 0
    x = np.random.default_rng(2).standard_normal((2, 1, 3, K)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x)[0], _run(model, x)[0])


def test_other_consumers_of_the_broadcast_keep_it():
    model = _model("Expand", [8, 3, K], extra_consumer=True)
    x = np.random.default_rng(3).standard_normal((2, 1, 3, K)).astype(np.float32)
    rewritten, count = project_before_broadcast(model)
    assert count == 2
    for before, after in zip(_run(model, x), _run(rewritten, x)):
        np.testing.assert_array_equal(after, before)
    assert "Expand" in {n.op_type for n in rewritten.graph.node}


def test_a_second_pass_finds_nothing_left_to_move():
    rewritten, count = project_before_broadcast(_model("Tile", [8, 3, K]))
    again, second = project_before_broadcast(rewritten)
    assert (count, second) == (2, 0)
    assert len(again.graph.node) == len(rewritten.graph.node)

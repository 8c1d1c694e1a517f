"""vpp.fused custom ops in ONNX Runtime: built into the wheel, found, equal to the unfused
reference on every input layout and thread count, and clear about bad input."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from vpp.kernels import reference
from vpp.runtime import custom_ops

LIBRARY = custom_ops.ort_ops_library()
pytestmark = pytest.mark.skipif(
    LIBRARY is None, reason="vpp-runtime was built without its custom-op library (no ORT headers)"
)


def group_norm_model(
    channels: int,
    rank: int,
    num_groups: int,
    silu: int,
    epsilon: float = 1e-5,
    parameter_dims: list | None = None,
) -> bytes:
    dims = ["n", channels] + [f"d{i}" for i in range(rank - 2)]
    parameter_dims = [channels] if parameter_dims is None else parameter_dims
    node = helper.make_node(
        "GroupNorm",
        ["x", "scale", "bias"],
        ["y"],
        domain=custom_ops.DOMAIN,
        num_groups=num_groups,
        epsilon=epsilon,
        silu=silu,
    )
    graph = helper.make_graph(
        [node],
        "group_norm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, parameter_dims),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, parameter_dims),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(custom_ops.DOMAIN, 1)]
    )
    return model.SerializeToString()


def session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(LIBRARY))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_the_library_is_found_and_reports_its_ops():
    assert LIBRARY.name == custom_ops.library_name()
    ops = custom_ops.library_ops(LIBRARY)
    assert "CPUExecutionProvider" in ops["GroupNorm"] and "CPUExecutionProvider" in ops["GeGLU"]
    assert custom_ops.require_library({"GroupNorm": 3}, "test") == LIBRARY


@pytest.mark.parametrize(
    "shape, num_groups",
    [
        ((2, 6), 3),
        ((3, 8, 17), 4),
        ((2, 64, 16, 16), 32),
        ((2, 64, 8, 16, 16), 32),
        ((1, 32, 5, 7), 1),
        ((1, 12, 9, 9), 12),
    ],
    ids=["NC", "NCL", "NCHW", "NCTHW", "one-group", "instance-norm"],
)
@pytest.mark.parametrize("silu", [0, 1])
def test_group_norm_matches_the_unfused_reference(shape, num_groups, silu):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    scale, bias = (rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2))
    y = session(group_norm_model(shape[1], len(shape), num_groups, silu)).run(
        None, {"x": x, "scale": scale, "bias": bias}
    )[0]
    expected = reference.group_norm_silu(
        x.astype(np.float64), scale.astype(np.float64), bias.astype(np.float64), num_groups, 1e-5, bool(silu)
    )
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_group_norm_is_the_same_on_one_and_two_threads_and_across_input_sizes():
    rng = np.random.default_rng(1)
    model = group_norm_model(64, 4, 32, 1)
    one, two = session(model, threads=1), session(model, threads=2)
    scale, bias = (rng.standard_normal(64).astype(np.float32) for _ in range(2))
    for shape in ((4, 64, 32, 32), (1, 64, 3, 5)):  # the second below the parallel threshold
        x = rng.standard_normal(shape).astype(np.float32)
        feed = {"x": x, "scale": scale, "bias": bias}
        np.testing.assert_array_equal(one.run(None, feed)[0], two.run(None, feed)[0])


def test_group_norm_keeps_precision_under_a_large_common_offset():
    # A float32 E[x^2] - E[x]^2 would lose every digit of this variance.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1, 8, 64, 64)) + 3000.0).astype(np.float32)
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    y = session(group_norm_model(8, 4, 2, 0)).run(None, {"x": x, "scale": ones, "bias": zeros})[0]
    expected = reference.group_norm_silu(x.astype(np.float64), None, None, 2, 1e-5, False)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3)


def test_unknown_input_dimensions_stay_unknown_for_the_nodes_after():
    """ORT hands a custom op's shape inference -1 for dimensions it does not know; they must
    not come out as literal -1 sizes, which clash with the real ones further down the graph."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["x_dynamic"]),  # rank 4, sizes unknown
        helper.make_node(
            "GroupNorm",
            ["x_dynamic", "scale", "bias"],
            ["y"],
            domain=custom_ops.DOMAIN,
            num_groups=2,
            epsilon=1e-5,
            silu=1,
        ),
        helper.make_node("Add", ["y", "x"], ["z"]),  # x's sizes are known: (2, 4, 3, 3)
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(custom_ops.DOMAIN, 1)]
    )
    x = np.random.default_rng(3).standard_normal((2, 4, 3, 3)).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    z = session(model.SerializeToString()).run(
        None, {"x": x, "shape": np.array([2, 4, 3, 3]), "scale": ones, "bias": zeros}
    )[0]
    np.testing.assert_allclose(
        z, reference.group_norm_silu(x.astype(np.float64), None, None, 2, 1e-5, True) + x, atol=1e-5
    )


def geglu_model(dims: list) -> bytes:
    node = helper.make_node("GeGLU", ["value", "gate"], ["y"], domain=custom_ops.DOMAIN)
    graph = helper.make_graph(
        [node],
        "geglu",
        [
            helper.make_tensor_value_info("value", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("gate", TensorProto.FLOAT, dims),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(custom_ops.DOMAIN, 1)]
    ).SerializeToString()


@pytest.mark.parametrize("shape", [(5,), (2, 3, 7), (16, 256, 256)], ids=["small", "3-D", "threaded"])
def test_geglu_matches_the_reference_on_one_and_two_threads(shape):
    rng = np.random.default_rng(4)
    value, gate = (
        rng.standard_normal(shape).astype(np.float32),
        (rng.standard_normal(shape) * 3).astype(np.float32),
    )
    model = geglu_model([f"d{i}" for i in range(len(shape))])
    one = session(model, threads=1).run(None, {"value": value, "gate": gate})[0]
    two = session(model, threads=2).run(None, {"value": value, "gate": gate})[0]
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(
        one, reference.geglu(value.astype(np.float64), gate.astype(np.float64)), rtol=1e-5, atol=1e-6
    )


def test_geglu_refuses_operands_of_two_shapes():
    with pytest.raises(Exception, match="value and gate must have one shape"):
        session(geglu_model(["a", "b"])).run(
            None, {"value": np.zeros((2, 3), np.float32), "gate": np.zeros((3, 2), np.float32)}
        )


def test_bad_input_gives_an_error_naming_the_problem():
    x = np.zeros((2, 6, 4), np.float32)
    with pytest.raises(Exception, match="6 channels do not split into 4 groups"):
        session(group_norm_model(6, 3, 4, 1)).run(
            None, {"x": x, "scale": np.ones(6, np.float32), "bias": np.zeros(6, np.float32)}
        )
    model = group_norm_model(6, 3, 3, 1, parameter_dims=["c"])
    with pytest.raises(Exception, match="scale and bias need 6 values"):
        session(model).run(None, {"x": x, "scale": np.ones(5, np.float32), "bias": np.zeros(6, np.float32)})
    with pytest.raises(Exception, match="num_groups must be positive"):
        session(group_norm_model(6, 3, 0, 1))


def test_a_missing_library_names_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv(custom_ops.ENVIRONMENT_VARIABLE, str(tmp_path / "nowhere.so"))
    with pytest.raises(custom_ops.CustomOpsUnavailableError, match="no such file"):
        custom_ops.ort_ops_library()
    monkeypatch.delenv(custom_ops.ENVIRONMENT_VARIABLE)
    monkeypatch.setattr(custom_ops, "ort_ops_library", lambda: None)
    with pytest.raises(custom_ops.CustomOpsUnavailableError, match="--standard-ops-only") as error:
        custom_ops.require_library({"GroupNorm": 2}, "artifact x")
    assert "scripts/ort-headers.sh" in str(error.value)


def test_an_op_the_library_lacks_is_named(monkeypatch):
    with pytest.raises(custom_ops.CustomOpsUnavailableError, match=r"\['Frobnicate'\]"):
        custom_ops.require_library({"GroupNorm": 1, "Frobnicate": 1}, "artifact x")


def test_the_library_is_a_plain_shared_object_without_python():
    """C++ deployments register the same file: it must not need libpython's symbols."""
    import subprocess

    symbols = subprocess.run(
        ["nm", "-D", "--undefined-only", str(LIBRARY)], capture_output=True, text=True, check=True
    ).stdout
    assert "Py" not in {line.split()[-1][:2] for line in symbols.splitlines() if line.strip()}
    exported = subprocess.run(
        ["nm", "-D", "--defined-only", str(LIBRARY)], capture_output=True, text=True, check=True
    ).stdout
    assert "RegisterCustomOps" in exported

"""fuse_group_norms, fuse_group_norm_silu and fuse_geglu: torch's exported GroupNorm (and the
SiLU after it) and GEGLU activation become single vpp.fused nodes that compute the same thing in
ONNX Runtime, and graphs the rewrites would change are left alone."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vpp.export.graph_passes import FUSED_DOMAIN, fuse_geglu, fuse_group_norm_silu, fuse_group_norms
from vpp.runtime import custom_ops

LIBRARY = custom_ops.ort_ops_library()  # vpp-runtime's, found as export and the runtime find it
needs_library = pytest.mark.skipif(
    LIBRARY is None, reason="vpp-runtime was built without its custom-op library"
)


class Block(nn.Module):
    """A ResNet-style norm -> SiLU -> conv, a norm whose output is also the block's residual
    (read twice, so its SiLU cannot fold), a 5-D temporal norm without SiLU, and a norm without
    affine parameters (exported with scalar ones and zeros, which carry no channel count: it
    stays as it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, 16, eps=1e-6)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, 16)
        self.temporal = nn.GroupNorm(2, 16)
        self.plain = nn.GroupNorm(4, 16, affine=False)
        for norm in (self.norm1, self.norm2, self.temporal):
            nn.init.normal_(norm.weight)
            nn.init.normal_(norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.silu(self.norm1(x)))
        n2 = self.norm2(h)
        h = F.silu(n2) + n2
        video = self.temporal(h.reshape(1, 2, 16, 8, 8).transpose(1, 2))  # (1, C, T, H, W)
        return self.plain(video.transpose(1, 2).reshape(2, 16, 8, 8)) + x


def exported(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module, (x,), buffer, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
    )
    return onnx.load_from_string(buffer.getvalue())


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if any(node.domain == FUSED_DOMAIN for node in model.graph.node):
        options.register_custom_ops_library(str(LIBRARY))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    module = Block().eval()
    x = torch.randn(2, 16, 8, 8)
    return module, x, exported(module, x)


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == FUSED_DOMAIN]


def silu_attribute(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "silu")


@needs_library
def test_every_affine_group_norm_becomes_one_node_and_the_graph_computes_the_same(block):
    module, x, model = block
    fused, count = fuse_group_norms(model)
    assert count == 3 and {node.name.split("/")[1] for node in fused_nodes(fused)} == {
        "norm1",
        "norm2",
        "temporal",
    }
    assert [node.name for node in fused.graph.node if node.op_type == "InstanceNormalization"] == [
        "/plain/InstanceNormalization"
    ]
    assert {opset.domain: opset.version for opset in fused.opset_import}[FUSED_DOMAIN] == 1
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(run(fused, x.numpy()), expected, rtol=1e-5, atol=1e-5)
    assert sum(node.op_type == "InstanceNormalization" for node in model.graph.node) == 4, (
        "the input model is not modified"
    )


@needs_library
def test_the_silu_folds_only_where_the_norm_has_no_other_reader(block):
    module, x, model = block
    fused, _ = fuse_group_norms(model)
    folded, count = fuse_group_norm_silu(fused)
    assert count == 1
    by_name = {node.name.split("/")[1]: silu_attribute(node) for node in fused_nodes(folded)}
    assert by_name == {"norm1": 1, "norm2": 0, "temporal": 0}
    assert sum(node.op_type == "Sigmoid" for node in folded.graph.node) == 1  # norm2's SiLU stays
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(run(folded, x.numpy()), expected, rtol=1e-5, atol=1e-5)
    again, second = fuse_group_norm_silu(folded)
    assert second == 0 and len(again.graph.node) == len(folded.graph.node)


def test_an_instance_norm_with_its_own_scale_is_left_alone():
    """A real InstanceNorm (learned scale, not torch's unit-scale GroupNorm helper) stays."""
    module = nn.Sequential(nn.InstanceNorm2d(8, affine=True)).eval()
    nn.init.normal_(module[0].weight)
    x = torch.randn(2, 8, 5, 5)
    model = exported(module, x)
    rewritten, count = fuse_group_norms(model)
    assert count == 0 and not fused_nodes(rewritten)
    np.testing.assert_allclose(run(rewritten, x.numpy()), run(model, x.numpy()), rtol=0, atol=0)


def test_a_group_norm_that_is_a_graph_output_keeps_its_pieces_readable():
    """The intermediate Mul of the affine is read by a second node: no fusion (it would drop it)."""

    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(2, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = F.group_norm(x, 2)
            return n * self.norm.weight.view(1, 4, 1, 1) + self.norm.bias.view(1, 4, 1, 1), n

    x = torch.randn(1, 4, 3, 3)
    buffer = io.BytesIO()
    torch.onnx.export(
        Leaky().eval(),
        (x,),
        buffer,
        input_names=["x"],
        output_names=["y", "n"],
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load_from_string(buffer.getvalue())
    rewritten, count = fuse_group_norms(model)
    assert count == 0
    for before, after in zip(
        ort.InferenceSession(model.SerializeToString()).run(None, {"x": x.numpy()}),
        ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x.numpy()}),
    ):
        np.testing.assert_array_equal(after, before)


class Feedforward(nn.Module):
    """GEGLU as vpp's export traces it (two half projections), and a tanh-approximate GELU
    gate, which is another function and must stay as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.value, self.gate, self.other = nn.Linear(8, 32), nn.Linear(8, 32), nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = self.value(x) * F.gelu(self.gate(x))
        approximate = self.value(x) * F.gelu(self.other(x), approximate="tanh")
        return exact + approximate


@needs_library
def test_the_exact_geglu_becomes_one_node_and_the_tanh_one_stays():
    torch.manual_seed(1)
    module = Feedforward().eval()
    x = torch.randn(3, 5, 8) * 2
    model = exported(module, x)
    fused, count = fuse_geglu(model)
    assert count == 1 and [node.op_type for node in fused_nodes(fused)] == ["GeGLU"]
    assert "Erf" not in {node.op_type for node in fused.graph.node} and "Tanh" in {
        node.op_type for node in fused.graph.node
    }
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(run(fused, x.numpy()), expected, rtol=1e-5, atol=1e-5)
    again, second = fuse_geglu(fused)
    assert second == 0 and len(again.graph.node) == len(fused.graph.node)


def test_a_gelu_whose_inner_product_is_read_elsewhere_is_left_alone():
    class Leaky(nn.Module):
        def forward(self, value: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            gelu = F.gelu(gate)
            return value * gelu, gelu

    value, gate = torch.randn(4, 6), torch.randn(4, 6)
    buffer = io.BytesIO()
    torch.onnx.export(
        Leaky(),
        (value, gate),
        buffer,
        input_names=["value", "gate"],
        output_names=["y", "g"],
        opset_version=17,
        dynamo=False,
    )
    rewritten, count = fuse_geglu(onnx.load_from_string(buffer.getvalue()))
    assert count == 0 and not fused_nodes(rewritten)

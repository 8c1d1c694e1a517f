"""split_geglu: while open, diffusers' GEGLU computes the same function with two half-width
projections, the exported graph has no Split/Slice between the projection and the Gelu, and the
modules are restored afterwards."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from diffusers.models.activations import GEGLU
from torch import nn

from vpp.policy.export import split_geglu


class _FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(GEGLU(12, 20), nn.Linear(20, 12), GEGLU(12, 8, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_same_function_and_restored():
    torch.manual_seed(0)
    model = _FeedForward().eval()
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        before = model(x)
        with split_geglu(model) as patched:
            assert patched == 2
            during = model(x)
        after = model(x)
    torch.testing.assert_close(during, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert all("forward" not in vars(m) for m in model.modules())


def test_exported_graph_has_no_split_and_same_size(tmp_path):
    torch.manual_seed(0)
    model = _FeedForward().eval()
    x = torch.randn(1, 9, 12)
    plain, split = tmp_path / "plain.onnx", tmp_path / "split.onnx"
    torch.onnx.export(model, (x,), str(plain), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    with split_geglu(model):
        torch.onnx.export(model, (x,), str(split), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    ops = [node.op_type for node in onnx.load(str(split)).graph.node]
    assert "Split" not in ops and "Slice" not in ops
    assert any(node.op_type in ("Slice", "Split") for node in onnx.load(str(plain)).graph.node)
    # the two halves are folded into initializers: no weight is stored twice
    weights = lambda path: sum(t.ByteSize() for t in onnx.load(str(path)).graph.initializer)  # noqa: E731
    assert abs(weights(split) - weights(plain)) < 1024
    feed = {"x": x.numpy()}
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
    np.testing.assert_allclose(run(split), run(plain), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(run(split), model(x).numpy(), rtol=1e-5, atol=1e-6)

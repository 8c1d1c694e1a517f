"""Export-time patches compute the same function as the modules they patch, export to the
cheaper graph they promise, and leave the modules as they were.

split_geglu: GEGLU with two half-width projections, no Split/Slice before the Gelu.
fold_temporal_cross_attention: SVD's temporal cross-attention once per video, with no
broadcast of the text to every latent pixel left in the graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from torch import nn

from vpp.export.patches import fold_temporal_cross_attention, multi_head_attention_nodes, split_geglu


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
    torch.onnx.export(
        model, (x,), str(plain), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
    )
    with split_geglu(model):
        torch.onnx.export(
            model, (x,), str(split), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
        )
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


VIDEOS, FRAMES, SIDE, TEXT = 2, 3, 4, 5


def _spatio_temporal() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = TransformerSpatioTemporalModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=2, cross_attention_dim=12
    ).eval()
    hidden = torch.randn(VIDEOS * FRAMES, 32, SIDE, SIDE)
    # different text per video, repeated over its frames, as the SVD UNet passes it
    text = torch.randn(VIDEOS, TEXT, 12).repeat_interleave(FRAMES, dim=0)
    indicator = torch.zeros(VIDEOS, FRAMES)
    return model, (hidden, text, indicator)


class _Call(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden, text, indicator):
        return self.model(
            hidden, encoder_hidden_states=text, image_only_indicator=indicator, return_dict=False
        )[0]


def test_folded_temporal_cross_attention_same_function_and_restored():
    model, (hidden, text, indicator) = _spatio_temporal()
    with torch.no_grad():
        before = model(hidden, encoder_hidden_states=text, image_only_indicator=indicator).sample
        with fold_temporal_cross_attention(model) as patched:
            assert patched == 2  # one attn2 per temporal block
            during = model(hidden, encoder_hidden_states=text, image_only_indicator=indicator).sample
        after = model(hidden, encoder_hidden_states=text, image_only_indicator=indicator).sample
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert all("forward" not in vars(m) for m in model.modules())
    assert not model._forward_pre_hooks


def test_folded_temporal_cross_attention_drops_the_per_pixel_broadcast(tmp_path):
    model, args = _spatio_temporal()
    wrapped = _Call(model).eval()
    plain, folded = tmp_path / "plain.onnx", tmp_path / "folded.onnx"
    names = {
        "input_names": ["hidden", "text", "indicator"],
        "output_names": ["y"],
        "opset_version": 17,
        "dynamo": False,
    }
    torch.onnx.export(wrapped, args, str(plain), **names)
    with fold_temporal_cross_attention(wrapped):
        torch.onnx.export(wrapped, args, str(folded), **names)

    feed = {"hidden": args[0].numpy(), "text": args[1].numpy(), "indicator": args[2].numpy()}

    def largest_key_rows(path) -> int:
        """rows of the widest input the temporal attn2 key projections multiply, as ORT runs them"""
        model = onnx.load(str(path))
        nodes = [
            n
            for n in model.graph.node
            if "temporal_transformer_blocks" in n.name and "attn2/to_k" in n.name and n.op_type == "MatMul"
        ]
        assert nodes
        inputs = sorted({n.input[0] for n in nodes})
        model.graph.output.extend(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs
        )
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(inputs, feed)
        return max(int(np.prod(v.shape[:-1])) for v in values)

    # keys projected from the text of each video (2 x 5 rows), not from every pixel's copy of it
    assert largest_key_rows(folded) == VIDEOS * TEXT
    assert largest_key_rows(plain) == VIDEOS * SIDE * SIDE * TEXT
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
    np.testing.assert_allclose(run(folded), run(plain), rtol=1e-4, atol=1e-5)


def test_fold_leaves_masked_or_unusual_attentions_alone():
    model, _ = _spatio_temporal()
    model.temporal_transformer_blocks[0].attn2.rescale_output_factor = 2.0
    with fold_temporal_cross_attention(model) as patched:
        assert patched == 1
        assert "forward" not in vars(model.temporal_transformer_blocks[0].attn2)


class _Attentions(nn.Module):
    """a self- and a cross-attention as diffusers builds them in SVD's transformer blocks"""

    def __init__(self) -> None:
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.self_attn = Attention(query_dim=32, heads=4, dim_head=8)
        self.cross_attn = Attention(query_dim=32, cross_attention_dim=12, heads=2, dim_head=16)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.cross_attn(self.self_attn(x), encoder_hidden_states=text)


def test_multi_head_attention_nodes_same_function_and_restored(tmp_path):
    torch.manual_seed(0)
    model = _Attentions().eval()
    x, text = torch.randn(3, 10, 32), torch.randn(3, 5, 12)
    with torch.no_grad():
        before = model(x, text)
        with multi_head_attention_nodes(model) as patched:
            assert patched == 2
            during = model(x, text)
            torch.onnx.export(
                model,
                (x, text),
                str(tmp_path / "mha.onnx"),
                input_names=["x", "text"],
                output_names=["y"],
                opset_version=17,
                dynamo=False,
            )
        after = model(x, text)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert all("forward" not in vars(m) for m in model.modules())
    graph = onnx.load(str(tmp_path / "mha.onnx")).graph
    nodes = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert len(nodes) == 2 and {n.domain for n in nodes} == {"com.microsoft"}
    assert sorted(
        onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "num_heads"
    ) == [2, 4]
    assert not [n for n in graph.node if n.op_type == "Softmax"]
    got = ort.InferenceSession(str(tmp_path / "mha.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "text": text.numpy()}
    )[0]
    np.testing.assert_allclose(got, before.numpy(), rtol=1e-4, atol=1e-5)


def test_multi_head_attention_nodes_skip_masked_calls_and_unusual_attentions():
    torch.manual_seed(0)
    model = _Attentions().eval()
    model.cross_attn.residual_connection = True
    x = torch.randn(1, 4, 32)
    mask = torch.zeros(1, 4, 4)
    with torch.no_grad():
        before = model.self_attn(x, attention_mask=mask)
        with multi_head_attention_nodes(model) as patched:
            assert patched == 1 and "forward" not in vars(model.cross_attn)
            # a masked call runs the original processor
            torch.testing.assert_close(model.self_attn(x, attention_mask=mask), before, rtol=0, atol=0)

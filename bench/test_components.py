"""The per-component table attributes each ORT node of the profile to the right row."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")

# bench/ is not a package and pytest runs with --import-mode=importlib: load the script by path.
_spec = importlib.util.spec_from_file_location(
    "vpp_bench_components", Path(__file__).with_name("components.py")
)
_components = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_components)
component_of = _components.component_of


@pytest.mark.parametrize(
    ("node", "row"),
    [
        ("/encoder/down_blocks.0/resnets.0/conv1/Conv_kernel_time", "vae encode"),
        ("/quant_conv/Conv_kernel_time", "vae encode"),
        (
            "/unet/down_blocks.0/attentions.0/transformer_blocks.0/ff/net.0/Mul_kernel_time",
            "unet to features",
        ),
        # fused or inserted by ORT: no module path left, they belong to the UNet
        ("Gelu_token_3_kernel_time", "unet to features"),
        ("ReorderInput_12_kernel_time", "unet to features"),
        ("Resize_1_kernel_time", "unet to features"),
    ],
)
def test_feature_graph_rows(node, row):
    assert component_of(node, "features") == row


def test_policy_graph_rows():
    assert (
        component_of("/video_former/blocks.0/attn/MatMul_kernel_time", "policy")
        == "video former + dit encoder"
    )
    assert component_of("/encoder_blocks.1/mlp/Gemm_kernel_time", "policy") == "video former + dit encoder"
    assert component_of("/decoder_blocks.0/attn/MatMul_kernel_time", "policy") == "dit decoder x10 steps"


def test_the_warm_up_runs_are_left_out_of_the_split():
    run = [{"cat": "Node", "name": f"/unet/n{i}_kernel_time", "dur": 1} for i in range(3)]
    events = [dict(e, dur=100) for e in run] + [{"cat": "Session", "name": "x"}] + run * 2
    kept = _components.node_events(events, runs=3, skip=1)
    assert len(kept) == 6 and all(e["dur"] == 1 for e in kept)
    with pytest.raises(ValueError, match="do not split into 4 runs"):
        _components.node_events(events, runs=4, skip=1)

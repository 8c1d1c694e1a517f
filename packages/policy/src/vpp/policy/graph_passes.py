"""Rewrites of exported ONNX graphs that ONNX Runtime's own optimiser does not make.

:func:`project_before_broadcast`: SVD's UNet broadcasts the text hidden states to every frame
(``Tile``) for the spatial cross-attention and to every latent pixel (``Expand``) for the
temporal cross-attention, and only then projects them to keys and values, so each projection
computes the same rows again for every frame or pixel: 512 copies per temporal block at the
small preset's 16x16 latents with two views, and 2,048 at the paper's 32x32. A ``MatMul`` with
a constant (K, N) weight acts on the last axis alone, so it commutes with any broadcast or
reshape that leaves the last axis as it is:

    MatMul(Reshape(Expand(x, s1), s2), W)  ==  Reshape(Expand(MatMul(x, W), s1[:-1] ++ [1]), s2[:-1] ++ [N])

(``Tile`` likewise, its last repeat being 1). The pass makes that rewrite wherever static shape
inference proves the last axis is K on all three tensors, and drops the nodes it leaves unused.
At export, ``vpp.policy.export_patches.fold_temporal_cross_attention`` has already removed the
per-pixel broadcast, so there the pass meets the spatial ``Tile``s only.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

logger = logging.getLogger(__name__)

BROADCASTS = ("Expand", "Tile")


def _last_dims(model: onnx.ModelProto) -> dict[str, int | None]:
    """tensor name -> its last dimension where static shape inference knows it."""
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    dims: dict[str, int | None] = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        shape = info.type.tensor_type.shape.dim
        dims[info.name] = shape[-1].dim_value if shape and shape[-1].HasField("dim_value") else None
    for tensor in graph.initializer:
        dims[tensor.name] = tensor.dims[-1] if tensor.dims else None
    return dims


def _remove_unused_nodes(graph: onnx.GraphProto) -> int:
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used_initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used_initializers)
    return removed


def project_before_broadcast(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Returns the rewritten model (a copy) and how many MatMuls now run before the broadcast."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    last = _last_dims(model)
    producer = {name: node for node in graph.node for name in node.output}
    weights = {t.name: t for t in graph.initializer}
    constants: dict[tuple[int, ...], str] = {}

    def constant(values: tuple[int, ...]) -> str:
        if values not in constants:
            name = f"vpp_pbb_const_{len(constants)}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
            constants[values] = name
        return constants[values]

    rewritten = 0
    nodes = list(graph.node)
    new_nodes: list[onnx.NodeProto] = []
    for node in nodes:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        reshape = producer.get(node.input[0]) if weight is not None and len(weight.dims) == 2 else None
        broadcast = producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
        if broadcast is None or broadcast.op_type not in BROADCASTS:
            new_nodes.append(node)
            continue
        k, n = weight.dims
        source = broadcast.input[0]
        if not (last.get(source) == last.get(broadcast.output[0]) == last.get(reshape.output[0]) == k):
            new_nodes.append(node)
            continue
        tag = f"vpp_pbb_{rewritten}"
        # New nodes keep the module path of the MatMul they replace, for per-module profiles.
        prefix = f"{node.name}/{tag}" if node.name else tag
        projected, broadcast_arg, widened, reshape_arg = (f"{tag}_{s}" for s in ("projected", "shape", "broadcast", "reshape"))
        lead = (constant((0,)), constant((-1,)), constant((0,)))
        if broadcast.op_type == "Expand":
            # A trailing 1 lets the new last axis (N) through the broadcast unchanged.
            new_nodes.append(helper.make_node("Slice", [broadcast.input[1], *lead], [f"{tag}_lead"], name=f"{prefix}/Slice"))
            new_nodes.append(helper.make_node("Concat", [f"{tag}_lead", constant((1,))], [broadcast_arg], axis=0, name=f"{prefix}/Concat"))
        else:
            broadcast_arg = broadcast.input[1]
        new_nodes.append(helper.make_node("MatMul", [source, node.input[1]], [projected], name=f"{prefix}/MatMul"))
        new_nodes.append(helper.make_node(broadcast.op_type, [projected, broadcast_arg], [widened], name=f"{prefix}/{broadcast.op_type}"))
        new_nodes.append(helper.make_node("Slice", [reshape.input[1], *lead], [f"{tag}_reshape_lead"], name=f"{prefix}/ReshapeSlice"))
        new_nodes.append(helper.make_node("Concat", [f"{tag}_reshape_lead", constant((n,))], [reshape_arg], axis=0, name=f"{prefix}/ReshapeConcat"))
        new_nodes.append(helper.make_node("Reshape", [widened, reshape_arg], list(node.output), name=f"{prefix}/Reshape"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    removed = _remove_unused_nodes(graph)
    logger.info("projected %d MatMuls before their broadcast; %d nodes left unused and removed", rewritten, removed)
    onnx.checker.check_model(model)
    return model, rewritten

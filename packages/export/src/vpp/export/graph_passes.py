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
At export, ``vpp.export.patches.fold_temporal_cross_attention`` has already removed the
per-pixel broadcast, so there the pass meets the spatial ``Tile``s only.

:func:`fuse_geglu`: the GEGLU feed-forward's ``value * gelu(gate)``, which the exporter writes
as six nodes (ORT fuses five of them into its Gelu, leaving two passes), becomes one
``vpp.fused.GeGLU`` node: one pass. Export applies it only when asked (``fused_geglu=True``):
on the CPU it measured no faster than ORT's Gelu and Mul.

:func:`fuse_group_norms`: the exporter writes ``group_norm`` as Reshape to (N, G, -1),
InstanceNormalization with unit scale and zero bias, Reshape back, Mul by the weight and Add of
the bias: five ORT kernels, each a pass over the activation. The pass puts one
``vpp.fused.GroupNorm`` node in their place, vpp-runtime's fused kernel as an ONNX Runtime custom
op (``libvpp_ort_ops.so``); :func:`fuse_group_norm_silu` then folds the SiLU (Sigmoid, Mul) that
follows most of them into it. Matching the exported graph, not patching the modules before the
export, keeps the exporter's static shapes: a custom node there hides its output shape from the
exporter, whose reshapes after it then stay dynamic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from vpp.runtime.custom_ops import DOMAIN as FUSED_DOMAIN

logger = logging.getLogger(__name__)

BROADCASTS = ("Expand", "Tile")


def _last_dims(model: onnx.ModelProto, sizes: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """tensor name -> its last dimension where static shape inference knows it, with the graph
    inputs' symbolic dimensions named in ``sizes`` fixed to those sizes (a symbolic view axis
    hides every broadcast's shape from the inference)."""
    if sizes:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for value in model.graph.input:
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in sizes:
                    dim.dim_value = sizes[dim.dim_param]
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


def project_before_broadcast(
    model: onnx.ModelProto, sizes: Mapping[str, int] | None = None
) -> tuple[onnx.ModelProto, int]:
    """Returns the rewritten model (a copy) and how many MatMuls now run before the broadcast.
    ``sizes``: example sizes of the inputs' symbolic dimensions ({"views": 2}), for the shape
    proof only: the last axis it proves is the text width, which no view count changes, and the
    rewritten nodes read the actual shapes at run time (the export's parity check runs the graph
    at all views and at one)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    last = _last_dims(model, sizes)
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
        broadcast = (
            producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
        )
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
        projected, broadcast_arg, widened, reshape_arg = (
            f"{tag}_{s}" for s in ("projected", "shape", "broadcast", "reshape")
        )
        lead = (constant((0,)), constant((-1,)), constant((0,)))
        if broadcast.op_type == "Expand":
            # A trailing 1 lets the new last axis (N) through the broadcast unchanged.
            new_nodes.append(
                helper.make_node(
                    "Slice", [broadcast.input[1], *lead], [f"{tag}_lead"], name=f"{prefix}/Slice"
                )
            )
            new_nodes.append(
                helper.make_node(
                    "Concat",
                    [f"{tag}_lead", constant((1,))],
                    [broadcast_arg],
                    axis=0,
                    name=f"{prefix}/Concat",
                )
            )
        else:
            broadcast_arg = broadcast.input[1]
        new_nodes.append(
            helper.make_node("MatMul", [source, node.input[1]], [projected], name=f"{prefix}/MatMul")
        )
        new_nodes.append(
            helper.make_node(
                broadcast.op_type, [projected, broadcast_arg], [widened], name=f"{prefix}/{broadcast.op_type}"
            )
        )
        new_nodes.append(
            helper.make_node(
                "Slice", [reshape.input[1], *lead], [f"{tag}_reshape_lead"], name=f"{prefix}/ReshapeSlice"
            )
        )
        new_nodes.append(
            helper.make_node(
                "Concat",
                [f"{tag}_reshape_lead", constant((n,))],
                [reshape_arg],
                axis=0,
                name=f"{prefix}/ReshapeConcat",
            )
        )
        new_nodes.append(
            helper.make_node("Reshape", [widened, reshape_arg], list(node.output), name=f"{prefix}/Reshape")
        )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    removed = _remove_unused_nodes(graph)
    logger.info(
        "projected %d MatMuls before their broadcast; %d nodes left unused and removed", rewritten, removed
    )
    onnx.checker.check_model(model)
    return model, rewritten


def _constant(
    name: str, producer: dict[str, onnx.NodeProto], initializers: dict[str, onnx.TensorProto]
) -> tuple[str, onnx.TensorProto | None]:
    """(the initializer's name, the tensor) behind ``name``, through Identity nodes; a Constant
    node gives (name, its tensor); anything else (name, None)."""
    while name not in initializers and name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    if name in initializers:
        return name, initializers[name]
    node = producer.get(name)
    if (
        node is not None
        and node.op_type == "Constant"
        and node.attribute
        and node.attribute[0].name == "value"
    ):
        return name, node.attribute[0].t
    return name, None


def _values(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A small constant's values (None for tensors kept in external files)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return numpy_helper.to_array(tensor)


def _graph_index(
    graph: onnx.GraphProto,
) -> tuple[dict[str, onnx.NodeProto], dict[str, onnx.TensorProto], dict[str, list[onnx.NodeProto]], set[str]]:
    """(producer of each tensor, initializers by name, readers of each tensor, graph output names)."""
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producer, initializers, readers, {output.name for output in graph.output}


def _replace_nodes(
    model: onnx.ModelProto, replacements: dict[str, onnx.NodeProto], dropped: set[str], domain: str
) -> tuple[onnx.ModelProto, int]:
    """Puts each ``replacements`` node where the node making the same first output stood, drops
    the nodes whose first output is in ``dropped`` and whatever is left unused, and imports
    ``domain`` (nodes are keyed by their first output: unique in a graph, where names may be
    empty). Returns (model, how many nodes were replaced)."""
    if not replacements:
        return model, 0
    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.output and node.output[0] in replacements:
            nodes.append(replacements[node.output[0]])
        elif not node.output or node.output[0] not in dropped:
            nodes.append(onnx.NodeProto.FromString(node.SerializeToString()))
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_unused_nodes(graph)
    if not any(opset.domain == domain for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model, len(replacements)


def fuse_group_norms(model: onnx.ModelProto, domain: str = FUSED_DOMAIN) -> tuple[onnx.ModelProto, int]:
    """Replaces each exported GroupNorm (Reshape to (N, G, -1), InstanceNormalization with
    unit scale and zero bias, Reshape back to the input's Shape, Mul by a (C, 1, ..., 1) weight,
    Add of a (C, 1, ..., 1) bias, every intermediate read only by the next: torch's export of
    ``group_norm``, whose affine has x's rank - 1 dimensions) with one ``domain``
    GroupNorm node (num_groups G, the InstanceNormalization's epsilon, silu 0) that reads the
    same weight and bias. Returns the rewritten model (a copy) and how many it replaced. The
    weights are not read (they may live in external files): only their shapes are."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inferred = shape_inference.infer_shapes(model)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in list(inferred.graph.value_info) + list(graph.input)
        if info.type.tensor_type.HasField("shape")
    }
    producer, initializers, readers, outputs = _graph_index(graph)

    def only_reader(name: str, op_type: str) -> onnx.NodeProto | None:
        users = readers.get(name, [])
        if (
            len(users) != 1
            or name in outputs
            or users[0].op_type != op_type
            or users[0].domain not in ("", "ai.onnx")
        ):
            return None
        return users[0]

    def affine(node: onnx.NodeProto, data: str) -> tuple[str, list[int]] | None:
        """The per-channel constant that ``node`` (Mul or Add) applies to ``data``."""
        if list(node.input).count(data) != 1 or len(node.input) != 2:
            return None
        other = node.input[1] if node.input[0] == data else node.input[0]
        name, tensor = _constant(other, producer, initializers)
        if tensor is None or not tensor.dims or any(d != 1 for d in tensor.dims[1:]):
            return None
        return name, list(tensor.dims)

    replacements: dict[str, onnx.NodeProto] = {}  # the Add's output -> the fused node
    dropped: set[str] = set()  # the other replaced nodes
    for norm in graph.node:
        if norm.op_type != "InstanceNormalization" or norm.domain not in ("", "ai.onnx"):
            continue
        first = producer.get(norm.input[0])
        if first is None or first.op_type != "Reshape" or readers.get(first.output[0]) != [norm]:
            continue
        x = first.input[0]
        _, target = _constant(first.input[1], producer, initializers)
        _, scale = _constant(norm.input[1], producer, initializers)
        _, shift = _constant(norm.input[2], producer, initializers)
        if target is None or scale is None or shift is None:
            continue
        target_values, scale_values, shift_values = _values(target), _values(scale), _values(shift)
        groups = int(scale_values.size) if scale_values is not None else 0
        if (
            target_values is None
            or target_values.tolist() != [0, groups, -1]
            or groups == 0
            or not np.all(scale_values == 1)
            or shift_values is None
            or not np.all(shift_values == 0)
        ):
            continue
        back = only_reader(norm.output[0], "Reshape")
        if back is None or back.input[0] != norm.output[0]:
            continue
        shape_of = producer.get(back.input[1])
        if shape_of is None or shape_of.op_type != "Shape" or shape_of.input[0] != x or shape_of.attribute:
            continue
        mul = only_reader(back.output[0], "Mul")
        weight = mul and affine(mul, back.output[0])
        add = weight and only_reader(mul.output[0], "Add")
        bias = add and affine(add, mul.output[0])
        # torch's group_norm export unsqueezes the affine to x's rank - 1, which puts C on axis
        # 1; where shape inference knows x's rank, it must agree.
        rank = ranks.get(x)
        if (
            not bias
            or weight[1] != bias[1]
            or weight[1][0] % groups
            or (rank is not None and rank != len(weight[1]) + 1)
        ):
            continue
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        fused = helper.make_node(
            "GroupNorm",
            [x, weight[0], bias[0]],
            [add.output[0]],
            name=norm.name.replace("InstanceNormalization", "GroupNorm"),
            domain=domain,
            num_groups=groups,
            epsilon=epsilon,
            silu=0,
        )
        replacements[add.output[0]] = fused
        dropped.update(n.output[0] for n in (first, norm, back, mul))
    return _replace_nodes(model, replacements, dropped, domain)


def fuse_group_norm_silu(model: onnx.ModelProto, domain: str = FUSED_DOMAIN) -> tuple[onnx.ModelProto, int]:
    """Folds ``x * Sigmoid(x)`` (the exporter's SiLU) into the ``domain`` GroupNorm node that
    produces ``x`` (its ``silu`` attribute set to 1) wherever the two nodes of the SiLU are the
    normalised tensor's only readers and it is no graph output. Returns the rewritten model (a
    copy) and how many SiLUs it folded."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes = list(graph.node)
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    outputs = {output.name for output in graph.output}
    dropped: set[int] = set()
    folded = 0
    for node in nodes:
        if node.domain != domain or node.op_type != "GroupNorm":
            continue
        silu = next((a for a in node.attribute if a.name == "silu"), None)
        x = node.output[0]
        users = readers.get(x, [])
        if silu is None or silu.i != 0 or x in outputs or len(users) != 2:
            continue
        sigmoid = next(
            (i for i in users if nodes[i].op_type == "Sigmoid" and nodes[i].domain in ("", "ai.onnx")), None
        )
        mul = next(
            (i for i in users if nodes[i].op_type == "Mul" and nodes[i].domain in ("", "ai.onnx")), None
        )
        if (
            sigmoid is None
            or mul is None
            or sorted(nodes[mul].input) != sorted([x, nodes[sigmoid].output[0]])
        ):
            continue
        if readers.get(nodes[sigmoid].output[0], []) != [mul] or nodes[sigmoid].output[0] in outputs:
            continue
        silu.i = 1
        node.output[0] = nodes[mul].output[0]
        dropped.update((sigmoid, mul))
        folded += 1
    if folded:
        kept = [
            onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(nodes) if i not in dropped
        ]
        del graph.node[:]
        graph.node.extend(kept)
    return model, folded


def fuse_geglu(model: onnx.ModelProto, domain: str = FUSED_DOMAIN) -> tuple[onnx.ModelProto, int]:
    """Replaces ``value * gelu(gate)`` as the exporter writes the exact GELU (Div by sqrt(2),
    Erf, Add 1, Mul by gate, Mul by 0.5, then the product with value; every intermediate read
    only by the next) with one ``domain`` GeGLU(value, gate) node. Where shape inference knows
    both shapes they must be equal (the op does not broadcast). Returns the rewritten model (a
    copy) and how many it replaced."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for info in list(inferred.graph.value_info) + list(graph.input):
        if info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[info.name] = [d.dim_value for d in dims]
    producer, initializers, readers, outputs = _graph_index(graph)

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        """The standard-domain ``op_type`` node that makes ``name``, when it is its only reader's input."""
        node = producer.get(name)
        if (
            node is None
            or node.op_type != op_type
            or node.domain not in ("", "ai.onnx")
            or name in outputs
            or len(readers.get(name, [])) != 1
        ):
            return None
        return node

    def scalar(name: str) -> float | None:
        _, tensor = _constant(name, producer, initializers)
        values = None if tensor is None else _values(tensor)
        return None if values is None or values.size != 1 else float(values.reshape(()))

    def other_input(node: onnx.NodeProto, name: str) -> str | None:
        if len(node.input) != 2 or list(node.input).count(name) != 1:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]

    replacements: dict[str, onnx.NodeProto] = {}
    dropped: set[str] = set()
    for product in graph.node:
        if product.op_type != "Mul" or product.domain not in ("", "ai.onnx") or len(product.input) != 2:
            continue
        for gelu_name in product.input:
            half_mul = made_by(gelu_name, "Mul")
            value = other_input(product, gelu_name)
            if half_mul is None or value is None:
                continue
            inner = next((made_by(i, "Mul") for i in half_mul.input if made_by(i, "Mul") is not None), None)
            if inner is None or scalar(other_input(half_mul, inner.output[0]) or "") != 0.5:
                continue
            plus_one = next((made_by(i, "Add") for i in inner.input if made_by(i, "Add") is not None), None)
            if plus_one is None:
                continue
            gate = other_input(inner, plus_one.output[0])
            erf = next((made_by(i, "Erf") for i in plus_one.input if made_by(i, "Erf") is not None), None)
            if gate is None or erf is None or scalar(other_input(plus_one, erf.output[0]) or "") != 1.0:
                continue
            scale = made_by(erf.input[0], "Div")
            if (
                scale is None
                or scale.input[0] != gate
                or abs((scalar(scale.input[1]) or 0.0) - 2.0**0.5) > 1e-6
            ):
                continue
            if value in shapes and gate in shapes and shapes[value] != shapes[gate]:
                continue
            replacements[product.output[0]] = helper.make_node(
                "GeGLU",
                [value, gate],
                [product.output[0]],
                name=product.name.rsplit("/", 1)[0] + "/GeGLU",
                domain=domain,
            )
            dropped.update(n.output[0] for n in (half_mul, inner, plus_one, erf, scale))
            break
    return _replace_nodes(model, replacements, dropped, domain)

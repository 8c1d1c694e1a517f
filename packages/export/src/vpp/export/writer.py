"""Export a VideoPredictionPolicy to the deployment artifact that ``vpp.runtime`` loads.

The artifact is a folder:

- ``features.onnx``: images of every view (1, V, 3, H, W) in [-1, 1] + CLIP hidden states
  (1, L, D_text) + the TVP's starting noise (1, V, T, C, h, w) -> predictive features (the VAE
  encode of the current frame and the hooked UNet forward in one graph; for ``encoder="vae"``
  just the VAE latents, with no noise input). The text's key/value projections are moved in
  front of the UNet's per-frame and per-pixel broadcasts (``vpp.export.graph_passes``), and
  each GEGLU feed-forward is traced as two half-width projections, the temporal cross-attention
  attends once per video to its text, and every UNet attention is one ONNX Runtime
  ``com.microsoft.MultiHeadAttention`` node unless ``attention_nodes=False``
  (``vpp.export.patches``).
- ``policy.onnx``: features + language embedding (1, D_lang) + normalised state (1, S) + unit
  action noise (1, chunk, action_dim) -> normalised action chunk, with every DDIM step unrolled
  in the graph (one ORT call per chunk beat a Python loop over a one-step graph).
- ``text/hidden.npy`` + ``text/pooled.npy``: the text encoder's outputs for the instructions
  given at export, in the manifest's ``text.instructions`` order (no text-encoder call for them).
- ``text_encoder.onnx`` + ``text/tokenizer.json`` (vocabulary, merges, special ids, length):
  the CLIP text encoder (token ids (1, L) -> hidden states, pooled embedding) and what the
  runtime's pure-Python tokenizer needs, so instructions outside the cache work too.
- ``feature_noise.npy`` when the policy uses ``feature_noise="fixed"``: the exact noise torch
  draws from ``feature_seed``, which numpy cannot reproduce.
- ``manifest.json`` (:class:`vpp.runtime.manifest.Manifest`, with its sha256 in
  ``manifest.json.sha256``): format version, shapes, cameras, image size, normalisation bounds,
  sampler schedule, the parity errors measured at export, and the sha256 of every other file.

:func:`export_policy` runs four named steps: :func:`write_text` (the text cache and encoder),
:func:`trace_graphs` (the two graphs, traced under the module patches), :func:`apply_graph_passes`
(the ONNX rewrites), then :func:`build_manifest`, after which :func:`check_parity` runs the
written artifact through ``vpp.runtime.Policy`` against PyTorch before the manifest is written.

Graphs use the legacy TorchScript exporter at opset 17 (it handles the forward hooks and the
early stop inside :func:`predictive_features`); batch size is fixed to 1, as a robot acts on one
observation at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpp.export.graph_passes import (
    FUSED_DOMAIN,
    fuse_geglu,
    fuse_group_norm_silu,
    fuse_group_norms,
    project_before_broadcast,
)
from vpp.export.patches import (
    fold_temporal_cross_attention,
    multi_head_attention_nodes,
    repeat_interleave_as_expand,
    split_geglu,
)
from vpp.export.quantize import (
    DYNAMIC_OP_TYPES,
    STATIC_OP_TYPES,
    CalibrationSource,
    QuantizationError,
    QuantizeOptions,
    graph_feeds,
    open_calibration_source,
    quantize_features,
    read_frames,
)
from vpp.policy.policy import VideoPredictionPolicy
from vpp.runtime import custom_ops
from vpp.runtime.artifact import Artifact
from vpp.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SHA256,
    ActionSpec,
    CalibrationRecord,
    CustomOps,
    FeatureSpec,
    GraphSpec,
    GraphsSpec,
    HeldOutAgreement,
    Manifest,
    Normalizer,
    Parity,
    Quantization,
    QuantizedOps,
    SamplerSpec,
    StateSpec,
    TextEncoderSpec,
    TextSpec,
    sha256_file,
)
from vpp.runtime.policy import Policy
from vpp.tvp.features import feature_sigma, predictive_features

logger = logging.getLogger(__name__)

OPSET = 17
# features.onnx's symbolic view dimension (axis 1 of images, noise and features), recorded as
# manifest.features.view_axis.
VIEW_AXIS = "views"
# Max-abs error allowed between ONNX Runtime and PyTorch on the same inputs and noise. Features
# are compared relative to their largest magnitude (an untrained UNet's can be large).
PARITY_TOLERANCE = {"features_relative": 1e-3, "normalized_actions": 1e-3, "text": 1e-3}
# The same check for an int8 features graph (``quantize=``), on the same random images: these lie
# far outside the calibration frames' ranges, so single feature values clip; measured 0.095
# (tiny preset) and 0.088 (small) of the features' largest magnitude at feature cosines of 0.998,
# and 0.003 and 0.0025 on the normalised actions. The bounds catch a broken graph (a wrong
# scale, a dropped node: errors of order 1), not int8's own error, which the manifest's
# quantization record measures on real held-out frames.
QUANTIZED_PARITY_TOLERANCE = {"features_relative": 0.3, "normalized_actions": 0.05, "text": 1e-3}


class ExportError(RuntimeError):
    """The policy cannot be exported, or the exported graphs disagree with PyTorch."""


class _FeatureGraph(nn.Module):
    def __init__(self, policy: VideoPredictionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, images: torch.Tensor, text_hidden: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        tvp = self.policy.tvp
        if self.policy.config.encoder == "vae":
            return tvp.encode_video(images.flatten(0, 1).unsqueeze(1)).unflatten(0, images.shape[:2])
        return predictive_features(tvp, images, text_hidden=text_hidden, noise=noise)


class _TextGraph(nn.Module):
    def __init__(self, policy: VideoPredictionPolicy) -> None:
        super().__init__()
        self.text_encoder = policy.tvp.text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids=input_ids)
        return out.last_hidden_state, out.text_embeds


class _PolicyGraph(nn.Module):
    def __init__(self, policy: VideoPredictionPolicy) -> None:
        super().__init__()
        self.head = policy.head

    def forward(
        self,
        features: torch.Tensor,
        lang: torch.Tensor,
        noise: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head.sample(features, lang, state, noise=noise)


def feature_noise_shape(policy: VideoPredictionPolicy) -> tuple[int, ...] | None:
    """(1, V, T, C, h, w) unit noise of one TVP forward, or None for the VAE encoder."""
    if policy.config.encoder == "vae":
        return None
    c = policy.tvp.config
    return (1, len(policy.config.cameras), c.feature_frames, c.latent_channels, c.latent_size, c.latent_size)


@torch.no_grad()
def reference_actions(
    policy: VideoPredictionPolicy,
    pixels: torch.Tensor,
    instruction: str,
    state: np.ndarray | None,
    feature_noise: np.ndarray | None,
    action_noise: np.ndarray,
) -> np.ndarray:
    """PyTorch actions (chunk, action_dim) for pixels (1, V, 3, H, W) with the given noise: what
    ``predict_action_chunk`` computes, with the noise passed in instead of drawn."""
    hidden, pooled = policy.tvp.encode_text([instruction])
    if policy.config.encoder == "vae":
        features = _FeatureGraph(policy)(pixels)
    else:
        features = predictive_features(
            policy.tvp, pixels, text_hidden=hidden, noise=torch.from_numpy(feature_noise)
        )
    state_tensor = None if state is None else torch.from_numpy(np.asarray(state, dtype=np.float64))[None]
    normalized = policy.head.sample(
        features, pooled, policy._state(state_tensor), noise=torch.from_numpy(action_noise)
    )
    return policy.action_normalizer.denormalize(normalized[0].double()).float().numpy()


def _onnx_export(
    module: nn.Module,
    args: tuple[Any, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    with warnings.catch_warnings():
        # The legacy exporter is deprecated in favour of dynamo=True, which does not yet trace
        # the hooked, early-stopping UNet forward as reliably.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            opset_version=OPSET,
            dynamic_axes=dynamic_axes,
            dynamo=False,
        )


def tokenizer_data(policy: VideoPredictionPolicy) -> dict[str, Any] | None:
    """What ``vpp.runtime.tokenizer.ClipTokenizer`` needs, or None for a tokenizer that is not
    a CLIP-style BPE (``</w>`` word ends) it can reproduce."""
    tokenizer = policy.tvp.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        return None
    return {
        "vocab": model["vocab"],
        "merges": [m if isinstance(m, str) else " ".join(m) for m in model["merges"]],
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "unk_id": tokenizer.unk_token_id,
        "max_length": policy.tvp.config.text_max_tokens,
    }


def _require_custom_ops(fused_kernels: bool, fused_geglu: bool) -> None:
    """Fails before any tracing when the parity check could not run fused-kernel graphs: it
    needs vpp-runtime's custom-op library, as every machine that runs the artifact does."""
    if not fused_kernels:
        return
    needed = {"GroupNorm": 1, "GeGLU": 1} if fused_geglu else {"GroupNorm": 1}
    try:
        custom_ops.require_library(needed, "export with fused kernels")
    except custom_ops.CustomOpsUnavailableError as error:
        raise ExportError(
            f"the parity check cannot run fused-kernel graphs: {error}. Exporting without them: "
            "fused_kernels=False (vpp-export --standard-ops-only)"
        ) from error


@dataclass(frozen=True)
class TextExport:
    """The text step's results: CLIP outputs of the instructions and their token ids, and the
    tokenizer data written beside the text-encoder graph (None: no encoder exported)."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    ids: torch.Tensor
    tokenizer: dict[str, Any] | None


def write_text(
    policy: VideoPredictionPolicy, out: Path, instructions: Sequence[str], text_encoder: bool
) -> TextExport:
    """Writes the text cache (``text/hidden.npy``, ``text/pooled.npy``) and, with
    ``text_encoder``, ``text_encoder.onnx`` and ``text/tokenizer.json``."""
    hidden, pooled = policy.tvp.encode_text(list(instructions))
    (out / "text").mkdir(exist_ok=True)
    np.save(out / "text" / "hidden.npy", hidden.float().numpy())
    np.save(out / "text" / "pooled.npy", pooled.float().numpy())
    tokenizer = tokenizer_data(policy) if text_encoder else None
    if text_encoder and tokenizer is None:
        logger.warning(
            "the TVP's tokenizer is not a CLIP BPE the runtime can reproduce: exporting the text cache only"
        )
    ids = policy.tvp.tokenize(list(instructions))
    if tokenizer is not None:
        (out / "text" / "tokenizer.json").write_text(json.dumps(tokenizer))
        _onnx_export(
            _TextGraph(policy).eval(),
            (ids[:1],),
            out / "text_encoder.onnx",
            ["input_ids"],
            ["hidden", "pooled"],
        )
    return TextExport(hidden, pooled, ids, tokenizer)


@dataclass(frozen=True)
class TracedGraphs:
    """The trace step's results: each graph's input names and the example inputs it was traced
    with, PyTorch's outputs on them (the parity reference), and the module patches applied."""

    feature_inputs: list[str]
    feature_args: tuple[torch.Tensor, ...]
    features: torch.Tensor
    fixed_noise_file: str | None
    policy_inputs: list[str]
    policy_args: tuple[torch.Tensor, ...]
    actions: torch.Tensor
    module_patches: dict[str, int]


def trace_graphs(
    policy: VideoPredictionPolicy, out: Path, text: TextExport, seed: int, attention_nodes: bool
) -> TracedGraphs:
    """Traces ``features.onnx`` (under the module patches of :mod:`vpp.export.patches`) and
    ``policy.onnx`` on random inputs drawn from ``seed``, and writes ``feature_noise.npy`` for
    a policy with fixed feature noise."""
    cfg = policy.config
    size = policy.tvp.config.image_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((1, len(cfg.cameras), 3, size, size), generator=generator) * 2 - 1
    noise_shape = feature_noise_shape(policy)
    feature_noise = None
    fixed_noise_file = None
    if noise_shape is not None:
        if cfg.feature_noise == "fixed":
            feature_noise = policy.feature_noise(1)
            fixed_noise_file = "feature_noise.npy"
            np.save(out / fixed_noise_file, feature_noise[0].numpy())
        else:
            feature_noise = torch.randn(noise_shape, generator=generator)

    feature_graph = _FeatureGraph(policy).eval()
    # The VAE encoder needs neither text nor noise, and the exporter drops unused inputs.
    feature_inputs = ["images", "text_hidden", "noise"] if feature_noise is not None else ["images"]
    feature_args = (images, text.hidden[:1], feature_noise) if feature_noise is not None else (images,)
    module_patches = {"geglu_split": 0, "temporal_cross_attention_folded": 0}
    with contextlib.ExitStack() as patches:
        patches.enter_context(repeat_interleave_as_expand())
        # The patches rewire the TVP's UNet, which a VAE-encoder graph never calls.
        if cfg.encoder != "vae":
            module_patches["geglu_split"] = patches.enter_context(split_geglu(feature_graph))
            # the fold first: the attention-node patch leaves the attentions it took alone
            module_patches["temporal_cross_attention_folded"] = patches.enter_context(
                fold_temporal_cross_attention(feature_graph, multi_head_attention_node=attention_nodes)
            )
            if attention_nodes:
                patches.enter_context(multi_head_attention_nodes(feature_graph))
        # The view axis stays symbolic: the views never mix in the feature pass, so a runtime
        # may run them one per call, in parallel (vpp.runtime.Policy's parallel_views).
        view_axes = {name: {1: VIEW_AXIS} for name in [*feature_inputs, "features"] if name != "text_hidden"}
        _onnx_export(
            feature_graph, feature_args, out / "features.onnx", feature_inputs, ["features"], view_axes
        )
    features = feature_graph(*feature_args)

    state = (
        torch.randn((1, cfg.state_dim), generator=generator).clamp(-1, 1)
        if cfg.state_dim is not None
        else None
    )
    action_noise = torch.randn((1, cfg.chunk, cfg.action_dim), generator=generator)
    policy_graph = _PolicyGraph(policy).eval()
    policy_inputs = ["features", "lang", "noise"] + ([] if state is None else ["state"])
    policy_args = (features, text.pooled[:1], action_noise) + (() if state is None else (state,))
    _onnx_export(policy_graph, policy_args, out / "policy.onnx", policy_inputs, ["actions"])
    actions = policy_graph(*policy_args)
    return TracedGraphs(
        feature_inputs,
        feature_args,
        features,
        fixed_noise_file,
        policy_inputs,
        policy_args,
        actions,
        module_patches,
    )


def apply_graph_passes(
    path: Path, fused_kernels: bool, fused_geglu: bool = False, views: int | None = None
) -> dict[str, int]:
    """Applies :func:`project_before_broadcast` in place, with ``fused_kernels`` also
    :func:`fuse_group_norms` and :func:`fuse_group_norm_silu`, and with ``fused_geglu``
    :func:`fuse_geglu`. Returns how many MatMuls the first moved, how many SiLUs and GEGLU
    activations became fused nodes, and how many ``MultiHeadAttention`` and fused GroupNorm
    nodes the graph holds. The weights stay where the exporter put them (external files for
    graphs over 2 GB): only the graph is loaded and rewritten. The parity check that follows
    runs the rewritten graph. ``views``: the camera count, the size of the symbolic view axis
    for the first pass's shape proof."""
    import onnx

    model, projected = project_before_broadcast(
        onnx.load(str(path), load_external_data=False), None if views is None else {VIEW_AXIS: views}
    )
    norms = silus = geglus = 0
    if fused_kernels:
        model, norms = fuse_group_norms(model, FUSED_DOMAIN)
        model, silus = fuse_group_norm_silu(model, FUSED_DOMAIN)
        if fused_geglu:
            model, geglus = fuse_geglu(model, FUSED_DOMAIN)
    if projected or norms or geglus:
        onnx.save(model, str(path))
    nodes = model.graph.node
    return {
        "projected_before_broadcast": projected,
        "multi_head_attention_nodes": sum(
            node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft" for node in nodes
        ),
        "fused_group_norms": sum(
            node.op_type == "GroupNorm" and node.domain == FUSED_DOMAIN for node in nodes
        ),
        "silu_folded_into_group_norm": silus,
        "fused_geglu": geglus,
    }


def graph_custom_ops(path: Path) -> CustomOps | None:
    """The custom ops a graph file uses ({op: node count}), or None."""
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == FUSED_DOMAIN:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return CustomOps(FUSED_DOMAIN, ops) if ops else None


def _normalizer(normalizer) -> Normalizer:
    return Normalizer(normalizer.method, tuple(normalizer.low.tolist()), tuple(normalizer.high.tolist()))


def build_manifest(
    policy: VideoPredictionPolicy,
    out: Path,
    instructions: Sequence[str],
    text: TextExport,
    traced: TracedGraphs,
    rewrites: dict[str, int],
    export_seconds: float,
) -> Manifest:
    """The artifact's manifest, with the sha256 of every file in ``out`` and no parity yet."""
    cfg = policy.config
    noise_shape = feature_noise_shape(policy)
    diffusion = policy.head.diffusion
    features_file = "features.onnx"
    return Manifest(
        format_version=FORMAT_VERSION,
        producer="vpp-export",
        opset=OPSET,
        cameras=tuple(cfg.cameras),
        image_size=policy.tvp.config.image_size,
        encoder=cfg.encoder,
        action=ActionSpec(cfg.action_dim, cfg.chunk, _normalizer(policy.action_normalizer)),
        state=None
        if cfg.state_dim is None
        else StateSpec(cfg.state_dim, _normalizer(policy.state_normalizer)),
        features=FeatureSpec(
            noise=None if noise_shape is None else cfg.feature_noise,
            noise_shape=noise_shape,
            fixed_noise_file=traced.fixed_noise_file,
            sigma=None if noise_shape is None else feature_sigma(policy.tvp),
            shape=tuple(traced.features.shape),
            view_axis=VIEW_AXIS,
        ),
        sampler=SamplerSpec(
            name="ddim",
            num_steps=diffusion.config.num_steps,
            sigma_data=diffusion.config.sigma_data,
            sigma_max=diffusion.config.sigma_max,
            sigma_min=diffusion.config.eval_sigma_min,
            sigmas=tuple(diffusion.sigmas().tolist()),
        ),
        text=TextSpec(
            instructions=tuple(instructions),
            hidden_file="text/hidden.npy",
            pooled_file="text/pooled.npy",
            hidden_shape=tuple(text.hidden.shape[1:]),
            pooled_dim=int(text.pooled.shape[1]),
            encoder=None
            if text.tokenizer is None
            else TextEncoderSpec("text_encoder.onnx", "text/tokenizer.json"),
        ),
        graphs=GraphsSpec(
            features=GraphSpec(
                features_file,
                tuple(traced.feature_inputs),
                "features",
                rewrites,
                graph_custom_ops(out / features_file),
            ),
            policy=GraphSpec("policy.onnx", tuple(traced.policy_inputs), "actions", {}, None),
        ),
        parity=None,
        export_seconds=export_seconds,
        files={
            str(path.relative_to(out)): sha256_file(path)
            for path in sorted(out.rglob("*"))
            if path.is_file() and path.name not in (MANIFEST, MANIFEST_SHA256)
        },
    )


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def check_parity(
    artifact: Artifact, text: TextExport, traced: TracedGraphs, tolerance: Mapping[str, float]
) -> Parity:
    """Runs the written graphs through ``vpp.runtime.Policy`` (on the CPU, as the runtime
    opens them: custom ops registered, the manifest checked against the graphs) on the traced
    inputs, and compares with PyTorch; raises :class:`ExportError` beyond ``tolerance``."""
    runtime = Policy(artifact, providers=["CPUExecutionProvider"], parallel_views=False)
    features, actions = traced.features.numpy(), traced.actions.numpy()
    feature_feed = {name: value.numpy() for name, value in zip(traced.feature_inputs, traced.feature_args)}
    onnx_features = runtime.run_features(feature_feed)
    features_error = float(np.abs(onnx_features - features).max() / max(1.0, float(np.abs(features).max())))
    policy_feed = {name: value.numpy() for name, value in zip(traced.policy_inputs, traced.policy_args)}
    policy_error = _max_abs(runtime.policy_session.run(None, policy_feed)[0], actions)
    # Both graphs as act() runs them: the features handed over where the first graph left them,
    # and, with two or more views, also one view per call on parallel threads.
    head_feed = {k: v for k, v in policy_feed.items() if k != "features"}
    end_to_end_error = _max_abs(runtime.run_graphs(feature_feed, head_feed), actions)
    if len(artifact.manifest.cameras) > 1 and artifact.manifest.features.view_axis is not None:
        by_view = Policy(artifact, providers=["CPUExecutionProvider"], threads=2, parallel_views=True)
        end_to_end_error = max(
            end_to_end_error, _max_abs(by_view.run_graphs(feature_feed, head_feed), actions)
        )
    text_error = None
    if runtime.text_session is not None:
        text_error = max(
            max(
                _max_abs(o, r)
                for o, r in zip(
                    runtime.text_session.run(None, {"input_ids": ids[None].numpy()}), (h.numpy(), p.numpy())
                )
            )
            for ids, h, p in zip(text.ids, text.hidden, text.pooled)
        )
    parity = Parity(text_error, features_error, policy_error, end_to_end_error, dict(tolerance))
    logger.info("ONNX parity: %s", parity)
    failures = []
    if text_error is not None and text_error > tolerance["text"]:
        failures.append(f"text encoder max-abs error {text_error:.3g} > {tolerance['text']}")
    if features_error > tolerance["features_relative"]:
        failures.append(
            f"features relative max-abs error {features_error:.3g} > {tolerance['features_relative']}"
        )
    for name, error in (("policy", policy_error), ("end-to-end", end_to_end_error)):
        if error > tolerance["normalized_actions"]:
            failures.append(
                f"{name} normalised-action max-abs error {error:.3g} > {tolerance['normalized_actions']}"
            )
    if failures:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch in {artifact.folder}: " + "; ".join(failures))
    return parity


def quantize_artifact(
    artifact: Artifact, options: QuantizeOptions, source: CalibrationSource
) -> Quantization:
    """Replaces the checked fp32 artifact's ``features.onnx`` with its int8 hybrid, calibrated on
    ``source``'s frames fed as the artifact's own ``vpp.runtime.Policy`` feeds them, and measures
    it against the fp32 graph on held-out frames: the feature cosine and the normalised action
    chunk's max-abs difference (policy.onnx on either graph's features, the same noise)."""
    started = time.perf_counter()
    runtime = Policy(artifact, providers=["CPUExecutionProvider"])
    midpoint = None if runtime.state_normalizer is None else runtime.state_normalizer.midpoint()
    frames = read_frames(source, options.calibration_frames + options.held_out_frames, midpoint)
    feature_feeds, policy_feeds, instructions = graph_feeds(runtime, frames, options.seed)
    # every k-th frame is held out, so both sets span the whole dataset
    stride = max(1, len(frames) // options.held_out_frames)
    held = set(range(stride // 2, len(frames), stride)[: options.held_out_frames])
    calibration = [feed for index, feed in enumerate(feature_feeds) if index not in held]
    held_out = sorted(held)
    features_file = artifact.path(artifact.manifest.graphs.features.file)

    def actions(position: int, features: np.ndarray) -> np.ndarray:
        """The normalised chunk policy.onnx makes of held-out frame ``position``'s features."""
        return runtime.policy_session.run(None, {**policy_feeds[held_out[position]], "features": features})[0]

    with tempfile.TemporaryDirectory(prefix="vpp-fp32-") as tmp:
        fp32_file = Path(tmp) / "features.onnx"
        shutil.copyfile(features_file, fp32_file)
        try:
            result = quantize_features(
                fp32_file,
                features_file,
                calibration,
                [feature_feeds[i] for i in held_out],
                runtime.custom_ops_library,
                candidates=options.candidates,
                keep_fp32=options.keep_fp32,
                static=options.scheme == "hybrid",
                actions=actions,
            )
        except QuantizationError:
            raise
        except Exception as error:  # ORT's quantiser raises bare ValueError/RuntimeError/KeyError
            shutil.copyfile(fp32_file, features_file)
            raise QuantizationError(
                f"ONNX Runtime's quantisation of {features_file} failed ({type(error).__name__}: {error}); the fp32 "
                "graph was put back. Export without --quantize, or report the error with the policy's config"
            ) from error
    action_errors = result.held_out.action_errors
    cosines = result.held_out.feature_cosines
    record = Quantization(
        scheme=f"int8-{options.scheme}",
        graph="features",
        static=QuantizedOps(
            op_types=STATIC_OP_TYPES, activations="uint8 per tensor (MinMax)", weights="int8 per channel"
        )
        if options.scheme == "hybrid"
        else None,
        dynamic=QuantizedOps(
            op_types=DYNAMIC_OP_TYPES, activations="uint8 per call", weights="int8 per channel"
        ),
        quantized_nodes=dict(result.node_counts),
        fp32_nodes=tuple(result.fp32_nodes),
        fp32_node_gains={name: float(gain) for name, gain in result.sensitivity.items()},
        calibration=CalibrationRecord(
            dataset=str(source.dataset.resolve()),
            video_keys=dict(source.video_keys),
            state=source.state_key,
            frames=len(calibration),
            held_out_frames=len(held_out),
            instructions=tuple(dict.fromkeys(instructions)),
            seed=options.seed,
        ),
        held_out=HeldOutAgreement(
            feature_cosine_min=min(cosines),
            feature_cosine_mean=float(np.mean(cosines)),
            normalized_action_max_abs=max(action_errors),
            normalized_action_mean_max_abs=float(np.mean(action_errors)),
        ),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "int8 features graph: %s quantised, %d kept fp32; held-out feature cosine >= %.5f, "
        "normalised action error <= %.4f",
        record.quantized_nodes,
        len(record.fp32_nodes),
        record.held_out.feature_cosine_min,
        record.held_out.normalized_action_max_abs,
    )
    return record


@torch.no_grad()
def export_policy(
    policy: VideoPredictionPolicy,
    out: str | Path,
    instructions: Sequence[str],
    seed: int = 0,
    tolerance: Mapping[str, float] = PARITY_TOLERANCE,
    text_encoder: bool = True,
    attention_nodes: bool = True,
    fused_kernels: bool = True,
    fused_geglu: bool = False,
    quantize: QuantizeOptions | None = None,
) -> Path:
    """Writes the artifact folder ``out`` and returns the manifest path; raises
    :class:`ExportError` when ONNX Runtime and PyTorch disagree beyond ``tolerance`` (then no
    manifest is written: the folder is not a loadable artifact).
    ``text_encoder=False`` leaves out the text-encoder graph: only the cached instructions work.
    ``attention_nodes=False`` keeps the UNet's attentions in standard ONNX operators instead of
    ONNX Runtime's ``com.microsoft.MultiHeadAttention`` (CPU and CUDA providers have it; other
    runtimes, and TensorRT without falling back to CUDA nodes, do not).
    ``fused_kernels=False`` keeps GroupNorm (and the SiLU after it) and the GEGLU activation in
    standard operators instead of vpp-runtime's ``vpp.fused`` custom ops, which need vpp-runtime's
    custom-op library (built with ONNX Runtime's C API header) wherever the artifact runs.
    ``fused_geglu=True`` (with ``fused_kernels``) also makes each GEGLU activation one
    ``vpp.fused.GeGLU`` node: one memory pass instead of ORT's Gelu and Mul, meant for the CUDA
    provider, where those passes are memory-bound; on the CPU it measured no faster (0.99x of
    the small feature pass), ORT's own Gelu being as fast, so it is off by default.
    ``quantize``: the features graph in int8 (:mod:`vpp.export.quantize`), calibrated on the
    LeRobot dataset it names, which is checked first (:class:`CalibrationDataError` before any
    tracing); the fp32 graphs pass the usual parity check before quantisation, the int8 artifact
    then passes it within :data:`QUANTIZED_PARITY_TOLERANCE` (unless ``tolerance`` is given), and
    the manifest's ``quantization`` records what was quantised and its measured agreement with fp32."""
    if not instructions:
        raise ExportError("no instructions given: the artifact's text cache would be empty")
    if len(set(instructions)) != len(instructions):
        raise ExportError(f"duplicate instructions in {list(instructions)}")
    tvp_config = policy.tvp.config
    if policy.config.encoder == "tvp" and tvp_config.noise_aug_strength > 0:
        raise ExportError(
            f"noise_aug_strength={tvp_config.noise_aug_strength}: the first-frame noise augmentation draws its own "
            "noise inside the TVP; export supports noise_aug_strength=0 only"
        )
    _require_custom_ops(fused_kernels, fused_geglu)
    calibration = (
        None
        if quantize is None
        else open_calibration_source(quantize, policy.config.cameras, policy.config.state_dim)
    )
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A manifest left by an earlier export would describe files this one replaces.
    for name in (MANIFEST, MANIFEST_SHA256):
        (out / name).unlink(missing_ok=True)
    policy = policy.eval()

    text = write_text(policy, out, instructions, text_encoder)
    traced = trace_graphs(policy, out, text, seed, attention_nodes)
    rewrites = {
        **traced.module_patches,
        **apply_graph_passes(
            out / "features.onnx", fused_kernels, fused_kernels and fused_geglu, len(policy.config.cameras)
        ),
    }
    export_seconds = time.perf_counter() - started
    manifest = build_manifest(policy, out, instructions, text, traced, rewrites, export_seconds)
    artifact = Artifact(out, manifest)
    artifact.check_files()
    parity = check_parity(artifact, text, traced, tolerance)
    if quantize is not None:
        record = quantize_artifact(artifact, quantize, calibration)
        export_seconds = time.perf_counter() - started
        manifest = dataclasses.replace(
            build_manifest(policy, out, instructions, text, traced, rewrites, export_seconds),
            quantization=record,
        )
        artifact = Artifact(out, manifest)
        artifact.check_files()
        parity = check_parity(
            artifact, text, traced, QUANTIZED_PARITY_TOLERANCE if tolerance is PARITY_TOLERANCE else tolerance
        )
    manifest_path = dataclasses.replace(manifest, parity=parity).write(out)
    sizes = {name: (out / name).stat().st_size for name in ("features.onnx", "policy.onnx")}
    logger.info("exported %s in %.1f s: %s bytes", out, export_seconds, sizes)
    return manifest_path

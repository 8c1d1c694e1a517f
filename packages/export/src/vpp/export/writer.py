"""Export a VideoPredictionPolicy to the deployment artifact that ``vpp.runtime`` loads.

The artifact is a folder:

- ``features.onnx``: images of every view (1, V, 3, H, W) in [-1, 1] + CLIP hidden states
  (1, L, D_text) + the TVP's starting noise (1, V, T, C, h, w) -> predictive features (the VAE
  encode of the current frame and the hooked UNet forward in one graph; for ``encoder="vae"``
  just the VAE latents, with no noise input). The text's key/value projections are moved in
  front of the UNet's per-frame and per-pixel broadcasts (``vpp.policy.graph_passes``), and
  each GEGLU feed-forward is traced as two half-width projections, the temporal cross-attention
  attends once per video to its text, and every UNet attention is one ONNX Runtime
  ``com.microsoft.MultiHeadAttention`` node unless ``attention_nodes=False``
  (``vpp.policy.export_patches``).
- ``policy.onnx``: features + language embedding (1, D_lang) + normalised state (1, S) + unit
  action noise (1, chunk, action_dim) -> normalised action chunk, with every DDIM step unrolled
  in the graph (one ORT call per chunk beat a Python loop over a one-step graph).
- ``text/hidden.npy`` + ``text/pooled.npy``: the text encoder's outputs for the instructions
  given at export, in ``manifest["text"]["instructions"]`` order (no text-encoder call for them).
- ``text_encoder.onnx`` + ``text/tokenizer.json`` (vocabulary, merges, special ids, length):
  the CLIP text encoder (token ids (1, L) -> hidden states, pooled embedding) and what the
  runtime's pure-Python tokenizer needs, so instructions outside the cache work too.
- ``feature_noise.npy`` when the policy uses ``feature_noise="fixed"``: the exact noise torch
  draws from ``feature_seed``, which numpy cannot reproduce.
- ``manifest.json``: format version, shapes, cameras, image size, normalisation bounds, sampler
  schedule, the parity errors measured at export, and the sha256 of every other file.

Graphs use the legacy TorchScript exporter at opset 17 (it handles the forward hooks and the
early stop inside :func:`predictive_features`); batch size is fixed to 1, as a robot acts on one
observation at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpp.policy.export_patches import fold_temporal_cross_attention, multi_head_attention_nodes, split_geglu
from vpp.policy.graph_passes import FUSED_DOMAIN, fuse_geglu, fuse_group_norm_silu, fuse_group_norms, project_before_broadcast
from vpp.policy.policy import VideoPredictionPolicy
from vpp.tvp.features import feature_sigma, predictive_features

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
OPSET = 17
# Max-abs error allowed between ONNX Runtime and PyTorch on the same inputs and noise. Features
# are compared relative to their largest magnitude (an untrained UNet's can be large).
PARITY_TOLERANCE = {"features_relative": 1e-3, "normalized_actions": 1e-3, "text": 1e-3}


class ExportError(RuntimeError):
    """The policy cannot be exported, or the exported graphs disagree with PyTorch."""


class _FeatureGraph(nn.Module):
    def __init__(self, policy: VideoPredictionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, images: torch.Tensor, text_hidden: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
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

    def forward(self, features: torch.Tensor, lang: torch.Tensor, noise: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.sample(features, lang, state, noise=noise)


def feature_noise_shape(policy: VideoPredictionPolicy) -> tuple[int, ...] | None:
    """(1, V, T, C, h, w) unit noise of one TVP forward, or None for the VAE encoder."""
    if policy.config.encoder == "vae":
        return None
    c = policy.tvp.config
    return (1, len(policy.config.cameras), c.num_frames, c.latent_channels, c.latent_size, c.latent_size)


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
        features = predictive_features(policy.tvp, pixels, text_hidden=hidden, noise=torch.from_numpy(feature_noise))
    state_tensor = None if state is None else torch.from_numpy(np.asarray(state, dtype=np.float64))[None]
    normalized = policy.head.sample(features, pooled, policy._state(state_tensor), noise=torch.from_numpy(action_noise))
    return policy.action_normalizer.denormalize(normalized[0].double()).float().numpy()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_export(module: nn.Module, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str]) -> None:
    with warnings.catch_warnings():
        # The legacy exporter is deprecated in favour of dynamo=True, which does not yet trace
        # the hooked, early-stopping UNet forward as reliably.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET, dynamo=False)


def _optimize_graph(path: Path, fused_kernels: bool, fused_geglu: bool = False) -> dict[str, int]:
    """Applies :func:`project_before_broadcast` in place, with ``fused_kernels`` also
    :func:`fuse_group_norms` and :func:`fuse_group_norm_silu`, and with ``fused_geglu``
    :func:`fuse_geglu`. Returns how many MatMuls the first moved, how many SiLUs and GEGLU
    activations became fused nodes, and how many ``MultiHeadAttention`` and fused GroupNorm
    nodes the graph holds. The weights stay where the exporter put them (external files for
    graphs over 2 GB): only the graph is loaded and rewritten. The parity check that follows
    runs the rewritten graph."""
    import onnx

    model, projected = project_before_broadcast(onnx.load(str(path), load_external_data=False))
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
        "multi_head_attention_nodes": sum(node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft" for node in nodes),
        "fused_group_norms": sum(node.op_type == "GroupNorm" and node.domain == FUSED_DOMAIN for node in nodes),
        "silu_folded_into_group_norm": silus,
        "fused_geglu": geglus,
    }


def _custom_ops(path: Path) -> dict[str, Any] | None:
    """The manifest's ``custom_ops`` entry of a graph: {"domain", "ops": {op: node count}}, or None."""
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == FUSED_DOMAIN:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"domain": FUSED_DOMAIN, "ops": ops} if ops else None


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


def _normalizer_dict(normalizer) -> dict[str, Any] | None:
    return None if normalizer is None else normalizer.to_dict()


CUSTOM_OPS_LIBRARY = {"linux": "libvpp_ort_ops.so", "darwin": "libvpp_ort_ops.dylib", "win32": "vpp_ort_ops.dll"}


def _custom_ops_library(needed: list[str]) -> Path:
    """vpp-runtime's custom-op library, which the parity check needs to run fused-kernel graphs:
    ``$VPP_ORT_OPS_LIBRARY``, else the file beside the installed ``vpp.runtime`` package. Found
    by path and asked for its ops through its C entry point, as ONNX Runtime finds it:
    ``vpp.policy`` does not import ``vpp.runtime`` (DESIGN.md: imports go one way)."""
    import ctypes
    import importlib.util
    import os
    import sys

    name = CUSTOM_OPS_LIBRARY.get(sys.platform, CUSTOM_OPS_LIBRARY["linux"])
    override = os.environ.get("VPP_ORT_OPS_LIBRARY")
    spec = None if override else importlib.util.find_spec("vpp.runtime")
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    candidates = [Path(override)] if override else [Path(folder) / name for folder in folders]
    library = next((path for path in candidates if path.is_file()), None)
    if library is None:
        raise ExportError(
            f"export with fused kernels needs vpp-runtime's custom-op library {name} (looked in "
            f"{[str(c) for c in candidates] or 'no installed vpp.runtime'}): install vpp-runtime built with ONNX Runtime's "
            "C API header (scripts/ort-headers.sh), set VPP_ORT_OPS_LIBRARY, or pass fused_kernels=False "
            "(vpp-policy export --standard-ops-only)"
        )
    describe = ctypes.CDLL(str(library)).vpp_fused_ops
    describe.restype = ctypes.c_char_p
    has = {entry.partition(":")[0] for entry in describe().decode().split(";")}
    missing = sorted(set(needed) - has)
    if missing:
        raise ExportError(f"{library} lacks the vpp.fused ops {missing}: update vpp-runtime")
    return library


def _session(path: Path, custom_ops_library: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if custom_ops_library is not None:
        options.register_custom_ops_library(str(custom_ops_library))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
) -> Path:
    """Writes the artifact folder ``out`` and returns the manifest path; raises
    :class:`ExportError` when ONNX Runtime and PyTorch disagree beyond ``tolerance``.
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
    the small feature pass), ORT's own Gelu being as fast, so it is off by default."""
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
    custom_ops_library = _custom_ops_library(["GroupNorm", "GeGLU"] if fused_geglu else ["GroupNorm"]) if fused_kernels else None
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy.eval()
    cfg = policy.config
    views, size = len(cfg.cameras), tvp_config.image_size
    generator = torch.Generator().manual_seed(seed)

    hidden, pooled = policy.tvp.encode_text(list(instructions))
    (out / "text").mkdir(exist_ok=True)
    np.save(out / "text" / "hidden.npy", hidden.float().numpy())
    np.save(out / "text" / "pooled.npy", pooled.float().numpy())

    tokenizer = tokenizer_data(policy) if text_encoder else None
    if text_encoder and tokenizer is None:
        logger.warning("the TVP's tokenizer is not a CLIP BPE the runtime can reproduce: exporting the text cache only")
    text_ids = policy.tvp.tokenize(list(instructions))
    if tokenizer is not None:
        (out / "text" / "tokenizer.json").write_text(json.dumps(tokenizer))
        _onnx_export(_TextGraph(policy).eval(), (text_ids[:1],), out / "text_encoder.onnx", ["input_ids"], ["hidden", "pooled"])

    images = torch.rand((1, views, 3, size, size), generator=generator) * 2 - 1
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
    feature_args = (images, hidden[:1], feature_noise) if feature_noise is not None else (images,)
    module_patches = {"geglu_split": 0, "temporal_cross_attention_folded": 0}
    with contextlib.ExitStack() as patches:
        # The patches rewire the TVP's UNet, which a VAE-encoder graph never calls.
        if cfg.encoder != "vae":
            module_patches["geglu_split"] = patches.enter_context(split_geglu(feature_graph))
            # the fold first: the attention-node patch leaves the attentions it took alone
            module_patches["temporal_cross_attention_folded"] = patches.enter_context(
                fold_temporal_cross_attention(feature_graph, multi_head_attention_node=attention_nodes)
            )
            if attention_nodes:
                patches.enter_context(multi_head_attention_nodes(feature_graph))
        _onnx_export(feature_graph, feature_args, out / "features.onnx", feature_inputs, ["features"])
    feature_rewrites = {**module_patches, **_optimize_graph(out / "features.onnx", fused_kernels, fused_kernels and fused_geglu)}
    features = feature_graph(*feature_args)

    state_dim = cfg.state_dim
    state = torch.randn((1, state_dim), generator=generator).clamp(-1, 1) if state_dim is not None else None
    action_noise = torch.randn((1, cfg.chunk, cfg.action_dim), generator=generator)
    policy_graph = _PolicyGraph(policy).eval()
    policy_inputs = ["features", "lang", "noise"] + ([] if state is None else ["state"])
    policy_args = (features, pooled[:1], action_noise) + (() if state is None else (state,))
    _onnx_export(policy_graph, policy_args, out / "policy.onnx", policy_inputs, ["actions"])
    actions = policy_graph(*policy_args)
    export_seconds = time.perf_counter() - started

    feature_custom_ops = _custom_ops(out / "features.onnx")
    feature_session = _session(out / "features.onnx", custom_ops_library if feature_custom_ops else None)
    policy_session = _session(out / "policy.onnx")
    feature_feed = {name: value.numpy() for name, value in zip(feature_inputs, feature_args)}
    onnx_features = feature_session.run(None, feature_feed)[0]
    features_error = float(np.abs(onnx_features - features.numpy()).max() / max(1.0, float(features.abs().max())))
    policy_feed = {"features": features.numpy(), "lang": pooled[:1].numpy(), "noise": action_noise.numpy()}
    if state is not None:
        policy_feed["state"] = state.numpy()
    policy_error = float(np.abs(policy_session.run(None, policy_feed)[0] - actions.numpy()).max())
    chained_feed = dict(policy_feed, features=onnx_features)
    end_to_end_error = float(np.abs(policy_session.run(None, chained_feed)[0] - actions.numpy()).max())
    text_error = None
    if tokenizer is not None:
        text_session = _session(out / "text_encoder.onnx")
        text_error = max(
            float(max(np.abs(o - r).max() for o, r in zip(text_session.run(None, {"input_ids": ids[None].numpy()}), (h.numpy(), p.numpy()))))
            for ids, h, p in zip(text_ids, hidden, pooled)
        )
    parity = {
        "text_max_abs": text_error,
        "features_relative_max_abs": features_error,
        "policy_max_abs": policy_error,
        "end_to_end_normalized_max_abs": end_to_end_error,
        "tolerance": dict(tolerance),
    }
    logger.info("ONNX parity: %s", parity)
    failures = []
    if text_error is not None and text_error > tolerance["text"]:
        failures.append(f"text encoder max-abs error {text_error:.3g} > {tolerance['text']}")
    if features_error > tolerance["features_relative"]:
        failures.append(f"features relative max-abs error {features_error:.3g} > {tolerance['features_relative']}")
    for name, error in (("policy", policy_error), ("end-to-end", end_to_end_error)):
        if error > tolerance["normalized_actions"]:
            failures.append(f"{name} normalised-action max-abs error {error:.3g} > {tolerance['normalized_actions']}")
    if failures:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch in {out}: " + "; ".join(failures))

    diffusion = policy.head.diffusion
    manifest = {
        "format_version": FORMAT_VERSION,
        "producer": "vpp-policy export",
        "opset": OPSET,
        "cameras": list(cfg.cameras),
        "image_size": size,
        "encoder": cfg.encoder,
        "action": {"dim": cfg.action_dim, "chunk": cfg.chunk, "normalizer": _normalizer_dict(policy.action_normalizer)},
        "state": None if state_dim is None else {"dim": state_dim, "normalizer": _normalizer_dict(policy.state_normalizer)},
        "features": {
            "noise": None if noise_shape is None else cfg.feature_noise,
            "noise_shape": None if noise_shape is None else list(noise_shape),
            "fixed_noise_file": fixed_noise_file,
            "sigma": None if noise_shape is None else feature_sigma(policy.tvp),
            "shape": list(features.shape),
        },
        "sampler": {
            "name": "ddim",
            "num_steps": diffusion.config.num_steps,
            "sigma_data": diffusion.config.sigma_data,
            "sigma_max": diffusion.config.sigma_max,
            "sigma_min": diffusion.config.eval_sigma_min,
            "sigmas": diffusion.sigmas().tolist(),
        },
        "text": {
            "kind": "cache",
            "instructions": list(instructions),
            "hidden_file": "text/hidden.npy",
            "pooled_file": "text/pooled.npy",
            "hidden_shape": list(hidden.shape[1:]),
            "pooled_dim": int(pooled.shape[1]),
            "encoder": None if tokenizer is None else {"file": "text_encoder.onnx", "tokenizer": "text/tokenizer.json"},
        },
        "graphs": {
            "features": {
                "file": "features.onnx",
                "inputs": feature_inputs,
                "output": "features",
                "rewrites": feature_rewrites,
                "custom_ops": feature_custom_ops,
            },
            "policy": {"file": "policy.onnx", "inputs": policy_inputs, "output": "actions"},
        },
        "parity": parity,
        "export_seconds": export_seconds,
        "files": {
            str(path.relative_to(out)): sha256_file(path)
            for path in sorted(out.rglob("*"))
            if path.is_file() and path.name != MANIFEST
        },
    }
    manifest_path = out / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2))
    sizes = {name: (out / name).stat().st_size for name in ("features.onnx", "policy.onnx")}
    logger.info("exported %s in %.1f s: %s bytes", out, export_seconds, sizes)
    return manifest_path


def read_instructions(path: str | Path) -> list[str]:
    """One instruction per non-empty line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]

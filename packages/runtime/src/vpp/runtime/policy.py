"""The torch-free policy: an exported artifact run by ONNX Runtime, pre/post-processing in numpy.

``Policy.load(artifact).act({camera: uint8 (H, W, 3), "state": (S,)}, instruction)`` returns the
denormalised action chunk (chunk, action_dim). Two ORT calls per chunk: ``features.onnx`` (VAE +
hooked TVP UNet) then ``policy.onnx`` (Video Former + DiT with the DDIM loop unrolled). Noise is
drawn from a seedable numpy Generator; pass ``noise=`` to reproduce a PyTorch run exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vpp.runtime import custom_ops
from vpp.runtime.artifact import Artifact
from vpp.runtime.errors import ObservationError, UnknownInstructionError
from vpp.runtime.manifest import GraphSpec
from vpp.runtime.tokenizer import ClipTokenizer

logger = logging.getLogger(__name__)

# Preference order when the caller names no providers; ORT falls back along the list per node.
ACCELERATED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of antialiased bilinear resampling (a triangle filter widened
    by the downscale factor, renormalised at the borders), as torch's ``antialias=True``."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = np.arange(first, last)
        w = np.clip(1.0 - np.abs((taps - centre + 0.5) * inv_scale), 0.0, None)
        weights[i, first:last] = w / w.sum()
    return weights


def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The resampling of :func:`_resize_weights` as (out_size, taps) input indices and weights:
    each output reads a short run of inputs, so gathering them costs a few multiply-adds per
    value (indices past the end carry weight 0)."""
    dense = _resize_weights(in_size, out_size)
    nonzero = dense != 0
    first = nonzero.argmax(axis=1)
    taps = int((in_size - nonzero[:, ::-1].argmax(axis=1) - first).max())
    index = first[:, None] + np.arange(taps)
    inside = index < in_size
    index = np.where(inside, index, in_size - 1)
    weights = np.where(inside, np.take_along_axis(dense, index, axis=1), 0.0)
    return index, weights


def _resample_last_axis(video: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    index, weights = _resize_taps(in_size, out_size)
    return np.einsum("...ot,ot->...o", video[..., index], weights)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, size, size) in [-1, 1], centre-cropped to a square
    (the numpy twin of ``vpp.tvp.data.mixture.resize_frames``).

    Each axis is resampled by gathering the few inputs that each output reads, not by a matrix
    product: numpy's matrix products run on OpenBLAS's own threads, which busy-wait for a while
    afterwards and then take the cores that ONNX Runtime's threads need (with two ORT threads on
    two cores, an act measured 30 ms of preprocessing instead of 4 and a slower feature pass)."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    video = frames[:, top : top + side, left : left + side].astype(np.float64).transpose(0, 3, 1, 2)
    if side != size:
        video = _resample_last_axis(video, side, size)  # (N, 3, side, size)
        video = _resample_last_axis(video.swapaxes(-1, -2), side, size).swapaxes(-1, -2)
    return np.clip(video / 127.5 - 1.0, -1.0, 1.0).astype(np.float32)


def default_providers() -> list[str]:
    available = set(ort.get_available_providers())
    return [p for p in ACCELERATED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _signature(values: Sequence[Any]) -> dict[str, list[Any]]:
    """{name: shape} of ONNX Runtime's input or output descriptions."""
    return {value.name: list(value.shape) for value in values}


class Policy:
    """An exported artifact run by ONNX Runtime: ``act(observation, instruction)`` -> the
    denormalised action chunk. Loading checks the artifact's hashes and its manifest against
    the graphs ONNX Runtime opened; ``noise=`` reproduces a PyTorch run exactly."""

    def __init__(
        self,
        artifact: Artifact,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.artifact = artifact
        manifest = artifact.manifest
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        self.providers = list(providers) if providers is not None else default_providers()
        graphs = manifest.graphs
        self.custom_ops_library = self._register_custom_ops(options, [graphs.features, graphs.policy])
        self.feature_session = ort.InferenceSession(
            str(artifact.path(graphs.features.file)), options, providers=self.providers
        )
        self.policy_session = ort.InferenceSession(
            str(artifact.path(graphs.policy.file)), options, providers=self.providers
        )
        encoder = manifest.text.encoder
        self.tokenizer = None if encoder is None else ClipTokenizer.load(artifact.path(encoder.tokenizer))
        self.text_session = (
            None
            if encoder is None
            else ort.InferenceSession(str(artifact.path(encoder.file)), options, providers=self.providers)
        )
        # A manifest that disagrees with its graphs fails here, naming the field, not in ORT later.
        sessions = {
            "features": self.feature_session,
            "policy": self.policy_session,
            "text_encoder": self.text_session,
        }
        for name, session in sessions.items():
            if session is not None:
                manifest.check_graph(
                    name, _signature(session.get_inputs()), _signature(session.get_outputs())
                )
        # Where features.onnx leaves its output: the memory of the provider that runs it.
        self.device = "cuda" if self.feature_session.get_providers()[0] in ACCELERATED_PROVIDERS else "cpu"
        self.cameras = list(manifest.cameras)
        self.image_size = manifest.image_size
        self.action_dim = manifest.action.dim
        self.chunk = manifest.action.chunk
        self.state_dim = None if manifest.state is None else manifest.state.dim
        self.action_normalizer = manifest.action.normalizer
        self.state_normalizer = None if manifest.state is None else manifest.state.normalizer
        self.text_cache = artifact.text_cache()
        self.feature_noise_shape = manifest.features.noise_shape
        self.fixed_feature_noise = artifact.fixed_feature_noise()
        self.rng = np.random.default_rng(seed)

    def _register_custom_ops(self, options: ort.SessionOptions, graphs: Sequence[GraphSpec]) -> Path | None:
        """Registers vpp-runtime's custom-op library when a graph uses its ops; warns when a
        chosen accelerator has no kernel for one (ORT then runs it on the CPU, copying its
        tensors to and from the device)."""
        needed: dict[str, int] = {}
        for graph in graphs:
            for name, count in ({} if graph.custom_ops is None else graph.custom_ops.ops).items():
                needed[name] = needed.get(name, 0) + count
        if not needed:
            return None
        path = custom_ops.require_library(needed, f"artifact {self.artifact.folder}")
        options.register_custom_ops_library(str(path))
        library_ops = custom_ops.library_ops(path)
        if any(provider in ACCELERATED_PROVIDERS for provider in self.providers):
            # TensorRT hands the nodes it cannot take to the CUDA provider.
            lacking = sorted(
                name for name in needed if "CUDAExecutionProvider" not in library_ops.get(name, [])
            )
            if lacking:
                logger.warning(
                    "%s has no CUDA kernel for %s %s: ORT runs those nodes on the CPU and copies their tensors to and "
                    "from the GPU; build vpp-runtime with VPP_WITH_CUDA=ON, or export with --standard-ops-only",
                    path.name,
                    custom_ops.DOMAIN,
                    lacking,
                )
        return path

    @classmethod
    def load(
        cls,
        artifact: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        seed: int | None = None,
        verify: bool = True,
    ) -> Policy:
        """Opens an artifact folder (checking its hashes unless ``verify=False``) and builds one
        ORT session per graph. ``providers=None``: TensorRT/CUDA when this ORT has them, else CPU."""
        return cls(Artifact.open(artifact, verify=verify), providers=providers, threads=threads, seed=seed)

    @property
    def instructions(self) -> list[str]:
        return list(self.text_cache)

    # -- inputs -----------------------------------------------------------------------------

    def preprocess(self, observation: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """-> (pixels (1, V, 3, S, S) float32 in [-1, 1], normalised state (1, S) float32 or None)."""
        images = []
        for camera in self.cameras:
            if camera not in observation:
                raise ObservationError(
                    f"observation has no camera {camera!r}; it has {sorted(observation)}, "
                    f"the policy needs {self.cameras}"
                )
            frame = observation[camera]
            if (
                not isinstance(frame, np.ndarray)
                or frame.ndim != 3
                or frame.shape[-1] != 3
                or frame.dtype != np.uint8
            ):
                got = (getattr(frame, "shape", None), getattr(frame, "dtype", type(frame).__name__))
                raise ObservationError(
                    f"camera {camera!r}: image of shape {got[0]} and dtype {got[1]}; expected (H, W, 3) uint8"
                )
            if min(frame.shape[:2]) == 0:
                raise ObservationError(f"camera {camera!r}: empty image of shape {frame.shape}")
            images.append(resize_frames(frame[None], self.image_size)[0])
        state = None
        if self.state_dim is not None:
            if "state" not in observation:
                raise ObservationError(
                    f"observation has no 'state'; this policy needs {self.state_dim} values"
                )
            raw = np.asarray(observation["state"], dtype=np.float64)
            if raw.shape != (self.state_dim,) or not np.isfinite(raw).all():
                raise ObservationError(f"state {raw!r}; expected {self.state_dim} finite values")
            state = self.state_normalizer.normalize(raw)[None].astype(np.float32)
        return np.stack(images)[None], state

    def text(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """(CLIP hidden states (1, L, D), pooled embedding (1, P)); new instructions go through
        the text-encoder graph once and join the cache."""
        if instruction in self.text_cache:
            return self.text_cache[instruction]
        if self.text_session is None:
            raise UnknownInstructionError(
                f"instruction {instruction!r} is not in this artifact's text cache and the artifact has no "
                f"text encoder; it holds {self.instructions} (re-export with --instruction to add one)"
            )
        ids = np.asarray([self.tokenizer(instruction)], dtype=np.int64)
        hidden, pooled = self.text_session.run(None, {"input_ids": ids})
        self.text_cache[instruction] = (hidden, pooled)
        return hidden, pooled

    def sample_noise(self, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """The unit noise of one chunk: {"features": (1, V, T, C, h, w) (absent for the VAE
        encoder), "actions": (1, chunk, action_dim)}, float32."""
        rng = self.rng if rng is None else rng
        noise = {}
        if self.feature_noise_shape is not None:
            fixed = self.fixed_feature_noise
            noise["features"] = (
                fixed
                if fixed is not None
                else rng.standard_normal(self.feature_noise_shape, dtype=np.float32)
            )
        noise["actions"] = rng.standard_normal((1, self.chunk, self.action_dim), dtype=np.float32)
        return noise

    # -- acting -----------------------------------------------------------------------------

    def act(
        self,
        observation: Mapping[str, Any],
        instruction: str,
        noise: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """{camera: uint8 (H, W, 3), "state": (S,)} + instruction -> actions (chunk, action_dim), float32."""
        normalized = self.run_graphs(*self.graph_feeds(observation, instruction, noise))
        return self.action_normalizer.denormalize(normalized[0].astype(np.float64)).astype(np.float32)

    def graph_feeds(
        self,
        observation: Mapping[str, Any],
        instruction: str,
        noise: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The inputs ``act`` gives features.onnx and policy.onnx: (feature feed, policy feed
        without "features", which is the first graph's output)."""
        pixels, state = self.preprocess(observation)
        hidden, pooled = self.text(instruction)
        noise = self.sample_noise() if noise is None else noise
        feature_feed = {"images": pixels}
        if self.feature_noise_shape is not None:
            feature_feed.update(text_hidden=hidden, noise=noise["features"])
        policy_feed = {"lang": pooled, "noise": noise["actions"]}
        if state is not None:
            policy_feed["state"] = state
        return feature_feed, policy_feed

    def run_graphs(
        self, feature_feed: Mapping[str, np.ndarray], policy_feed: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """The normalised action chunk (1, chunk, action_dim) of features.onnx, then policy.onnx
        on its output where the first graph left it: in device memory under the CUDA/TensorRT
        providers. The paper preset's features are ~115 MB a chunk for two views; handing them
        over as numpy would add two PCIe copies per chunk."""
        graphs = self.artifact.manifest.graphs
        feature_binding = self.feature_session.io_binding()
        for name, value in feature_feed.items():
            feature_binding.bind_cpu_input(name, np.ascontiguousarray(value))
        feature_binding.bind_output(graphs.features.output, self.device)
        self.feature_session.run_with_iobinding(feature_binding)
        policy_binding = self.policy_session.io_binding()
        policy_binding.bind_ortvalue_input("features", feature_binding.get_outputs()[0])
        for name, value in policy_feed.items():
            policy_binding.bind_cpu_input(name, np.ascontiguousarray(value))
        policy_binding.bind_output(graphs.policy.output, "cpu")
        self.policy_session.run_with_iobinding(policy_binding)
        return policy_binding.copy_outputs_to_cpu()[0]

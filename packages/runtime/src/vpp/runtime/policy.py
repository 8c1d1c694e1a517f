"""The torch-free policy: an exported artifact run by ONNX Runtime, pre/post-processing in numpy.

``Policy.load(artifact).act({camera: uint8 (H, W, 3), "state": (S,)}, instruction)`` returns the
denormalised action chunk (chunk, action_dim). Two ORT calls per chunk: ``features.onnx`` (VAE +
hooked TVP UNet) then ``policy.onnx`` (Video Former + DiT with the DDIM loop unrolled). Noise is
drawn from a seedable numpy Generator; pass ``noise=`` to reproduce a PyTorch run exactly.

onnxruntime is imported when a Policy is built, not with this module: it comes from the
``vpp-runtime[cpu]`` or ``vpp-runtime[gpu]`` extra, and without it ``Policy.load`` says which to
install instead of failing on ``import onnxruntime``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vpp.runtime import custom_ops
from vpp.runtime.artifact import Artifact
from vpp.runtime.errors import NonFiniteActionsError, ObservationError, UnknownInstructionError
from vpp.runtime.manifest import GraphSpec
from vpp.runtime.tokenizer import ClipTokenizer

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

# Preference order when the caller names no providers; ORT falls back along the list per node.
ACCELERATED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The largest camera image act takes, per side: IMAGE_SIDE_FACTOR times the artifact's input
# size, or MAX_IMAGE_SIDE when that is more. Every common camera mode up to 1920x1080 passes for
# any artifact; the resize's working memory grows with the square of the shorter side (about
# 72 bytes a pixel: a float64 crop, and the taps each output pixel gathers), so 2048x2048 costs
# ~300 MB, while a 4000x4000 frame took 1.3 GB. A larger frame is refused before any copy: have
# the camera driver deliver a smaller one, which is also cheaper to send to a policy server.
MAX_IMAGE_SIDE = 2048
IMAGE_SIDE_FACTOR = 8
# Instructions encoded on the fly (artifacts with a text encoder) are kept for the next chunk in
# a least-recently-used cache of this many; the artifact's own cached instructions always stay.
# An entry is one instruction's CLIP hidden states and pooled embedding (~40 KB for CLIP-B at 20
# tokens), so a full cache is ~10 MB; a robot repeating a few instructions never re-encodes.
TEXT_CACHE_SIZE = 256
# A normalised state beyond this magnitude is far outside the training range ([-1, 1]); named
# when it explains non-finite actions.
FAR_OUT_OF_RANGE = 100.0
# features.onnx's inputs that hold one entry per camera view on axis 1 (the rest, the text, is
# shared by all views).
VIEW_INPUTS = ("images", "noise")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def onnxruntime_module() -> ModuleType:
    """The onnxruntime module; when it is not installed, a ModuleNotFoundError saying how to get it."""
    try:
        import onnxruntime
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.partition(".")[0] != "onnxruntime":
            raise
        raise ModuleNotFoundError(
            "vpp.runtime.Policy runs artifacts with ONNX Runtime, which is not installed: "
            "pip install 'vpp-runtime[cpu]' (onnxruntime), or 'vpp-runtime[gpu]' on a CUDA machine "
            "(onnxruntime-gpu; not both, as they install the same module). A robot PC that only "
            "talks to a policy server needs neither: vpp.runtime.client.PolicyClient",
            name="onnxruntime",
        ) from error
    return onnxruntime


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
    available = set(onnxruntime_module().get_available_providers())
    return [p for p in ACCELERATED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _signature(values: Sequence[Any]) -> dict[str, list[Any]]:
    """{name: shape} of ONNX Runtime's input or output descriptions."""
    return {value.name: list(value.shape) for value in values}


class Policy:
    """An exported artifact run by ONNX Runtime: ``act(observation, instruction)`` -> the
    denormalised action chunk. Loading checks the artifact's hashes and its manifest against
    the graphs ONNX Runtime opened; ``noise=`` reproduces a PyTorch run exactly.

    ``act`` refuses, with :class:`ObservationError` naming the field: a missing camera or
    state, an image that is not uint8 (H, W, 3) or has a side over :attr:`max_image_side`
    (``max(MAX_IMAGE_SIDE, IMAGE_SIDE_FACTOR * image_size)``), a state that is not
    ``state_dim`` finite numbers, an instruction that is not a str. It never returns NaN or
    infinite actions: it raises :class:`NonFiniteActionsError` instead. New instructions (with a
    text encoder) stay encoded in an LRU cache of ``text_cache_size`` entries.

    ``threads``: ONNX Runtime's intra-op threads per graph (None: ORT's default, one per core).
    ``parallel_views``: on the CPU, with two or more cameras and an artifact whose features.onnx
    has a symbolic view axis (``manifest.features.view_axis``), run the feature pass one view per
    call, the calls on parallel threads, each with ``threads // views`` ORT threads (at least
    one). None (default): do so when the thread budget (``threads``, else the cores this process
    may use) is at least 2; True: always (ValueError naming why not, when impossible); False:
    never. The actions are the same either way (the views never mix in the feature pass)."""

    def __init__(
        self,
        artifact: Artifact,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        seed: int | None = None,
        text_cache_size: int = TEXT_CACHE_SIZE,
        parallel_views: bool | None = None,
    ) -> None:
        if not (isinstance(text_cache_size, int) and text_cache_size >= 0):
            raise ValueError(
                f"text_cache_size={text_cache_size!r}; expected an int >= 0 (0: encode every time)"
            )
        ort = onnxruntime_module()
        self.artifact = artifact
        manifest = artifact.manifest
        self.providers = list(providers) if providers is not None else default_providers()
        graphs = manifest.graphs
        self.threads = threads
        self.parallel_views = self._parallel_views(parallel_views)
        views = len(manifest.cameras)
        options = self._session_options(threads)
        self.custom_ops_library = self._register_custom_ops(options, [graphs.features, graphs.policy])
        view_axis = manifest.features.view_axis
        if self.parallel_views:
            # one view per call, each call on its own share of the threads
            feature_options = self._session_options(max(1, self._thread_budget() // views))
            feature_options.add_free_dimension_override_by_name(view_axis, 1)
        else:
            feature_options = self._session_options(threads)
            if view_axis is not None:
                # all views in one call: the symbolic axis fixed, so ORT plans the graph as static
                feature_options.add_free_dimension_override_by_name(view_axis, views)
        if self.custom_ops_library is not None:
            feature_options.register_custom_ops_library(str(self.custom_ops_library))
        self.feature_session = ort.InferenceSession(
            str(artifact.path(graphs.features.file)), feature_options, providers=self.providers
        )
        self._view_pool = (
            ThreadPoolExecutor(views, thread_name_prefix="vpp-view") if self.parallel_views else None
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
                    name,
                    _signature(session.get_inputs()),
                    _signature(session.get_outputs()),
                    views_per_call=1 if name == "features" and self.parallel_views else None,
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
        self.max_image_side = max(MAX_IMAGE_SIDE, IMAGE_SIDE_FACTOR * self.image_size)
        # The artifact's instructions, then the least recently used first of those encoded here.
        self.text_cache = artifact.text_cache()
        self.text_cache_size = text_cache_size
        self.encoded_text: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.feature_noise_shape = manifest.features.noise_shape
        self.fixed_feature_noise = artifact.fixed_feature_noise()
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _session_options(threads: int | None) -> ort.SessionOptions:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        # Idle ORT workers block instead of spinning. Each session has its own pool, and act runs
        # two or three sessions in turn: a pool left spinning after its graph takes the core the
        # next graph's threads need (small preset, 2 threads: act 118 ms with spinning against
        # 67 without, its graphs alone summing to 78), and on a robot PC the core the robot
        # stack needs between chunks.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _thread_budget(self) -> int:
        """The cores act may use: ``threads``, or those this process may run on."""
        if self.threads is not None:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    def _parallel_views(self, wanted: bool | None) -> bool:
        """Whether features.onnx runs one view per call, the views on parallel threads (see
        ``parallel_views`` in the class docstring); raises ValueError when asked for and impossible."""
        manifest = self.artifact.manifest
        reasons = []
        if len(manifest.cameras) < 2:
            reasons.append(f"the artifact has one camera ({manifest.cameras[0]!r})")
        if manifest.features.view_axis is None:
            reasons.append(
                "its features.onnx has a fixed view axis (exported before vpp-export gave it a symbolic "
                "one): re-export it"
            )
        if self.providers[0] != "CPUExecutionProvider":
            reasons.append(f"it runs on {self.providers[0]}, where all views go in one call")
        if wanted and reasons:
            raise ValueError(f"parallel_views=True, but {'; '.join(reasons)}")
        if wanted is None:
            return not reasons and self._thread_budget() >= 2
        return bool(wanted)

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
        text_cache_size: int = TEXT_CACHE_SIZE,
        parallel_views: bool | None = None,
    ) -> Policy:
        """Opens an artifact folder (checking its hashes unless ``verify=False``) and builds one
        ORT session per graph. ``providers=None``: TensorRT/CUDA when this ORT has them, else CPU."""
        onnxruntime_module()  # before reading a multi-GB artifact, say what is missing
        return cls(
            Artifact.open(artifact, verify=verify),
            providers=providers,
            threads=threads,
            seed=seed,
            text_cache_size=text_cache_size,
            parallel_views=parallel_views,
        )

    @property
    def instructions(self) -> list[str]:
        """The instructions act answers without the text encoder: the artifact's, then those
        encoded here that are still in the cache."""
        return [*self.text_cache, *self.encoded_text]

    # -- inputs -----------------------------------------------------------------------------

    def preprocess(self, observation: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """-> (pixels (1, V, 3, S, S) float32 in [-1, 1], normalised state (1, S) float32 or None)."""
        if not isinstance(observation, Mapping):
            raise ObservationError(
                f"observation is of type {type(observation).__name__}; expected a mapping of camera names "
                f"{self.cameras} (and 'state') to arrays"
            )
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
            if max(frame.shape[:2]) > self.max_image_side:
                raise ObservationError(
                    f"camera {camera!r}: image of {frame.shape[1]}x{frame.shape[0]} pixels; this policy "
                    f"resizes to {self.image_size}x{self.image_size} and takes at most {self.max_image_side} "
                    "pixels a side (resizing a larger frame costs memory in the square of its size): "
                    "set the camera to a smaller mode, or downscale it before act"
                )
            images.append(resize_frames(frame[None], self.image_size)[0])
        state = None
        if self.state_dim is not None:
            if "state" not in observation:
                raise ObservationError(
                    f"observation has no 'state'; this policy needs {self.state_dim} values"
                )
            with np.errstate(over="ignore"):
                state = self.state_normalizer.normalize(self._state_values(observation["state"]))
            if np.abs(state).max() > _FLOAT32_MAX:
                raise ObservationError(
                    f"state {observation['state']!r:.200} normalises to {state!r:.200}, beyond float32's range; "
                    f"the training data's states normalise into [-1, 1] (check the state's units and order)"
                )
            state = state[None].astype(np.float32)
        return np.stack(images)[None], state

    def _state_values(self, state: Any) -> np.ndarray:
        """The observation's state as float64 (state_dim,), or ObservationError naming what is wrong."""
        expected = f"expected {self.state_dim} finite numbers (a float array or a list of floats)"
        try:
            raw = np.asarray(state)
        except ValueError as error:  # ragged nesting
            raise ObservationError(f"state {state!r:.200} is not an array ({error}); {expected}") from None
        if raw.dtype.kind not in "biuf":
            raise ObservationError(f"state {state!r:.200} holds values of dtype {raw.dtype}; {expected}")
        raw = raw.astype(np.float64)
        if raw.shape != (self.state_dim,) or not np.isfinite(raw).all():
            raise ObservationError(f"state {raw!r:.200} of shape {raw.shape}; {expected}")
        return raw

    def text(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """(CLIP hidden states (1, L, D), pooled embedding (1, P)); new instructions go through
        the text-encoder graph and join an LRU cache of ``text_cache_size`` entries."""
        if not isinstance(instruction, str):
            raise ObservationError(
                f"instruction {instruction!r:.200} is of type {type(instruction).__name__}; expected a str, "
                f"e.g. {self.instructions[0]!r}"
            )
        if instruction in self.text_cache:
            return self.text_cache[instruction]
        if instruction in self.encoded_text:
            self.encoded_text.move_to_end(instruction)
            return self.encoded_text[instruction]
        if self.text_session is None:
            raise UnknownInstructionError(
                f"instruction {instruction!r} is not in this artifact's text cache and the artifact has no "
                f"text encoder; it holds {self.instructions} (re-export with --instruction to add one)"
            )
        ids = np.asarray([self.tokenizer(instruction)], dtype=np.int64)
        hidden, pooled = self.text_session.run(None, {"input_ids": ids})
        encoded = (hidden, pooled)
        if self.text_cache_size > 0:
            self.encoded_text[instruction] = encoded
            while len(self.encoded_text) > self.text_cache_size:
                self.encoded_text.popitem(last=False)
        return encoded

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
        """{camera: uint8 (H, W, 3), "state": (S,)} + instruction -> actions (chunk, action_dim),
        float32, every one finite (else :class:`NonFiniteActionsError`)."""
        feature_feed, policy_feed = self.graph_feeds(observation, instruction, noise)
        normalized = self.run_graphs(feature_feed, policy_feed)
        with np.errstate(over="ignore", invalid="ignore"):
            actions = self.action_normalizer.denormalize(normalized[0].astype(np.float64)).astype(np.float32)
        if not np.isfinite(actions).all():
            raise NonFiniteActionsError(self._explain_non_finite(actions, feature_feed, policy_feed), actions)
        return actions

    def _explain_non_finite(
        self,
        actions: np.ndarray,
        feature_feed: Mapping[str, np.ndarray],
        policy_feed: Mapping[str, np.ndarray],
    ) -> str:
        bad = ~np.isfinite(actions)
        reasons = []
        for graph, feed in (("features", feature_feed), ("policy", policy_feed)):
            for name, value in feed.items():
                count = int((~np.isfinite(value)).sum())
                if count:
                    reasons.append(f"{graph}.onnx's input {name!r} holds {count} NaN or infinite values")
        state = policy_feed.get("state")
        if state is not None and np.abs(state).max() > FAR_OUT_OF_RANGE:
            reasons.append(
                f"the state normalises to {np.abs(state).max():.3g} at most, far outside the training "
                "range ([-1, 1]): check its units and order"
            )
        explanation = "; ".join(reasons) or (
            "every input is finite and the state in range, so the graphs overflowed: "
            "check the artifact (vpp-export's parity check) on this observation"
        )
        return (
            f"{int(bad.sum())} of the {bad.size} values in the action chunk are NaN or infinite, so the "
            f"policy withholds it: {explanation}"
        )

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
        policy_binding = self.policy_session.io_binding()
        if self.parallel_views:
            policy_binding.bind_cpu_input("features", self.features_by_view(feature_feed))
        else:
            feature_binding = self.feature_session.io_binding()
            for name, value in feature_feed.items():
                feature_binding.bind_cpu_input(name, np.ascontiguousarray(value))
            feature_binding.bind_output(graphs.features.output, self.device)
            self.feature_session.run_with_iobinding(feature_binding)
            policy_binding.bind_ortvalue_input("features", feature_binding.get_outputs()[0])
        for name, value in policy_feed.items():
            policy_binding.bind_cpu_input(name, np.ascontiguousarray(value))
        policy_binding.bind_output(graphs.policy.output, "cpu")
        self.policy_session.run_with_iobinding(policy_binding)
        return policy_binding.copy_outputs_to_cpu()[0]

    def run_features(self, feature_feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """features.onnx's output for the feed of all views (1, V, ...), as a numpy array, as
        ``act`` computes it: in one call, or one view per call (``parallel_views``)."""
        if self.parallel_views:
            return self.features_by_view(feature_feed)
        return self.feature_session.run(None, dict(feature_feed))[0]

    def features_by_view(self, feature_feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """features.onnx's output for all views (1, V, ...), each view computed by its own call
        on its own thread (ONNX Runtime releases the GIL while it runs): the views are
        independent through the whole feature pass, and two single-threaded calls on two cores
        measured 1.8-1.9x one call, where ORT's own second thread inside one call gave 1.1-1.2x
        (docs/runtime.md)."""
        views = len(self.cameras)
        per_view = [
            {
                name: np.ascontiguousarray(value[:, v : v + 1] if name in VIEW_INPUTS else value)
                for name, value in feature_feed.items()
            }
            for v in range(views)
        ]
        outputs = self._view_pool.map(lambda feed: self.feature_session.run(None, feed)[0], per_view)
        return np.concatenate(list(outputs), axis=1)

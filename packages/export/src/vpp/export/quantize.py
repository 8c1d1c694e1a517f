"""An int8 ``features.onnx``: ONNX Runtime's own quantisation tools, calibrated on real frames.

The features graph (VAE encode + the hooked UNet) is nearly all of a chunk's time on the CPU, and
it runs at the fp32 arithmetic limit, so only fewer or cheaper multiply-adds make it faster. The
recipe is the one a probe measured fastest on this CPU (AVX512-VNNI; notes/cpu-int8-here.md),
the *hybrid*:

- every ``Conv``: static QDQ, uint8 activations (per tensor, MinMax ranges from calibration
  frames) and int8 weights per output channel (ORT then runs its int8 convolution kernels);
- every ``MatMul`` and ``Gemm`` with a constant weight: dynamic int8 (weights per channel,
  activation ranges taken per call), which needs no calibration.

int8 activations measured slower than fp32 here, and so did dynamic convolutions (ConvInteger).

Calibration frames come from a LeRobot v3 dataset (``vpp.data.lerobot``): the frames of the
policy's cameras and the episode's task as the instruction, turned into the feature graph's
inputs by the fp32 artifact's own ``vpp.runtime.Policy`` (its preprocessing, text and feature
noise: what the deployed policy feeds the graph), so the ranges are those the graph meets on the
robot. Frames are spread evenly over the whole dataset; a share of them is held out of
calibration to measure the result.

Sensitive nodes stay fp32, chosen by measurement: ORT's QDQ debugging tools give each quantised
convolution input's signal-to-quantisation-noise ratio on a calibration frame; the
``candidates`` lowest are each kept fp32 in turn, the action chunks the head makes of the features
compared with fp32's on the held-out frames (same noise). The graph kept is the one with the
lowest mean action error among: every Conv int8, each candidate alone in fp32, and the
``keep_fp32`` candidates that helped most, together (their gains need not add up: one held-out
frame whose chunk flips can dominate the mean). Judged by the feature cosine, as before
2026-12-03, the gains were ~1e-7: the cosine cannot see what moves the head.
MatMul/Gemm are not candidates: dynamic quantisation alone kept the feature cosine at 0.9998.
On the small preset (random weights, 2 views) the noisiest inputs were the VAE encoder's
convolutions, and keeping two of them fp32 raised the worst held-out cosine from 0.99749 to
0.99764; each candidate costs a quantisation pass (~30 s there), the search most of the export.

The graph holds ``vpp.fused`` custom ops, which neither ONNX's shape inference nor a plain ORT
session knows. :func:`fused_op_schemas` tells ONNX that their outputs are typed and shaped as
their first inputs (without that, the tensors after the first GroupNorm have no type and static
quantisation cannot compute bias scales), and every session here registers vpp-runtime's
custom-op library.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from vpp.export.graph_passes import FUSED_DOMAIN
from vpp.runtime.errors import ObservationError, UnknownInstructionError

logger = logging.getLogger(__name__)

STATIC_OP_TYPES = ("Conv",)
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
# The fused ops and their input counts; each output is typed and shaped as its first input.
_FUSED_OPS = {"GroupNorm": (3, {"num_groups": "INT", "epsilon": "FLOAT", "silu": "INT"}), "GeGLU": (2, {})}
DEFAULT_CALIBRATION_FRAMES = 32
DEFAULT_HELD_OUT_FRAMES = 8
DEFAULT_CANDIDATES = 4
DEFAULT_KEEP_FP32 = 2
STATE_KEY = "observation.state"


class QuantizationError(RuntimeError):
    """The features graph cannot be quantised as asked."""


class CalibrationDataError(QuantizationError, ValueError):
    """The calibration data cannot serve this policy (missing, empty, wrong cameras, too few frames)."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``vpp-export --quantize int8`` was asked for. ``calibration_data`` is
    ``DATASET[#KEY,...]``: a LeRobot v3 folder and, optionally, one video key (or its last
    component) per policy camera in the policy's camera order; without them each camera is the
    video key of its name or ending in ``.<camera>``. Of the ``candidates`` convolutions measured
    (0: no search), at most ``keep_fp32`` stay fp32."""

    calibration_data: str
    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES
    held_out_frames: int = DEFAULT_HELD_OUT_FRAMES
    candidates: int = DEFAULT_CANDIDATES
    keep_fp32: int = DEFAULT_KEEP_FP32
    seed: int = 0
    # "hybrid": static Conv + dynamic MatMul/Gemm; "dynamic": MatMul/Gemm only (no calibration:
    # the frames are only measured on). The static convolutions' per-tensor uint8 activations
    # cost the head most: see docs/main-job.md.
    scheme: Literal["hybrid", "dynamic"] = "hybrid"

    def __post_init__(self) -> None:
        if self.scheme not in ("hybrid", "dynamic"):
            raise CalibrationDataError(f"scheme={self.scheme!r}; expected 'hybrid' or 'dynamic'")
        for name, least in (
            ("calibration_frames", 1),
            ("held_out_frames", 1),
            ("candidates", 0),
            ("keep_fp32", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CalibrationDataError(f"{name}={value!r}; expected an integer >= {least}")


@dataclass(frozen=True)
class CalibrationSource:
    """A checked calibration dataset: its folder, the video key of each policy camera, the state
    column (None: the state normaliser's midpoint is fed) and how many frames it holds."""

    dataset: Path
    video_keys: dict[str, str]
    state_key: str | None
    total_frames: int


def split_calibration_spec(spec: str) -> tuple[Path, list[str] | None]:
    """``DATASET[#KEY,...]`` -> (folder, keys or None)."""
    path, sep, keys = str(spec).partition("#")
    if not path:
        raise CalibrationDataError(
            f"calibration data {spec!r} names no dataset folder; expected DATASET[#KEY,...]"
        )
    if not sep:
        return Path(path), None
    names = [key.strip() for key in keys.split(",")]
    if not all(names):
        raise CalibrationDataError(
            f"calibration data {spec!r}: an empty camera key; expected DATASET#KEY[,KEY...]"
        )
    return Path(path), names


def _match_key(dataset, name: str) -> str | None:
    if name in dataset.video_keys:
        return name
    matches = [key for key in dataset.video_keys if key.split(".")[-1] == name]
    return matches[0] if len(matches) == 1 else None


def open_calibration_source(
    options: QuantizeOptions, cameras: Sequence[str], state_dim: int | None
) -> CalibrationSource:
    """Checks the calibration dataset against the policy before any export work: the folder is a
    LeRobot v3 dataset with frames, every camera has a video, and there are enough frames for
    calibration plus held-out measurement. Raises :class:`CalibrationDataError` naming the fix."""
    from vpp.data.lerobot import LeRobotDataset, LeRobotFormatError

    folder, keys = split_calibration_spec(options.calibration_data)
    if not folder.is_dir():
        raise CalibrationDataError(
            f"calibration dataset {folder} is not a folder; --calibration-data needs a LeRobot v3 dataset "
            "recorded with the policy's cameras"
        )
    try:
        dataset = LeRobotDataset(folder)
    except (LeRobotFormatError, FileNotFoundError, KeyError, ValueError) as error:
        raise CalibrationDataError(
            f"calibration dataset {folder} is not a readable LeRobot v3 dataset: {error}"
        ) from error
    if dataset.num_frames == 0:
        raise CalibrationDataError(
            f"calibration dataset {folder} holds no frames ({dataset.num_episodes} episodes); record some first"
        )
    if keys is not None and len(keys) != len(cameras):
        raise CalibrationDataError(
            f"calibration data {options.calibration_data!r} names {len(keys)} camera keys {keys}; the policy has "
            f"{len(cameras)} cameras {list(cameras)}: give one video key per camera, in that order"
        )
    video_keys = {}
    for index, camera in enumerate(cameras):
        wanted = camera if keys is None else keys[index]
        key = _match_key(dataset, wanted)
        if key is None:
            raise CalibrationDataError(
                f"calibration dataset {folder} has no video for camera {camera!r} (looked for {wanted!r}); its "
                f"video keys are {dataset.video_keys}: name one per policy camera, e.g. "
                f"{folder}#{','.join(dataset.video_keys[:1] * len(cameras))}"
            )
        video_keys[camera] = key
    needed = options.calibration_frames + options.held_out_frames
    if dataset.num_frames < needed:
        raise CalibrationDataError(
            f"calibration dataset {folder} has {dataset.num_frames} frames; calibration needs "
            f"{options.calibration_frames} + {options.held_out_frames} held out = {needed}: lower "
            "--calibration-frames or record more"
        )
    state_key = None
    if state_dim is not None:
        feature = dataset.features.get(STATE_KEY)
        if feature is not None and list(feature.get("shape", [])) == [state_dim]:
            state_key = STATE_KEY
        else:
            logger.warning(
                "calibration dataset %s has no %r of width %d: the held-out actions use the state normaliser's "
                "midpoint",
                folder,
                STATE_KEY,
                state_dim,
            )
    return CalibrationSource(folder, video_keys, state_key, dataset.num_frames)


@dataclass(frozen=True)
class CalibrationFrame:
    """One dataset frame as the runtime takes it: {camera: uint8 (H, W, 3), "state"?} + task."""

    observation: dict[str, np.ndarray]
    task: str
    where: str


def read_frames(
    source: CalibrationSource, count: int, state_midpoint: np.ndarray | None
) -> list[CalibrationFrame]:
    """``count`` frames spread evenly over the whole dataset (every episode's share decoded in one go)."""
    from vpp.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(source.dataset)
    picks = np.unique(np.linspace(0, source.total_frames - 1, count).round().astype(np.int64))
    frames: list[CalibrationFrame] = []
    start = 0
    for episode in dataset.episodes():
        local = picks[(picks >= start) & (picks < start + episode.length)] - start
        start += episode.length
        if not len(local):
            continue
        images = {camera: episode.read_frames(key, local) for camera, key in source.video_keys.items()}
        states = None if source.state_key is None else episode.column(source.state_key)
        for row, index in enumerate(local):
            observation = {camera: video[row] for camera, video in images.items()}
            if states is not None:
                observation["state"] = np.asarray(states[index], dtype=np.float64)
            elif state_midpoint is not None:
                observation["state"] = state_midpoint
            frames.append(
                CalibrationFrame(observation, episode.task or "", f"episode {episode.index} frame {index}")
            )
    return frames


class _Feeds:
    """ORT's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return dict(self.feeds[self.position - 1])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (dict(feed) for feed in self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


@contextlib.contextmanager
def fused_op_schemas() -> Iterator[None]:
    """Registers ONNX schemas for the ``vpp.fused`` ops for the duration: outputs typed and shaped
    as the first input, so shape inference (and ORT's quantiser, which relies on it) sees past them."""
    from onnx.defs import OpSchema

    def same_as_first_input(context) -> None:
        kind = context.get_input_type(0)
        if kind is not None:
            context.set_output_type(0, kind)

    registered = []
    for name, (inputs, attributes) in _FUSED_OPS.items():
        if onnx.defs.has(name, FUSED_DOMAIN):
            continue
        schema = OpSchema(
            name,
            FUSED_DOMAIN,
            1,
            inputs=[OpSchema.FormalParameter(f"input{i}", "T") for i in range(inputs)],
            outputs=[OpSchema.FormalParameter("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
            attributes=[
                OpSchema.Attribute(a, getattr(OpSchema.AttrType, kind), "") for a, kind in attributes.items()
            ],
        )
        schema.set_type_and_shape_inference_function(same_as_first_input)
        onnx.defs.register_schema(schema)
        registered.append(name)
    try:
        yield
    finally:
        for name in registered:
            onnx.defs.deregister_schema(name, 1, FUSED_DOMAIN)


class _OrtQuantizerChatter(logging.Filter):
    """ORT's quantiser logs on the root logger: a line per tensor it leaves unquantised (thousands
    for a UNet) and, for the dynamic pass over the static pass's output, advice to pre-process
    (done) and a warning that the model is already quantised (by design: the hybrid's second
    pass). Set on the root logger itself, the filter sees only what is logged there directly,
    never the records of named loggers (vpp's) passing through."""

    EXPECTED = ("consider to run pre-processing", "check if the model is already quantized")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return record.levelno >= logging.WARNING and not any(text in message for text in self.EXPECTED)


@contextlib.contextmanager
def _quiet_ort_root_logging() -> Iterator[None]:
    chatter = _OrtQuantizerChatter()
    logging.getLogger().addFilter(chatter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(chatter)


def _session_options(library: Path | None, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(str(library))
    return options


def cpu_session(path: Path, library: Path | None, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), _session_options(library, threads), providers=["CPUExecutionProvider"]
    )


def calibrate(
    model: Path, feeds: Sequence[Mapping[str, np.ndarray]], library: Path | None, work: Path
) -> Path:
    """MinMax ranges of every Conv's tensors over ``feeds``, in ORT's calibration-cache JSON;
    the calibration session registers the custom-op library (ORT's own does not)."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, save_tensors_data

    class _CustomOpsCalibrater(MinMaxCalibrater):
        def create_inference_session(self) -> None:
            import onnxruntime as ort

            options = _session_options(library)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.infer_session = ort.InferenceSession(
                self.augmented_model_path, options, providers=self.execution_providers
            )

    calibrater = _CustomOpsCalibrater(
        model, op_types_to_calibrate=list(STATIC_OP_TYPES), augmented_model_path=str(work / "augmented.onnx")
    )
    calibrater.augment_graph()
    calibrater.create_inference_session()
    calibrater.collect_data(_Feeds(feeds))
    cache = work / "calibration.json"
    save_tensors_data(calibrater.compute_data(), cache)
    (work / "augmented.onnx").unlink(missing_ok=True)
    return cache


def quantize_graph(model: Path, out: Path, cache: Path | None, fp32_nodes: Sequence[str], work: Path) -> None:
    """The hybrid recipe on ``model`` (pre-processed): static QDQ Convs from the calibration
    ``cache``, then dynamic MatMul/Gemm; ``fp32_nodes`` stay as they are. Without a ``cache``,
    the dynamic pass alone."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    static = work / "static.onnx"
    if cache is None:
        shutil.copyfile(model, static)
    else:
        quantize_static(
            str(model),
            str(static),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(fp32_nodes),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )
    quantize_dynamic(
        str(static),
        str(out),
        op_types_to_quantize=list(DYNAMIC_OP_TYPES),
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(fp32_nodes),
        # the tensors after a custom op carry the type fused_op_schemas inferred, but quantize_dynamic
        # runs its own inference on the static graph, where the QDQ nodes hide some: they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(np.clip(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30), -1.0, 1.0))


# what a graph's features become on the way to the robot: (held-out frame, features) -> the
# normalised action chunk policy.onnx makes of them (the same noise for every graph)
ActionsOf = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class Agreement:
    """How a quantised features graph agrees with fp32 on held-out frames: per frame, the cosine of
    the features and, where the head was given, the max-abs difference of the normalised action
    chunk (same noise). The features' cosine says little about what the head reads: it
    standardises each element by its training spread, and the features vary from frame to frame
    by a few percent of their size, so an error the cosine puts at 1e-4 can move the actions by a
    third of their range (docs/quantization.md). The search therefore judges by the actions."""

    feature_cosines: list[float]
    action_errors: list[float] | None = None

    @property
    def worst_cosine(self) -> float:
        return min(self.feature_cosines)

    @property
    def mean_action_error(self) -> float | None:
        return None if self.action_errors is None else float(np.mean(self.action_errors))

    @property
    def loss(self) -> float:
        """What the fp32-node search lowers: the mean action error, else 1 - the worst cosine."""
        error = self.mean_action_error
        return 1.0 - self.worst_cosine if error is None else error


def agreement(
    session,
    reference: Sequence[np.ndarray],
    feeds: Sequence[Mapping[str, np.ndarray]],
    actions: ActionsOf | None = None,
    reference_actions: Sequence[np.ndarray] | None = None,
) -> Agreement:
    features = [session.run(None, dict(feed))[0] for feed in feeds]
    cosines = [cosine(f, ref) for f, ref in zip(features, reference)]
    if actions is None or reference_actions is None:
        return Agreement(cosines)
    errors = [
        float(np.abs(actions(index, f) - expected).max())
        for index, (f, expected) in enumerate(zip(features, reference_actions))
    ]
    return Agreement(cosines, errors)


def conv_input_noise(
    static_model: Path, fp32_model: Path, feed: Mapping[str, np.ndarray], library: Path | None, work: Path
) -> dict[str, float]:
    """{Conv node: SQNR in dB of its quantised input activation} on one frame, with ORT's QDQ
    debugging tools (each Q->DQ pair's input against its output in the static QDQ graph)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented = work / "debug.onnx"
    modify_model_output_intermediate_tensors(
        str(static_model), str(augmented), ["QuantizeLinear", "DequantizeLinear"]
    )
    activations = collect_activations(str(augmented), _Feeds([feed]), _session_options(library))
    errors = {
        name: compute_signal_to_quantization_noice_ratio(pair["pre_qdq"], pair["post_qdq"])
        for name, pair in create_activation_matching(activations).items()
    }
    augmented.unlink(missing_ok=True)
    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    noise: dict[str, float] = {}
    for node in graph.node:
        if node.op_type in STATIC_OP_TYPES and node.input[0] in errors:
            noise[node.name] = float(errors[node.input[0]])
    return noise


def quantized_node_counts(fp32_model: Path, quantized_model: Path) -> dict[str, int]:
    """{op type: how many of the fp32 graph's nodes of that type run in int8} (Convs fed a
    dequantised weight; MatMul/Gemm no longer float in the quantised graph)."""
    before = Counter(node.op_type for node in onnx.load(str(fp32_model), load_external_data=False).graph.node)
    graph = onnx.load(str(quantized_model), load_external_data=False).graph
    after = Counter(node.op_type for node in graph.node)
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    counts = {"Conv": sum(node.op_type == "Conv" and node.input[1] in dequantized for node in graph.node)}
    for op in DYNAMIC_OP_TYPES:
        counts[op] = before[op] - after[op]
    return counts


@dataclass(frozen=True)
class QuantizationResult:
    """What :func:`quantize_features` did and measured."""

    node_counts: dict[str, int]
    fp32_nodes: tuple[str, ...]
    # per candidate: how much keeping it fp32 lowered the loss of ``all_int8``
    sensitivity: dict[str, float]
    held_out: Agreement
    # every Conv int8 (the search's starting point)
    all_int8: Agreement


def quantize_features(
    fp32_model: Path,
    out: Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    held_out: Sequence[Mapping[str, np.ndarray]],
    library: Path | None,
    candidates: int = DEFAULT_CANDIDATES,
    keep_fp32: int = DEFAULT_KEEP_FP32,
    threads: int | None = None,
    static: bool = True,
    actions: ActionsOf | None = None,
) -> QuantizationResult:
    """Writes the int8 hybrid of ``fp32_model`` to ``out`` (calibrated on ``calibration`` feeds),
    keeping in fp32 the ``keep_fp32`` most harmful of the ``candidates`` noisiest Convs, as
    measured on the ``held_out`` feeds by the action chunks the head makes of the features
    (``actions``: held-out index, features -> normalised chunk), or without a head by the feature
    cosine (see the module docstring). ``static=False``: the dynamic MatMul/Gemm pass alone (no
    calibration, no search)."""
    from onnxruntime.quantization import quant_pre_process

    reference_session = cpu_session(fp32_model, library, threads)
    reference = [reference_session.run(None, dict(feed))[0] for feed in held_out]
    del reference_session
    reference_actions = None if actions is None else [actions(i, f) for i, f in enumerate(reference)]
    with (
        tempfile.TemporaryDirectory(prefix="vpp-int8-") as tmp,
        fused_op_schemas(),
        _quiet_ort_root_logging(),
    ):
        work = Path(tmp)
        prepared = work / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        cache = calibrate(prepared, calibration, library, work) if static else None

        def measure(fp32_nodes: Sequence[str], path: Path) -> Agreement:
            quantize_graph(prepared, path, cache, fp32_nodes, work)
            return agreement(
                cpu_session(path, library, threads), reference, held_out, actions, reference_actions
            )

        baseline = measure((), out)
        logger.info(
            "int8, every Conv/MatMul/Gemm: worst held-out feature cosine %.5f, mean action error %s",
            baseline.worst_cosine,
            "n/a" if baseline.mean_action_error is None else f"{baseline.mean_action_error:.4f}",
        )
        # gain: how much lower the loss is with the node kept fp32 (action error, or cosine)
        sensitivity: dict[str, float] = {}
        # the best graph so far: (loss, fp32 nodes, agreement); `out` holds the baseline's
        best: tuple[float, tuple[str, ...], Agreement] = (baseline.loss, (), baseline)
        if static and candidates and keep_fp32:
            noise = conv_input_noise(work / "static.onnx", prepared, calibration[0], library, work)
            for name in sorted(noise, key=noise.get)[:candidates]:
                measured = measure([name], work / "candidate.onnx")
                sensitivity[name] = baseline.loss - measured.loss
                logger.info(
                    "  %s (input SQNR %.1f dB) kept fp32: loss %+.5f", name, noise[name], -sensitivity[name]
                )
                if measured.loss < best[0]:
                    best = (measured.loss, (name,), measured)
                    shutil.copyfile(work / "candidate.onnx", work / "best.onnx")
        helpful = tuple(
            name
            for name in sorted(sensitivity, key=sensitivity.get, reverse=True)[:keep_fp32]
            if sensitivity[name] > 0
        )
        if len(helpful) > 1:
            # the exclusions' gains need not add up (a loss dominated by one frame whose chunk flips
            # is not additive): the set competes with the best single node and the baseline
            together = measure(helpful, work / "together.onnx")
            if together.loss < best[0]:
                best = (together.loss, helpful, together)
                shutil.copyfile(work / "together.onnx", work / "best.onnx")
        _, fp32_nodes, final = best
        if fp32_nodes:
            shutil.copyfile(work / "best.onnx", out)
    return QuantizationResult(
        node_counts=quantized_node_counts(fp32_model, out),
        fp32_nodes=fp32_nodes,
        sensitivity=sensitivity,
        held_out=final,
        all_int8=baseline,
    )


def graph_feeds(
    runtime, frames: Sequence[CalibrationFrame], seed: int
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], list[str]]:
    """(features.onnx feeds, policy.onnx feeds without "features", instructions) of ``frames`` as
    the fp32 artifact's ``vpp.runtime.Policy`` makes them in ``act``: its preprocessing, its text
    and its own feature noise (drawn from ``seed``, or the artifact's fixed noise). The instruction
    is the frame's task where the artifact can encode it, else the artifact's first instruction."""
    rng = np.random.default_rng(seed)
    feature_feeds, policy_feeds, instructions = [], [], []
    fallback = runtime.instructions[0]
    for frame in frames:
        instruction = frame.task
        try:
            runtime.text(instruction)
        except (UnknownInstructionError, ObservationError):
            instruction = fallback
        feature_feed, policy_feed = runtime.graph_feeds(
            frame.observation, instruction, runtime.sample_noise(rng)
        )
        feature_feeds.append(feature_feed)
        policy_feeds.append(policy_feed)
        instructions.append(instruction)
    return feature_feeds, policy_feeds, instructions

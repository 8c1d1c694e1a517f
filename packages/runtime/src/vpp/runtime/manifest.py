"""The artifact's manifest, the one contract between export (``vpp-export``) and this runtime.

Frozen dataclasses describe everything ``manifest.json`` holds; the exporter writes it with
:meth:`Manifest.write` and the runtime reads it with :meth:`Manifest.read`, so both sides go
through the same code. Every value is checked when a dataclass is built (types, finite numbers,
consistent shapes), whether by the exporter or from JSON; a bad manifest raises a
:class:`ManifestError` subclass whose ``field`` is the dotted path of the offending entry
(``action.normalizer.low[2]``). :meth:`Manifest.check_graph` compares the manifest with an ONNX
graph's input and output names and shapes, which ONNX Runtime reports when it opens the graph.

The manifest's own sha256 is kept beside it in ``manifest.json.sha256`` (``sha256sum -c``
format) and checked on every read; the manifest holds the sha256 of every other file.
Format version 2 introduced the typed manifest and its sidecar: older artifacts must be
exported again. Within a version, a field may be added as optional (a dataclass default): a
manifest without it still loads, and it is written only when set, so an artifact that does not
use it reads in runtimes that predate it (``quantization``, for an int8 features graph).

Only numpy and the standard library: this module runs on a robot PC without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from vpp.runtime.custom_ops import DOMAIN as CUSTOM_OPS_DOMAIN

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.json.sha256"
REEXPORT = "export the policy again with this version's vpp-export"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ValueError):
    """An artifact folder that cannot be used as it is."""


class ArtifactFileMissingError(ArtifactError, FileNotFoundError):
    """A file the artifact needs is not there."""


class ArtifactHashMismatchError(ArtifactError):
    """A file's content differs from the sha256 recorded at export."""


class UnsupportedFormatVersionError(ArtifactError):
    """The manifest was written by an exporter this runtime does not understand."""


class ManifestError(ArtifactError):
    """A manifest that does not describe a usable artifact; ``field`` is the dotted path of the
    offending entry ("" for the manifest as a whole)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        return f"manifest field {self.field!r}: {self.problem}" if self.field else f"manifest: {self.problem}"

    def within(self, prefix: str) -> ManifestError:
        """The same error, its field seen from the record that holds ``prefix``."""
        if not prefix:
            return self
        return type(self)(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


class ManifestSyntaxError(ManifestError):
    """The manifest is not a JSON object."""


class ManifestMissingKeyError(ManifestError):
    """A key the manifest format requires is absent."""


class ManifestUnknownKeyError(ManifestError):
    """A key the manifest format does not have: a typo, or a newer exporter's field."""


class ManifestTypeError(ManifestError):
    """A value of the wrong JSON type (a string for a number, a list for an object...)."""


class ManifestValueError(ManifestError):
    """A value of the right type that is out of range or inconsistent with another field."""


class ManifestGraphMismatchError(ManifestError):
    """The manifest disagrees with an ONNX graph's input or output names or shapes."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    tuple: "list",
    dict: "object",
}


def _describe(value: Any) -> str:
    """A value as JSON would call it: ``null``, ``string 'x'``, ``list [1]``..."""
    return "null" if value is None else f"{_JSON_TYPES.get(type(value), type(value).__name__)} {value!r}"


def _item(name: str, key: object) -> str:
    return f"{name}[{key!r}]"


def _check_type(value: Any, hint: Any, name: str) -> None:
    """Raises ManifestTypeError / ManifestValueError when ``value`` does not fit ``hint``
    (the annotation of a manifest field), naming ``name``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [arg for arg in args if arg is not type(None)]
        if value is None:
            raise ManifestTypeError(name, "null; expected a value")
        _check_type(value, options[0], name)  # manifest unions are `T | None` only
    elif origin is Literal:
        if value not in args:
            raise ManifestValueError(name, f"{value!r}; expected one of {list(args)}")
    elif origin is tuple:
        if not isinstance(value, tuple):
            raise ManifestTypeError(name, f"{_describe(value)}; expected a list")
        for index, element in enumerate(value):
            _check_type(element, args[0], f"{name}[{index}]")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ManifestTypeError(name, f"{_describe(value)}; expected an object")
        for key, element in value.items():
            if not isinstance(key, str):
                raise ManifestTypeError(name, f"key {key!r}; expected strings")
            _check_type(element, args[1], _item(name, key))
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestTypeError(name, f"{_describe(value)}; expected a number")
        if not math.isfinite(value):
            raise ManifestValueError(name, f"{value}; expected a finite number")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestTypeError(name, f"{_describe(value)}; expected an integer")
    elif not isinstance(value, hint):
        expected = (
            "an object" if dataclasses.is_dataclass(hint) else f"a {_JSON_TYPES.get(hint, hint.__name__)}"
        )
        raise ManifestTypeError(name, f"{_describe(value)}; expected {expected}")


def _from_json(value: Any, hint: Any, name: str) -> Any:
    """JSON value -> the field's Python value (lists to tuples, objects to records); what does
    not fit is passed on unchanged for the record's own check to name."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return (
            None if value is None else _from_json(value, next(a for a in args if a is not type(None)), name)
        )
    if origin is tuple and isinstance(value, list):
        return tuple(_from_json(element, args[0], f"{name}[{index}]") for index, element in enumerate(value))
    if origin is dict and isinstance(value, dict):
        return {key: _from_json(element, args[1], _item(name, key)) for key, element in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and issubclass(hint, _Record):
        return hint.from_json_dict(value, name)
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_json_dict()
    if isinstance(value, tuple):
        return [_to_json(element) for element in value]
    if isinstance(value, dict):
        return {key: _to_json(element) for key, element in value.items()}
    return value


class _Record:
    """Base of the manifest's frozen dataclasses: every field is type-checked on construction,
    then :meth:`_check` checks the values; ``to_json_dict`` and ``from_json_dict`` convert."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for field in dataclasses.fields(self):
            _check_type(getattr(self, field.name), hints[field.name], field.name)
        self._check()

    def _check(self) -> None:
        """Value checks beyond the types (ranges, consistency); raise ManifestValueError."""

    def to_json_dict(self) -> dict[str, Any]:
        """Every field, but an optional one (with a default) still at its default."""
        return {
            field.name: _to_json(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if field.default is dataclasses.MISSING or getattr(self, field.name) != field.default
        }

    @classmethod
    def from_json_dict(cls, data: Any, where: str = "") -> typing.Self:
        if not isinstance(data, dict):
            raise ManifestTypeError(where, f"{_describe(data)}; expected an object")
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ManifestUnknownKeyError(
                _join(where, unknown[0]), f"unknown key; {cls.__name__} has {names}"
            )
        required = [field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ManifestMissingKeyError(
                _join(where, missing[0]), f"missing; {cls.__name__} needs {required}"
            )
        hints = _hints(cls)
        values = {
            name: _from_json(data[name], hints[name], _join(where, name)) for name in names if name in data
        }
        try:
            return cls(**values)
        except ManifestError as error:
            raise error.within(where) from None


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _positive(values: Sequence[int], name: str) -> None:
    if not values or any(value <= 0 for value in values):
        raise ManifestValueError(name, f"{list(values)}; expected positive sizes")


def _dims_match(normalizer: Normalizer, dim: int) -> None:
    if len(normalizer.low) != dim:
        raise ManifestValueError("normalizer.low", f"{len(normalizer.low)} bounds; expected dim={dim}")


@dataclass(frozen=True)
class Normalizer(_Record):
    """The affine map of the exported ActionNormalizer: ``low`` <-> -1, ``high`` <-> +1 in
    every dimension (``method`` names how the bounds were fitted)."""

    method: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    def _check(self) -> None:
        if not self.low or len(self.low) != len(self.high):
            raise ManifestValueError(
                "high",
                f"{len(self.low)} low and {len(self.high)} high bounds; expected one pair per dimension",
            )
        below = [index for index, (low, high) in enumerate(zip(self.low, self.high)) if not high > low]
        if below:
            raise ManifestValueError(
                f"high[{below[0]}]", f"{self.high[below[0]]} is not above low {self.low[below[0]]}"
            )

    def normalize(self, values: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return 2.0 * (values - low) / (high - low) - 1.0

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (values + 1.0) * 0.5 * (high - low) + low

    def midpoint(self) -> np.ndarray:
        """The values that normalise to 0."""
        return (np.asarray(self.low) + np.asarray(self.high)) / 2


@dataclass(frozen=True)
class ActionSpec(_Record):
    """What policy.onnx returns: ``chunk`` actions of ``dim`` values, normalised to [-1, 1]."""

    dim: int
    chunk: int
    normalizer: Normalizer

    def _check(self) -> None:
        _positive([self.dim], "dim")
        _positive([self.chunk], "chunk")
        _dims_match(self.normalizer, self.dim)


@dataclass(frozen=True)
class StateSpec(_Record):
    """The proprioception the policy takes: ``dim`` values, normalised like the actions."""

    dim: int
    normalizer: Normalizer

    def _check(self) -> None:
        _positive([self.dim], "dim")
        _dims_match(self.normalizer, self.dim)


@dataclass(frozen=True)
class FeatureSpec(_Record):
    """features.onnx's output (1, V, T, C, h, w) and the TVP's starting noise: ``noise`` is
    "random" (drawn per chunk, ``noise_shape``), "fixed" (``fixed_noise_file``) or None (the VAE
    encoder, which takes none); ``sigma`` is the noise level of the TVP's one forward.
    ``view_axis``: the symbolic name of the graph's view dimension (axis 1 of ``images``,
    ``noise`` and the features), so a runtime may run the views one per call; null for graphs
    whose view axis is fixed (exported before 2026-12-03), which take all views at once."""

    noise: Literal["random", "fixed"] | None
    noise_shape: tuple[int, ...] | None
    fixed_noise_file: str | None
    sigma: float | None
    shape: tuple[int, ...]
    view_axis: str | None = None

    def _check(self) -> None:
        _positive(self.shape, "shape")
        if self.view_axis is not None and not self.view_axis.isidentifier():
            raise ManifestValueError(
                "view_axis",
                f"{self.view_axis!r}; expected the graph's dimension name (an identifier) or null",
            )
        if len(self.shape) != 6:
            raise ManifestValueError(
                "shape", f"{list(self.shape)}; expected (1, views, frames, channels, height, width)"
            )
        if self.noise is None:
            for name in ("noise_shape", "fixed_noise_file", "sigma"):
                if getattr(self, name) is not None:
                    raise ManifestValueError(
                        name,
                        f"{getattr(self, name)!r} for an encoder without noise (noise=null); expected null",
                    )
            return
        if self.noise_shape is None or len(self.noise_shape) != 6:
            raise ManifestValueError(
                "noise_shape", f"{self.noise_shape!r}; expected (1, views, frames, channels, height, width)"
            )
        _positive(self.noise_shape, "noise_shape")
        if self.sigma is None or self.sigma <= 0:
            raise ManifestValueError(
                "sigma", f"{self.sigma!r}; expected the positive noise level of the TVP's forward"
            )
        if (self.fixed_noise_file is None) != (self.noise == "random"):
            raise ManifestValueError(
                "fixed_noise_file",
                f"{self.fixed_noise_file!r} with noise={self.noise!r}; expected a file for fixed noise only",
            )


@dataclass(frozen=True)
class SamplerSpec(_Record):
    """The DDIM schedule unrolled in policy.onnx (recorded, not read by the runtime)."""

    name: Literal["ddim"]
    num_steps: int
    sigma_data: float
    sigma_max: float
    sigma_min: float
    sigmas: tuple[float, ...]

    def _check(self) -> None:
        _positive([self.num_steps], "num_steps")
        if len(self.sigmas) != self.num_steps + 1:
            raise ManifestValueError(
                "sigmas", f"{len(self.sigmas)} levels; expected num_steps + 1 = {self.num_steps + 1}"
            )


@dataclass(frozen=True)
class TextEncoderSpec(_Record):
    """The CLIP text-encoder graph and the tokenizer data the runtime's ClipTokenizer reads."""

    file: str
    tokenizer: str


@dataclass(frozen=True)
class TextSpec(_Record):
    """The text embeddings cached at export, in ``instructions`` order (hidden states
    (N, *hidden_shape), pooled (N, pooled_dim)), and the encoder for other instructions, if any."""

    instructions: tuple[str, ...]
    hidden_file: str
    pooled_file: str
    hidden_shape: tuple[int, ...]
    pooled_dim: int
    encoder: TextEncoderSpec | None

    def _check(self) -> None:
        if not self.instructions:
            raise ManifestValueError("instructions", "empty; expected at least one cached instruction")
        if len(set(self.instructions)) != len(self.instructions):
            raise ManifestValueError("instructions", f"{list(self.instructions)} repeats an instruction")
        if len(self.hidden_shape) != 2:
            raise ManifestValueError("hidden_shape", f"{list(self.hidden_shape)}; expected (tokens, width)")
        _positive(self.hidden_shape, "hidden_shape")
        _positive([self.pooled_dim], "pooled_dim")


@dataclass(frozen=True)
class CustomOps(_Record):
    """The custom ops a graph uses: {op: node count} in ``domain``."""

    domain: str
    ops: dict[str, int]

    def _check(self) -> None:
        if self.domain != CUSTOM_OPS_DOMAIN:
            raise ManifestValueError(
                "domain", f"{self.domain!r}; this runtime has custom ops in {CUSTOM_OPS_DOMAIN!r} only"
            )
        if not self.ops or any(count <= 0 for count in self.ops.values()):
            raise ManifestValueError("ops", f"{self.ops}; expected positive node counts")


@dataclass(frozen=True)
class GraphSpec(_Record):
    """One ONNX graph: its file, input names in order, output name, the export-time rewrites
    applied to it ({rewrite: count}) and the custom ops it needs."""

    file: str
    inputs: tuple[str, ...]
    output: str
    rewrites: dict[str, int]
    custom_ops: CustomOps | None


@dataclass(frozen=True)
class GraphsSpec(_Record):
    features: GraphSpec
    policy: GraphSpec


@dataclass(frozen=True)
class Parity(_Record):
    """Max-abs errors between ONNX Runtime and PyTorch measured at export on the same inputs
    and noise (features relative to their largest magnitude), and the tolerances they met."""

    text_max_abs: float | None
    features_relative_max_abs: float
    policy_max_abs: float
    end_to_end_normalized_max_abs: float
    tolerance: dict[str, float]


def _fraction(value: float, name: str, low: float = 0.0) -> None:
    if not low <= value <= 1.0:
        raise ManifestValueError(name, f"{value}; expected a value in [{low}, 1]")


@dataclass(frozen=True)
class QuantizedOps(_Record):
    """One quantisation pass: the op types it took, and how their activations and weights are
    quantised (in words: "uint8 per tensor (MinMax)", "int8 per channel")."""

    op_types: tuple[str, ...]
    activations: str
    weights: str

    def _check(self) -> None:
        if not self.op_types or not all(self.op_types):
            raise ManifestValueError(
                "op_types", f"{list(self.op_types)}; expected the ONNX op types quantised"
            )


@dataclass(frozen=True)
class CalibrationRecord(_Record):
    """Where the static ranges came from: a LeRobot dataset (``video_keys``: the video of each
    camera; ``state``: the state column, None for the normaliser's midpoint), the number of
    calibration frames and of held-out frames the agreement was measured on, the instructions
    the frames were fed with, and the seed of their feature noise."""

    dataset: str
    video_keys: dict[str, str]
    state: str | None
    frames: int
    held_out_frames: int
    instructions: tuple[str, ...]
    seed: int

    def _check(self) -> None:
        _positive([self.frames], "frames")
        _positive([self.held_out_frames], "held_out_frames")
        if not self.video_keys:
            raise ManifestValueError("video_keys", "empty; expected the video key of every camera")


@dataclass(frozen=True)
class HeldOutAgreement(_Record):
    """The quantised graph against fp32 on held-out frames (same inputs and noise): the cosine
    of the features (worst and mean frame) and the max-abs difference of the normalised action
    chunk, in [-1, 1] units (worst and mean frame)."""

    feature_cosine_min: float
    feature_cosine_mean: float
    normalized_action_max_abs: float
    normalized_action_mean_max_abs: float

    def _check(self) -> None:
        _fraction(self.feature_cosine_min, "feature_cosine_min", -1.0)
        _fraction(self.feature_cosine_mean, "feature_cosine_mean", -1.0)
        if self.feature_cosine_mean < self.feature_cosine_min:
            raise ManifestValueError(
                "feature_cosine_mean",
                f"{self.feature_cosine_mean} < feature_cosine_min {self.feature_cosine_min}",
            )
        for name in ("normalized_action_max_abs", "normalized_action_mean_max_abs"):
            if getattr(self, name) < 0:
                raise ManifestValueError(name, f"{getattr(self, name)}; expected a non-negative error")


@dataclass(frozen=True)
class Quantization(_Record):
    """A graph of the artifact in lower precision, as ``vpp-export --quantize`` made it: the
    scheme ("int8-hybrid": static QDQ for ``static``'s op types, dynamic for ``dynamic``'s;
    "int8-dynamic": ``dynamic``'s op types only, ``static`` None, the frames used only to measure), the
    graph ("features"), how many nodes of each op type run quantised, the nodes kept in fp32
    with the gain each measured when kept: how much it lowered the held-out mean normalised action
    error (artifacts made before 2026-12-03: raised the worst feature cosine); ``fp32_node_gains``
    holds every candidate measured, the calibration data, the agreement with fp32 on held-out frames, and
    the seconds quantisation took. Recorded for people and tools; the runtime needs nothing of
    it to run the graph."""

    scheme: Literal["int8-hybrid", "int8-dynamic"]
    graph: Literal["features"]
    static: QuantizedOps | None
    dynamic: QuantizedOps
    quantized_nodes: dict[str, int]
    fp32_nodes: tuple[str, ...]
    fp32_node_gains: dict[str, float]
    calibration: CalibrationRecord
    held_out: HeldOutAgreement
    seconds: float

    def _check(self) -> None:
        if (self.static is None) != (self.scheme == "int8-dynamic"):
            raise ManifestValueError(
                "static", f"{self.static}; expected a static pass for int8-hybrid and none for int8-dynamic"
            )
        if not self.quantized_nodes or any(count < 0 for count in self.quantized_nodes.values()):
            raise ManifestValueError("quantized_nodes", f"{self.quantized_nodes}; expected node counts >= 0")
        if not any(self.quantized_nodes.values()):
            raise ManifestValueError("quantized_nodes", f"{self.quantized_nodes}; no node is quantised")
        unmeasured = [name for name in self.fp32_nodes if name not in self.fp32_node_gains]
        if unmeasured:
            raise ManifestValueError(
                "fp32_nodes", f"{unmeasured[0]!r} has no measured gain; expected a key of fp32_node_gains"
            )


@dataclass(frozen=True)
class Manifest(_Record):
    """Everything the runtime needs to know about an artifact, and what export measured.
    ``parity`` is None only inside the exporter, until it has run the written graphs; a manifest
    read from disk must have it. ``quantization`` (optional) is set for an artifact whose
    features graph is int8."""

    format_version: int
    producer: str
    opset: int
    cameras: tuple[str, ...]
    image_size: int
    encoder: Literal["tvp", "vae"]
    action: ActionSpec
    state: StateSpec | None
    features: FeatureSpec
    sampler: SamplerSpec
    text: TextSpec
    graphs: GraphsSpec
    parity: Parity | None
    export_seconds: float
    files: dict[str, str]
    quantization: Quantization | None = None

    def _check(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ManifestValueError(
                "format_version", f"{self.format_version}; this runtime writes and reads {FORMAT_VERSION}"
            )
        if not self.cameras:
            raise ManifestValueError("cameras", "empty; expected the name of every camera the policy sees")
        if len(set(self.cameras)) != len(self.cameras) or not all(self.cameras):
            raise ManifestValueError("cameras", f"{list(self.cameras)}; expected distinct non-empty names")
        _positive([self.image_size], "image_size")
        views = len(self.cameras)
        if (self.encoder == "vae") != (self.features.noise is None):
            raise ManifestValueError(
                "features.noise",
                f"{self.features.noise!r} with encoder={self.encoder!r}; the VAE encoder alone takes no noise",
            )
        for name in ("shape", "noise_shape"):
            shape = getattr(self.features, name)
            if shape is not None and tuple(shape[:2]) != (1, views):
                raise ManifestValueError(
                    f"features.{name}",
                    f"{list(shape)}; expected (1, {views}, ...) for cameras {list(self.cameras)}",
                )
        feature_inputs = ("images",) if self.features.noise is None else ("images", "text_hidden", "noise")
        if self.graphs.features.inputs != feature_inputs:
            raise ManifestValueError(
                "graphs.features.inputs",
                f"{list(self.graphs.features.inputs)}; expected {list(feature_inputs)}",
            )
        policy_inputs = ("features", "lang", "noise") + (() if self.state is None else ("state",))
        if self.graphs.policy.inputs != policy_inputs:
            raise ManifestValueError(
                "graphs.policy.inputs", f"{list(self.graphs.policy.inputs)}; expected {list(policy_inputs)}"
            )
        for name, digest in self.files.items():
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or name in (MANIFEST, MANIFEST_SHA256):
                raise ManifestValueError(
                    _item("files", name), "expected a file inside the artifact other than the manifest"
                )
            if not _SHA256.fullmatch(digest):
                raise ManifestValueError(
                    _item("files", name), f"{digest!r}; expected 64 lowercase hex digits"
                )
        for field, name in self.referenced_files().items():
            if name not in self.files:
                raise ManifestValueError(
                    field, f"{name!r} is not listed in files (which has {sorted(self.files)})"
                )

    def referenced_files(self) -> dict[str, str]:
        """{manifest field: file name} of every file the manifest points at."""
        files = {
            "graphs.features.file": self.graphs.features.file,
            "graphs.policy.file": self.graphs.policy.file,
            "text.hidden_file": self.text.hidden_file,
            "text.pooled_file": self.text.pooled_file,
        }
        if self.text.encoder is not None:
            files.update(
                {
                    "text.encoder.file": self.text.encoder.file,
                    "text.encoder.tokenizer": self.text.encoder.tokenizer,
                }
            )
        if self.features.fixed_noise_file is not None:
            files["features.fixed_noise_file"] = self.features.fixed_noise_file
        return files

    # -- reading and writing ---------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestSyntaxError("", f"not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ManifestSyntaxError("", f"a JSON {type(data).__name__}; expected an object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise UnsupportedFormatVersionError(
                f"format_version={version!r}; this runtime reads format_version {FORMAT_VERSION}: {REEXPORT}"
            )
        return cls.from_json_dict(data)

    def write(self, folder: Path) -> Path:
        """Writes ``manifest.json`` and its sha256 sidecar into ``folder``; returns the manifest's path."""
        text = self.to_json()
        path = folder / MANIFEST
        path.write_text(text)
        (folder / MANIFEST_SHA256).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST}\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of the artifact ``folder``, checked against its sha256 sidecar."""
        path, sidecar = folder / MANIFEST, folder / MANIFEST_SHA256
        if not path.is_file():
            raise ArtifactFileMissingError(
                f"{path} does not exist: {folder} is not an exported policy artifact"
            )
        content = path.read_bytes()
        if not sidecar.is_file():
            try:
                version = json.loads(content).get("format_version")
            except (ValueError, AttributeError):
                version = None
            if version is not None and version != FORMAT_VERSION:
                raise UnsupportedFormatVersionError(
                    f"{path}: format_version={version!r}, written before manifests had a sha256 sidecar; this runtime "
                    f"reads format_version {FORMAT_VERSION}: {REEXPORT}"
                )
            raise ArtifactFileMissingError(
                f"{sidecar} does not exist: the manifest's sha256 cannot be checked; {REEXPORT}"
            )
        recorded = (sidecar.read_text().split() or [""])[0]
        actual = hashlib.sha256(content).hexdigest()
        if actual != recorded:
            raise ArtifactHashMismatchError(f"{path}: sha256 {actual}; {sidecar.name} recorded {recorded!r}")
        try:
            manifest = cls.from_json(content.decode())
        except UnicodeDecodeError as error:
            raise ManifestSyntaxError("", f"{path} is not UTF-8 text: {error}") from None
        except ManifestError as error:
            raise type(error)(error.field, f"{error.problem} (in {path})") from None
        except UnsupportedFormatVersionError as error:
            raise UnsupportedFormatVersionError(f"{path}: {error}") from None
        if manifest.parity is None:
            raise ManifestValueError(
                "parity", f"null: the export never checked the graphs against PyTorch (in {path}); {REEXPORT}"
            )
        return manifest

    # -- checking the graphs ---------------------------------------------------------------

    def graph_signature(
        self, graph: str, views_per_call: int | None = None
    ) -> tuple[dict[str, tuple], dict[str, tuple]]:
        """({input: dims}, {output: dims}) that ``graph`` ("features", "policy" or
        "text_encoder") must have, each dim a (size or None for any, manifest field) pair.
        ``views_per_call``: the views a features session was opened for, when its symbolic view
        axis (``features.view_axis``) was fixed to fewer than all cameras."""
        views, size = (len(self.cameras), "cameras"), (self.image_size, "image_size")
        if views_per_call is not None and graph == "features":
            if self.features.view_axis is None:
                raise ValueError("views_per_call for a features graph without a symbolic view axis")
            views = (views_per_call, "cameras")
        text = self.text
        hidden = (
            (1, None),
            (text.hidden_shape[0], "text.hidden_shape"),
            (text.hidden_shape[1], "text.hidden_shape"),
        )
        features = tuple((dim, "features.shape") for dim in self.features.shape)
        if graph == "features":
            inputs: dict[str, tuple] = {"images": ((1, None), views, (3, None), size, size)}
            if self.features.noise_shape is not None:
                inputs["text_hidden"] = hidden
                noise = tuple((dim, "features.noise_shape") for dim in self.features.noise_shape)
                inputs["noise"] = (noise[0], views, *noise[2:])
            return inputs, {self.graphs.features.output: (features[0], views, *features[2:])}
        actions = ((1, None), (self.action.chunk, "action.chunk"), (self.action.dim, "action.dim"))
        if graph == "policy":
            inputs = {
                "features": features,
                "lang": ((1, None), (text.pooled_dim, "text.pooled_dim")),
                "noise": actions,
            }
            if self.state is not None:
                inputs["state"] = ((1, None), (self.state.dim, "state.dim"))
            return inputs, {self.graphs.policy.output: actions}
        if graph == "text_encoder":
            pooled = ((1, None), (text.pooled_dim, "text.pooled_dim"))
            return {"input_ids": ((1, None), (None, None))}, {"hidden": hidden, "pooled": pooled}
        raise ValueError(f"graph {graph!r}; expected 'features', 'policy' or 'text_encoder'")

    def check_graph(
        self,
        graph: str,
        inputs: Mapping[str, Sequence],
        outputs: Mapping[str, Sequence],
        views_per_call: int | None = None,
    ) -> None:
        """Raises :class:`ManifestGraphMismatchError`, naming the manifest field, when ``graph``'s
        ``inputs`` and ``outputs`` ({name: shape} as ONNX Runtime reports them, a dimension
        that is not a fixed integer matching anything) disagree with the manifest
        (``views_per_call``: see :meth:`graph_signature`)."""
        expected_inputs, expected_outputs = self.graph_signature(graph, views_per_call)
        files = {"features": self.graphs.features.file, "policy": self.graphs.policy.file}
        file = files.get(graph) or (self.text.encoder.file if self.text.encoder else graph)
        if list(inputs) != list(expected_inputs):
            field = f"graphs.{graph}.inputs" if graph in files else "text.encoder"
            raise ManifestGraphMismatchError(
                field, f"{file} takes inputs {list(inputs)}; the manifest implies {list(expected_inputs)}"
            )
        missing = [name for name in expected_outputs if name not in outputs]
        if missing:
            field = f"graphs.{graph}.output" if graph in files else "text.encoder"
            raise ManifestGraphMismatchError(
                field, f"{file} has outputs {list(outputs)}; the manifest expects {missing[0]!r}"
            )
        for kind, expected_all, actual_all in (
            ("input", expected_inputs, inputs),
            ("output", expected_outputs, outputs),
        ):
            for name, expected in expected_all.items():
                actual = list(actual_all[name])
                fields = [field for _, field in expected if field] or ["text.encoder"]
                if len(actual) != len(expected):
                    raise ManifestGraphMismatchError(
                        fields[0],
                        f"{file}'s {kind} {name!r} has {len(actual)} dimensions {actual}; "
                        f"the manifest implies {len(expected)}",
                    )
                for dim, (size, field) in zip(actual, expected):
                    if isinstance(dim, int) and size is not None and dim != size:
                        implied = [s if s is not None else "?" for s, _ in expected]
                        raise ManifestGraphMismatchError(
                            field or fields[0],
                            f"{file}'s {kind} {name!r} has shape {actual}; the manifest implies {implied}"
                            + (f" (opened for {views_per_call} view a call)" if views_per_call else ""),
                        )

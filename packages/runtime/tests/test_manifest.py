"""The typed manifest: written and read by the same code, its own sha256 checked, every malformed
manifest refused at load with an error that names the field."""

import json

import pytest

from vpp.runtime.artifact import Artifact
from vpp.runtime.manifest import (
    MANIFEST,
    MANIFEST_SHA256,
    ArtifactFileMissingError,
    ArtifactHashMismatchError,
    Manifest,
    ManifestError,
    ManifestGraphMismatchError,
    ManifestMissingKeyError,
    ManifestSyntaxError,
    ManifestTypeError,
    ManifestUnknownKeyError,
    ManifestValueError,
    Normalizer,
    UnsupportedFormatVersionError,
)
from vpp.runtime.policy import Policy


def test_the_manifest_round_trips_through_its_json(tiny_artifact):
    manifest = Manifest.read(tiny_artifact)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads((tiny_artifact / MANIFEST).read_text()) == manifest.to_json_dict()
    assert manifest.cameras == ("corner", "wrist") and manifest.action.chunk == 4 and manifest.state.dim == 3


def _delete(*path):
    def change(data):
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return change


def _set(value, *path):
    def change(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


MALFORMED = [
    ("not json", "{ not json", ManifestSyntaxError, "", "not JSON"),
    ("a list", "[1, 2]", ManifestSyntaxError, "", "expected an object"),
    ("missing key", _delete("cameras"), ManifestMissingKeyError, "cameras", "missing"),
    ("missing nested key", _delete("action", "chunk"), ManifestMissingKeyError, "action.chunk", "missing"),
    ("unknown key", _set(1, "colour"), ManifestUnknownKeyError, "colour", "unknown key"),
    (
        "unknown nested key",
        _set(1, "graphs", "policy", "batch"),
        ManifestUnknownKeyError,
        "graphs.policy.batch",
        "unknown key",
    ),
    (
        "string for an integer",
        _set("8", "image_size"),
        ManifestTypeError,
        "image_size",
        "expected an integer",
    ),
    (
        "boolean for an integer",
        _set(True, "action", "dim"),
        ManifestTypeError,
        "action.dim",
        "expected an integer",
    ),
    ("string for a list", _set("corner", "cameras"), ManifestTypeError, "cameras", "expected a list"),
    (
        "string in a number list",
        _set(["a", 1.0, 1.0], "state", "normalizer", "low"),
        ManifestTypeError,
        "state.normalizer.low[0]",
        "expected a number",
    ),
    ("list for an object", _set([], "sampler"), ManifestTypeError, "sampler", "expected an object"),
    (
        "number for a hash",
        _set(5, "files", "policy.onnx"),
        ManifestTypeError,
        "files['policy.onnx']",
        "expected a string",
    ),
    ("null action", _set(None, "action"), ManifestTypeError, "action", "null"),
    ("no cameras", _set([], "cameras"), ManifestValueError, "cameras", "empty"),
    ("a camera twice", _set(["corner", "corner"], "cameras"), ManifestValueError, "cameras", "distinct"),
    (
        "NaN bound",
        _set([-1.0, float("nan"), -3.0, 0.0], "action", "normalizer", "low"),
        ManifestValueError,
        "action.normalizer.low[1]",
        "finite",
    ),
    (
        "infinite bound",
        _set([float("inf"), 1.0, 1.0], "state", "normalizer", "high"),
        ManifestValueError,
        "state.normalizer.high[0]",
        "finite",
    ),
    (
        "bounds crossed",
        _set([1.0, 2.0, -3.0, 0.5], "action", "normalizer", "high"),
        ManifestValueError,
        "action.normalizer.high[2]",
        "not above",
    ),
    (
        "bounds for another dim",
        _set([0.0] * 3, "action", "normalizer", "low"),
        ManifestValueError,
        "action.normalizer.high",
        "one pair per dimension",
    ),
    (
        "normaliser for another dim",
        _set(5, "state", "dim"),
        ManifestValueError,
        "state.normalizer.low",
        "expected dim=5",
    ),
    ("zero chunk", _set(0, "action", "chunk"), ManifestValueError, "action.chunk", "positive"),
    (
        "noise for other cameras",
        _set([1, 3, 2, 3, 2, 2], "features", "noise_shape"),
        ManifestValueError,
        "features.noise_shape",
        "(1, 2, ...)",
    ),
    (
        "features of four dims",
        _set([1, 2, 3, 4], "features", "shape"),
        ManifestValueError,
        "features.shape",
        "(1, views",
    ),
    (
        "unknown noise",
        _set("pink", "features", "noise"),
        ManifestValueError,
        "features.noise",
        "expected one of",
    ),
    (
        "noise without a level",
        _set(None, "features", "sigma"),
        ManifestValueError,
        "features.sigma",
        "positive noise level",
    ),
    (
        "VAE encoder with noise",
        _set("vae", "encoder"),
        ManifestValueError,
        "features.noise",
        "VAE encoder alone",
    ),
    (
        "sampler levels",
        _set([80.0, 0.0], "sampler", "sigmas"),
        ManifestValueError,
        "sampler.sigmas",
        "num_steps + 1 = 3",
    ),
    (
        "no state input",
        _set(["features", "lang", "noise"], "graphs", "policy", "inputs"),
        ManifestValueError,
        "graphs.policy.inputs",
        "expected",
    ),
    (
        "text shape",
        _set([5], "text", "hidden_shape"),
        ManifestValueError,
        "text.hidden_shape",
        "(tokens, width)",
    ),
    ("no instructions", _set([], "text", "instructions"), ManifestValueError, "text.instructions", "empty"),
    (
        "foreign custom ops",
        _set({"domain": "com.example", "ops": {"Frob": 1}}, "graphs", "features", "custom_ops"),
        ManifestValueError,
        "graphs.features.custom_ops.domain",
        "vpp.fused",
    ),
    (
        "short hash",
        _set("abc", "files", "policy.onnx"),
        ManifestValueError,
        "files['policy.onnx']",
        "64 lowercase hex",
    ),
    (
        "file outside",
        _set("0" * 64, "files", "../secret"),
        ManifestValueError,
        "files['../secret']",
        "inside the artifact",
    ),
    (
        "graph not hashed",
        _delete("files", "policy.onnx"),
        ManifestValueError,
        "graphs.policy.file",
        "not listed in files",
    ),
    ("no parity", _set(None, "parity"), ManifestValueError, "parity", "never checked"),
]


@pytest.mark.parametrize(
    ("change", "error", "field", "problem"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_a_malformed_manifest_is_refused_naming_the_field(
    artifact_copy, rewrite_manifest, change, error, field, problem
):
    rewrite_manifest(artifact_copy, change)
    with pytest.raises(error) as raised:
        Artifact.open(artifact_copy)
    assert raised.value.field == field and problem in raised.value.problem, str(raised.value)
    assert (f"manifest field {field!r}" if field else "manifest:") in str(raised.value)
    assert str(artifact_copy / MANIFEST) in str(raised.value)


def test_the_types_check_values_when_built_in_code_too():
    with pytest.raises(ManifestValueError, match=r"'low\[1\]': nan; expected a finite number"):
        Normalizer("min_max", (0.0, float("nan")), (1.0, 2.0))
    with pytest.raises(ManifestTypeError, match="'method'"):
        Normalizer(3, (0.0,), (1.0,))


def test_the_manifest_is_checked_against_its_sidecar(artifact_copy):
    path = artifact_copy / MANIFEST
    path.write_text(path.read_text().replace('"image_size": 8', '"image_size": 16'))
    with pytest.raises(ArtifactHashMismatchError, match=f"{MANIFEST}: sha256 .*{MANIFEST_SHA256} recorded"):
        Artifact.open(artifact_copy, verify=False)
    (artifact_copy / MANIFEST_SHA256).unlink()
    with pytest.raises(ArtifactFileMissingError, match=f"{MANIFEST_SHA256} does not exist.*vpp-export"):
        Artifact.open(artifact_copy)


def test_an_artifact_of_an_older_format_is_told_to_export_again(artifact_copy, rewrite_manifest):
    rewrite_manifest(artifact_copy, _set(1, "format_version"))
    (artifact_copy / MANIFEST_SHA256).unlink()  # format 1 had no sidecar
    with pytest.raises(
        UnsupportedFormatVersionError,
        match=r"format_version=1, written before .*reads format_version 2: export the policy again",
    ):
        Artifact.open(artifact_copy)
    rewrite_manifest(artifact_copy, _set(99, "format_version"))
    with pytest.raises(UnsupportedFormatVersionError, match="format_version=99"):
        Artifact.open(artifact_copy)


def test_a_missing_or_changed_file_is_refused(artifact_copy, tiny_artifact):
    with pytest.raises(ArtifactFileMissingError, match=r"manifest.json does not exist"):
        Artifact.open(artifact_copy / "nowhere")
    pooled = artifact_copy / "text" / "pooled.npy"
    original = pooled.read_bytes()
    pooled.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactHashMismatchError, match=r"text/pooled.npy: sha256"):
        Artifact.open(artifact_copy)
    Artifact.open(artifact_copy, verify=False)  # verify=False skips the files' hashes, not the manifest's
    pooled.write_bytes(original)
    (artifact_copy / "policy.onnx").unlink()
    with pytest.raises(ArtifactFileMissingError, match=r"policy.onnx is listed"):
        Artifact.open(artifact_copy)


def test_a_text_cache_of_another_shape_is_refused(artifact_copy, rewrite_manifest):
    rewrite_manifest(artifact_copy, _set([5, 9], "text", "hidden_shape"))
    artifact = Artifact.open(artifact_copy)
    with pytest.raises(
        ManifestValueError,
        match=r"'text.hidden_shape': text/hidden.npy holds \(2, 5, 6\); the manifest implies \(2, 5, 9\)",
    ):
        artifact.text_cache()


@pytest.mark.parametrize(
    ("graphs", "field", "message"),
    [
        (
            {"chunk": 10},
            "action.chunk",
            r"policy.onnx's input 'noise' has shape \[1, 10, 4\]; the manifest implies \[1, 4, 4\]",
        ),
        (
            {"feature_shape": (1, 2, 2, 3, 4, 4)},
            "features.noise_shape",
            # (one view a call when the runtime runs the views in parallel)
            r"features.onnx's input 'noise' has shape \[1, [12], 2, 3, 4, 4\]",
        ),
    ],
    ids=["chunk", "feature-grid"],
)
def test_a_manifest_that_disagrees_with_its_graphs_fails_at_load(
    make_tiny_artifact, tmp_path, graphs, field, message
):
    """Graphs of another shape than the manifest says (which is what a hand-edited manifest
    against the exported graphs amounts to): Policy.load names the field, ORT never runs."""
    make_tiny_artifact(tmp_path, **graphs)
    with pytest.raises(ManifestGraphMismatchError, match=message) as raised:
        Policy.load(tmp_path)
    assert raised.value.field == field


def test_graph_names_are_checked_as_well(tiny_artifact):
    manifest = Manifest.read(tiny_artifact)
    inputs, outputs = manifest.graph_signature("policy")
    shapes = {name: [size if size is not None else 1 for size, _ in dims] for name, dims in inputs.items()}
    out_shapes = {name: [size for size, _ in dims] for name, dims in outputs.items()}
    manifest.check_graph("policy", shapes, out_shapes)
    with pytest.raises(ManifestGraphMismatchError, match=r"'graphs.policy.inputs'.*takes inputs"):
        manifest.check_graph("policy", dict(reversed(list(shapes.items()))), out_shapes)
    with pytest.raises(ManifestGraphMismatchError, match=r"'graphs.policy.output'.*expects 'actions'"):
        manifest.check_graph("policy", shapes, {"y": out_shapes["actions"]})
    # a symbolic dimension (a string, as ORT reports it) matches any size
    manifest.check_graph("policy", dict(shapes, noise=[1, "chunk", 4]), out_shapes)
    with pytest.raises(ManifestGraphMismatchError, match=r"'state.dim'.*has 3 dimensions"):
        manifest.check_graph("policy", dict(shapes, state=[1, 3, 1]), out_shapes)


def test_every_manifest_error_is_an_artifact_error_with_a_field():
    error = ManifestValueError("low[1]", "nan").within("action.normalizer")
    assert (
        isinstance(error, ManifestError)
        and isinstance(error, ValueError)
        and error.field == "action.normalizer.low[1]"
    )


QUANTIZATION = {
    "scheme": "int8-hybrid",
    "graph": "features",
    "static": {
        "op_types": ["Conv"],
        "activations": "uint8 per tensor (MinMax)",
        "weights": "int8 per channel",
    },
    "dynamic": {
        "op_types": ["MatMul", "Gemm"],
        "activations": "uint8 per call",
        "weights": "int8 per channel",
    },
    "quantized_nodes": {"Conv": 50, "MatMul": 120, "Gemm": 20},
    "fp32_nodes": ["/quant_conv/Conv"],
    "fp32_node_gains": {"/quant_conv/Conv": 5e-5, "/encoder/conv_in/Conv": -1e-6},
    "calibration": {
        "dataset": "/data/demos",
        "video_keys": {"corner": "observation.images.corner", "wrist": "observation.images.wrist"},
        "state": "observation.state",
        "frames": 32,
        "held_out_frames": 8,
        "instructions": ["open the drawer"],
        "seed": 0,
    },
    "held_out": {
        "feature_cosine_min": 0.9978,
        "feature_cosine_mean": 0.998,
        "normalized_action_max_abs": 0.02,
        "normalized_action_mean_max_abs": 0.01,
    },
    "seconds": 40.0,
}


def test_the_optional_quantization_record_is_absent_from_fp32_artifacts_and_round_trips(
    tiny_artifact, artifact_copy, rewrite_manifest
):
    # an fp32 artifact's manifest has no key for it, so runtimes older than the field read it
    assert "quantization" not in json.loads((tiny_artifact / MANIFEST).read_text())
    assert Manifest.read(tiny_artifact).quantization is None
    rewrite_manifest(artifact_copy, _set(QUANTIZATION, "quantization"))
    manifest = Artifact.open(artifact_copy).manifest
    record = manifest.quantization
    assert record.quantized_nodes["Conv"] == 50 and record.static.op_types == ("Conv",)
    assert record.calibration.video_keys["wrist"] == "observation.images.wrist"
    assert record.held_out.feature_cosine_min == 0.9978
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["quantization"] == QUANTIZATION


def _quantization(change):
    def apply(data):
        data["quantization"] = json.loads(json.dumps(QUANTIZATION))
        change(data["quantization"])

    return apply


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        (
            _set(1.5, "held_out", "feature_cosine_min"),
            ManifestValueError,
            "quantization.held_out.feature_cosine_min",
        ),
        (
            _set(0.5, "held_out", "feature_cosine_mean"),
            ManifestValueError,
            "quantization.held_out.feature_cosine_mean",
        ),
        (
            _set(-0.1, "held_out", "normalized_action_max_abs"),
            ManifestValueError,
            "quantization.held_out.normalized_action_max_abs",
        ),
        (_set("int4", "scheme"), ManifestValueError, "quantization.scheme"),
        (_set(["/unet/conv_in/Conv"], "fp32_nodes"), ManifestValueError, "quantization.fp32_nodes"),
        (_set({"Conv": 0}, "quantized_nodes"), ManifestValueError, "quantization.quantized_nodes"),
        (_set(0, "calibration", "frames"), ManifestValueError, "quantization.calibration.frames"),
        (_set("32", "calibration", "frames"), ManifestTypeError, "quantization.calibration.frames"),
        (_delete("calibration", "dataset"), ManifestMissingKeyError, "quantization.calibration.dataset"),
        (_set(1, "bits"), ManifestUnknownKeyError, "quantization.bits"),
    ],
    ids=[
        "cosine>1",
        "mean<min",
        "negative-error",
        "scheme",
        "unmeasured-fp32-node",
        "nothing-quantised",
        "no-frames",
        "string-frames",
        "no-dataset",
        "unknown-key",
    ],
)
def test_a_malformed_quantization_record_is_refused_naming_the_field(
    artifact_copy, rewrite_manifest, change, error, field
):
    rewrite_manifest(artifact_copy, _quantization(change))
    with pytest.raises(error) as raised:
        Artifact.open(artifact_copy)
    assert raised.value.field == field, str(raised.value)

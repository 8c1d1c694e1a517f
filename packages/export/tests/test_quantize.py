"""int8 export (vpp.export.quantize) and the early exit: a tiny policy, a LeRobot dataset written here."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vpp.data.lerobot import LeRobotDatasetWriter
from vpp.export.cli import main as export_cli
from vpp.export.cli import summary
from vpp.export.graph_passes import FUSED_DOMAIN
from vpp.export.quantize import (
    CalibrationDataError,
    QuantizeOptions,
    agreement,
    cpu_session,
    fused_op_schemas,
    graph_feeds,
    open_calibration_source,
    quantize_features,
    read_frames,
    split_calibration_spec,
)
from vpp.export.writer import QUANTIZED_PARITY_TOLERANCE, export_policy, reference_actions
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
from vpp.runtime.manifest import Manifest
from vpp.runtime.policy import Policy
from vpp.tvp.model import TextGuidedVideoPredictor

INSTRUCTIONS = ["open the drawer"]
CAMERAS = ("corner", "wrist")
STATE_DIM = 3


def tiny_policy(**tvp_overrides):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tvp = TextGuidedVideoPredictor.from_preset("tiny", **tvp_overrides)
    rng = np.random.default_rng(0)
    config = VPPConfig(cameras=list(CAMERAS), action_dim=4, chunk=4, state_dim=STATE_DIM)
    return VideoPredictionPolicy.build(
        tvp, config, rng.normal(size=(50, 4)) * 3 + 1, rng.normal(size=(50, STATE_DIM)), head_preset="tiny"
    ).eval()


def write_dataset(root, cameras=CAMERAS, episodes=2, length=8, size=40):
    """Episodes of a coloured square moving over a grey floor, seen by every camera, with a
    state column of the policy's width; ``episodes=0`` leaves a valid but empty dataset."""
    features = {
        f"observation.images.{camera}": {"dtype": "video", "shape": (size, size, 3)} for camera in cameras
    }
    features["action"] = {"dtype": "float32", "shape": (4,)}
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,)}
    writer = LeRobotDatasetWriter(root, fps=10, features=features)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    for episode in range(episodes):
        video = np.full((length, size, size, 3), 60, dtype=np.uint8)
        for t in range(length):
            square = (np.abs(cols - 6 - 3 * t) < 6) & (np.abs(rows - 12 - 5 * episode) < 6)
            video[t][square] = (200, 40 + 40 * episode, 30)
        frames = {f"observation.images.{camera}": video for camera in cameras}
        frames["action"] = rng.uniform(-1, 1, (length, 4)).astype(np.float32)
        frames["observation.state"] = rng.normal(size=(length, STATE_DIM)).astype(np.float32)
        writer.add_episode(frames, task=INSTRUCTIONS[0])
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("demos") / "demos")


OPTIONS = {"calibration_frames": 8, "held_out_frames": 3, "candidates": 2, "keep_fp32": 1}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, dataset):
    policy = tiny_policy()
    folder = tmp_path_factory.mktemp("int8")
    export_policy(policy, folder, INSTRUCTIONS, quantize=QuantizeOptions(str(dataset), **OPTIONS))
    return policy, folder


def test_the_int8_graph_holds_qdq_convs_and_dynamic_int8_matmuls(quantized):
    _, folder = quantized
    graph = onnx.load(str(folder / "features.onnx")).graph
    ops = Counter(node.op_type for node in graph.node)
    assert (
        ops["QuantizeLinear"]
        and ops["DequantizeLinear"]
        and ops["MatMulInteger"]
        and ops["DynamicQuantizeLinear"]
    )
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = {node.name: node.input[1] in dequantized for node in graph.node if node.op_type == "Conv"}
    record = Manifest.read(folder).quantization
    # the convolutions kept fp32 are exactly the record's; every other one reads int8 weights
    assert {name for name, int8 in convs.items() if not int8} == set(record.fp32_nodes)
    assert record.quantized_nodes["Conv"] == sum(convs.values()) > 0
    assert record.quantized_nodes["MatMul"] > 0 and record.quantized_nodes["Gemm"] > 0
    # the custom ops survive quantisation and are still declared
    assert Manifest.read(folder).graphs.features.custom_ops.ops["GroupNorm"] > 0
    assert any(node.domain == FUSED_DOMAIN for node in graph.node)


def test_the_dynamic_scheme_leaves_every_convolution_float(tmp_path, dataset, quantized):
    """--quantize int8-dynamic: only the matrix products are int8 (no calibrated ranges), and its
    features err less than the hybrid's (the static convolutions' per-tensor activations are the
    hybrid's largest error)."""
    policy, hybrid_folder = quantized
    export_policy(
        policy, tmp_path, INSTRUCTIONS, quantize=QuantizeOptions(str(dataset), **OPTIONS, scheme="dynamic")
    )
    graph = onnx.load(str(tmp_path / "features.onnx")).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QuantizeLinear"] == 0 and ops["MatMulInteger"] and ops["DynamicQuantizeLinear"]
    record = Manifest.read(tmp_path).quantization
    assert record.scheme == "int8-dynamic" and record.static is None and record.fp32_nodes == ()
    assert record.quantized_nodes["Conv"] == 0 and record.quantized_nodes["MatMul"] > 0
    hybrid = Manifest.read(hybrid_folder).quantization
    assert record.held_out.feature_cosine_min >= hybrid.held_out.feature_cosine_min
    with pytest.raises(CalibrationDataError, match="scheme='static'; expected 'hybrid' or 'dynamic'"):
        QuantizeOptions(str(dataset), scheme="static")


class _Session:
    """Stands in for an ORT session: returns the feature array it is fed."""

    def run(self, _outputs, feed):
        return [feed["x"]]


def test_the_search_judges_a_graph_by_the_actions_the_head_makes_of_its_features():
    """A feature error the cosine barely sees (a small element moved) can move the head's actions
    a lot: the agreement measures both, and the search's loss is the mean action error."""
    reference = [np.array([100.0, 0.01]), np.array([100.0, 0.02])]
    quantized = [{"x": np.array([100.0, 0.11])}, {"x": np.array([100.0, 0.02])}]
    # a head that standardises the second element by a spread of 0.01, as trained heads do

    def actions(index, features):
        return np.array([features[0] / 100.0, (features[1] - 0.015) / 0.01])

    expected = [actions(i, f) for i, f in enumerate(reference)]
    measured = agreement(_Session(), reference, quantized, actions, expected)
    assert measured.worst_cosine > 0.9999995
    assert measured.action_errors == pytest.approx([10.0, 0.0])
    assert measured.loss == pytest.approx(5.0) and measured.mean_action_error == pytest.approx(5.0)
    # without a head, the loss falls back to the cosine
    alone = agreement(_Session(), reference, quantized)
    assert alone.action_errors is None and alone.loss == pytest.approx(1 - alone.worst_cosine)


def test_the_search_keeps_the_best_of_all_int8_each_candidate_and_the_helpful_set(tmp_path, dataset):
    """The graph written is the one with the lowest held-out action error among every Conv int8,
    each candidate kept fp32 alone, and the helpful candidates together."""
    policy = tiny_policy()
    export_policy(policy, tmp_path / "fp32", INSTRUCTIONS)
    runtime = Policy.load(tmp_path / "fp32", threads=1, seed=0)
    options = QuantizeOptions(str(dataset), calibration_frames=8, held_out_frames=3)
    source = open_calibration_source(options, runtime.cameras, STATE_DIM)
    feature_feeds, policy_feeds, _ = graph_feeds(runtime, read_frames(source, 11, None), 0)
    held = [1, 5, 9]

    def actions(position, features):
        return runtime.policy_session.run(None, {**policy_feeds[held[position]], "features": features})[0]

    held_feeds = [feature_feeds[i] for i in held]
    out = tmp_path / "int8.onnx"
    result = quantize_features(
        tmp_path / "fp32" / "features.onnx",
        out,
        [feed for i, feed in enumerate(feature_feeds) if i not in held],
        held_feeds,
        runtime.custom_ops_library,
        candidates=3,
        keep_fp32=2,
        actions=actions,
    )
    assert len(result.sensitivity) == 3 and len(result.fp32_nodes) <= 2
    singles = [result.all_int8.loss - gain for gain in result.sensitivity.values()]
    assert result.held_out.loss <= min([result.all_int8.loss, *singles]) + 1e-9
    assert result.held_out.action_errors is not None and len(result.held_out.action_errors) == 3
    # what was written is what was measured (against the fp32 graph opened as the search opens it)
    fp32_session = cpu_session(tmp_path / "fp32" / "features.onnx", runtime.custom_ops_library)
    reference = [fp32_session.run(None, feed)[0] for feed in held_feeds]
    expected = [actions(i, f) for i, f in enumerate(reference)]
    written = agreement(
        cpu_session(out, runtime.custom_ops_library), reference, held_feeds, actions, expected
    )
    assert written.loss == pytest.approx(result.held_out.loss, rel=1e-6, abs=1e-9)


def test_the_manifest_records_the_quantisation_and_its_calibration(quantized, dataset):
    _, folder = quantized
    manifest = Manifest.read(folder)
    record = manifest.quantization
    assert record.scheme == "int8-hybrid" and record.static.op_types == ("Conv",)
    assert record.dynamic.op_types == ("MatMul", "Gemm")
    calibration = record.calibration
    assert calibration.dataset == str(dataset.resolve())
    assert calibration.video_keys == {camera: f"observation.images.{camera}" for camera in CAMERAS}
    assert (calibration.frames, calibration.held_out_frames) == (8, 3)
    assert calibration.state == "observation.state" and calibration.instructions == tuple(INSTRUCTIONS)
    # one candidate measured per allowed slot at most, the kept one among them
    assert (
        len(record.fp32_node_gains) <= OPTIONS["candidates"]
        and len(record.fp32_nodes) <= OPTIONS["keep_fp32"]
    )
    assert record.held_out.feature_cosine_min > 0.99
    assert record.held_out.normalized_action_max_abs < QUANTIZED_PARITY_TOLERANCE["normalized_actions"]
    assert manifest.parity.tolerance == QUANTIZED_PARITY_TOLERANCE
    assert manifest.parity.features_relative_max_abs <= QUANTIZED_PARITY_TOLERANCE["features_relative"]


def test_the_int8_policy_acts_close_to_torch_within_the_documented_tolerance(quantized):
    policy, folder = quantized
    runtime = Policy.load(folder, threads=1, seed=0)
    rng = np.random.default_rng(3)
    observation = {
        "corner": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        "state": rng.normal(size=STATE_DIM),
    }
    noise = runtime.sample_noise(np.random.default_rng(4))
    actions = runtime.act(observation, INSTRUCTIONS[0], noise=noise)
    pixels, _ = policy.observation_tensors(observation)
    expected = reference_actions(
        policy, pixels, INSTRUCTIONS[0], observation["state"], noise["features"], noise["actions"]
    )
    normalizer = runtime.action_normalizer
    error = np.abs(normalizer.normalize(actions) - normalizer.normalize(expected)).max()
    assert 0 < error < QUANTIZED_PARITY_TOLERANCE["normalized_actions"]


def test_the_cli_summary_names_the_int8_graph(quantized):
    _, folder = quantized
    text = summary(folder / "manifest.json")
    assert "UNet up-blocks [0, 1]" in text and "int8 (int8-hybrid)" in text and "feature cosine >=" in text


def _no_export_happened(folder):
    return not (folder / "features.onnx").exists() and not (folder / "manifest.json").exists()


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("{root}/nowhere", {}, r"nowhere is not a folder"),
        ("{root}/not-lerobot", {}, r"not a readable LeRobot v3 dataset"),
        ("{root}/empty", {}, r"holds no frames \(0 episodes\); record some first"),
        (
            "{root}/other-cameras",
            {},
            r"no video for camera 'corner' \(looked for 'corner'\); its video keys are",
        ),
        (
            "{root}/demos#observation.images.corner",
            {},
            r"names 1 camera keys .* give one video key per camera",
        ),
        ("{root}/demos#corner,top", {}, r"no video for camera 'wrist' \(looked for 'top'\)"),
        ("{root}/demos", {"calibration_frames": 20}, r"has 16 frames; calibration needs 20 \+ 3 held out"),
    ],
    ids=["missing", "not-lerobot", "empty", "wrong-cameras", "too-few-keys", "unknown-key", "too-few-frames"],
)
def test_bad_calibration_data_is_refused_before_any_export_work(tmp_path, dataset, spec, options, message):
    root = dataset.parent
    (root / "not-lerobot").mkdir(exist_ok=True)
    if not (root / "empty").exists():
        write_dataset(root / "empty", episodes=0)
    if not (root / "other-cameras").exists():
        write_dataset(root / "other-cameras", cameras=("top", "side"), episodes=1, length=4)
    out = tmp_path / "artifact"
    quantize = QuantizeOptions(spec.format(root=root), **{"held_out_frames": 3, **options})
    with pytest.raises(CalibrationDataError, match=message):
        export_policy(tiny_policy(), out, INSTRUCTIONS, quantize=quantize)
    assert _no_export_happened(out)


def test_the_calibration_spec_and_options_are_checked():
    assert split_calibration_spec("/data/demos") == (split_calibration_spec("/data/demos")[0], None)
    path, keys = split_calibration_spec("/data/demos#top, observation.images.wrist")
    assert str(path) == "/data/demos" and keys == ["top", "observation.images.wrist"]
    with pytest.raises(CalibrationDataError, match="an empty camera key"):
        split_calibration_spec("/data/demos#top,")
    with pytest.raises(CalibrationDataError, match="names no dataset folder"):
        split_calibration_spec("#top")
    with pytest.raises(CalibrationDataError, match=r"calibration_frames=0; expected an integer >= 1"):
        QuantizeOptions("/data/demos", calibration_frames=0)
    with pytest.raises(CalibrationDataError, match=r"candidates=-1; expected an integer >= 0"):
        QuantizeOptions("/data/demos", candidates=-1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quantize", "int8"], "--quantize int8 needs --calibration-data"),
        (["--calibration-data", "/data/demos"], "--calibration-data is for --quantize int8"),
        (
            ["--quantize", "int8", "--calibration-data", "/d", "--calibration-frames", "0"],
            "calibration_frames=0",
        ),
        (["--quantize", "int4", "--calibration-data", "/d"], "invalid choice: 'int4'"),
    ],
    ids=["no-data", "no-quantize", "zero-frames", "int4"],
)
def test_the_cli_refuses_incomplete_quantisation_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        export_cli([str(tmp_path / "policy"), "--out", str(tmp_path / "out"), "--instruction", "go", *argv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fused_op_schemas_let_shape_inference_see_past_the_custom_ops():
    """Without them a tensor after a vpp.fused node has no type (static quantisation then fails
    on bias scales); inside the context it has its input's; afterwards ONNX forgets them again."""
    nodes = [
        helper.make_node(
            "GroupNorm", ["x", "w", "b"], ["n"], domain=FUSED_DOMAIN, num_groups=2, epsilon=1e-5, silu=1
        ),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0] * 4),
            helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(FUSED_DOMAIN, 1)]
    )

    def inferred():
        infos = onnx.shape_inference.infer_shapes(model).graph.value_info
        return {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim] for info in infos}

    assert "n" not in inferred()
    with fused_op_schemas():
        assert inferred()["n"] == [1, 4, 3, 3]
    assert "n" not in inferred() and not onnx.defs.has("GroupNorm", FUSED_DOMAIN)


def test_an_early_exit_policy_traces_only_the_up_blocks_it_reads(tmp_path):
    """The official code's early exit (features.blocks up to 1 of more up-blocks; the tiny UNet
    has two, so it stops after up-block 0 here): the exported graph holds no node of a later
    up-block, and it still matches torch."""
    policy = tiny_policy(features={"blocks": (0,)})
    manifest_path = export_policy(policy, tmp_path, INSTRUCTIONS)
    graph = onnx.load(str(tmp_path / "features.onnx")).graph
    names = [node.name for node in graph.node]
    assert any("/up_blocks.0/" in name for name in names)
    assert not any("/up_blocks.1/" in name for name in names)
    manifest = Manifest.read(tmp_path)
    assert manifest.features.shape[3] == policy.tvp.config.feature_channels
    assert "UNet up-blocks [0]" in summary(manifest_path)
    runtime = Policy.load(tmp_path, threads=1, seed=0)
    rng = np.random.default_rng(1)
    observation = {camera: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for camera in CAMERAS}
    observation["state"] = rng.normal(size=STATE_DIM)
    noise = runtime.sample_noise(np.random.default_rng(2))
    pixels, _ = policy.observation_tensors(observation)
    expected = reference_actions(
        policy, pixels, INSTRUCTIONS[0], observation["state"], noise["features"], noise["actions"]
    )
    assert np.abs(runtime.act(observation, INSTRUCTIONS[0], noise=noise) - expected).max() < 1e-4


def test_a_shorter_feature_pass_exports_and_matches_torch(tmp_path):
    """features.frames: the artifact's feature noise and features hold that many frames, and the
    runtime still reproduces torch."""
    policy = tiny_policy(features={"frames": 4})
    export_policy(policy, tmp_path, INSTRUCTIONS)
    manifest = Manifest.read(tmp_path)
    assert manifest.features.shape[2] == 4 and policy.head.config.video_former.num_frames == 4
    runtime = Policy.load(tmp_path, threads=1, seed=0)
    rng = np.random.default_rng(1)
    observation = {camera: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for camera in CAMERAS}
    observation["state"] = rng.normal(size=STATE_DIM)
    noise = runtime.sample_noise(np.random.default_rng(2))
    assert noise["features"].shape[2] == 4
    pixels, _ = policy.observation_tensors(observation)
    expected = reference_actions(
        policy, pixels, INSTRUCTIONS[0], observation["state"], noise["features"], noise["actions"]
    )
    assert np.abs(runtime.act(observation, INSTRUCTIONS[0], noise=noise) - expected).max() < 1e-4


def test_ort_quantiser_chatter_is_dropped_but_vpp_logs_and_real_warnings_pass(caplog):
    import logging

    from vpp.export.quantize import _quiet_ort_root_logging

    caplog.set_level(logging.INFO)
    ort_style = logging.getLogger()  # ORT's quantiser logs through the module-level functions, on root
    with _quiet_ort_root_logging():
        ort_style.info('Quantization parameters for tensor:"x" not specified')
        ort_style.warning("Please consider to run pre-processing before quantization.")
        ort_style.warning("something ORT really warns about")
        logging.getLogger("vpp.export.quantize").info("a vpp progress line")
    ort_style.info("after the context, root INFO passes again")
    assert [record.getMessage() for record in caplog.records] == [
        "something ORT really warns about",
        "a vpp progress line",
        "after the context, root INFO passes again",
    ]

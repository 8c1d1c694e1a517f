"""Export a tiny VideoPredictionPolicy, run it with the torch-free runtime, compare with PyTorch."""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vpp.export.cli import main as export_cli
from vpp.export.writer import ExportError, export_policy, reference_actions, tokenizer_data
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
from vpp.runtime.manifest import MANIFEST_SHA256, Manifest, ManifestGraphMismatchError, sha256_file
from vpp.runtime.policy import Policy, UnknownInstructionError, resize_frames
from vpp.tvp.data.mixture import resize_frames as torch_resize_frames
from vpp.tvp.model import TextGuidedVideoPredictor

REPO = Path(__file__).resolve().parents[3]
INSTRUCTIONS = ["open the drawer", "close the window"]


def tiny_policy(cameras=("corner", "wrist"), state_dim=3, **config):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tvp = TextGuidedVideoPredictor.from_preset("tiny")
    rng = np.random.default_rng(0)
    cfg = VPPConfig(cameras=list(cameras), action_dim=4, chunk=4, state_dim=state_dim, **config)
    states = rng.normal(size=(50, state_dim)) if state_dim is not None else None
    return VideoPredictionPolicy.build(
        tvp, cfg, rng.normal(size=(50, 4)) * 3 + 1, states, head_preset="tiny"
    ).eval()


def observation(rng, state_dim=3):
    obs = {
        # non-square and off-size frames exercise the numpy crop + antialiased resize
        "corner": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
    }
    if state_dim is not None:
        obs["state"] = rng.normal(size=state_dim)
    return obs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    policy = tiny_policy()
    folder = tmp_path_factory.mktemp("artifact")
    export_policy(policy, folder, INSTRUCTIONS)
    return policy, folder


def torch_actions(policy, obs, instruction, noise):
    pixels, _ = policy.observation_tensors(obs)
    return reference_actions(
        policy, pixels, instruction, obs.get("state"), noise.get("features"), noise["actions"]
    )


def assert_runtime_matches_torch(runtime, policy, obs, instruction="push the button", seed=4):
    """The artifact's chunk and the torch policy's, from the same noise draw, agree to 1e-4."""
    noise = runtime.sample_noise(np.random.default_rng(seed))
    actions = runtime.act(obs, instruction, noise=noise)
    assert np.abs(actions - torch_actions(policy, obs, instruction, noise)).max() < 1e-4


def test_runtime_matches_torch_with_the_same_noise(exported):
    policy, folder = exported
    runtime = Policy.load(folder, threads=1, seed=0)
    rng = np.random.default_rng(1)
    # the last one is not cached: it goes through the tokenizer and text_encoder.onnx
    for instruction in [*INSTRUCTIONS, "Pick up the RED block, then place it."]:
        obs = observation(rng)
        noise = runtime.sample_noise(np.random.default_rng(2))
        actions = runtime.act(obs, instruction, noise=noise)
        expected = torch_actions(policy, obs, instruction, noise)
        assert actions.shape == (4, 4) and actions.dtype == np.float32
        assert np.abs(actions - expected).max() < 1e-4
    # fresh noise from the policy's own generator changes the chunk; the same seed repeats it
    a, b = runtime.act(obs, INSTRUCTIONS[0]), runtime.act(obs, INSTRUCTIONS[0])
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(
        Policy.load(folder, seed=5).act(obs, INSTRUCTIONS[0]),
        Policy.load(folder, seed=5).act(obs, INSTRUCTIONS[0]),
    )


def test_act_hands_the_features_over_bound_and_equals_two_plain_runs(exported):
    _, folder = exported
    runtime = Policy.load(folder, threads=1, seed=0)
    assert runtime.device == "cpu"
    obs = observation(np.random.default_rng(3))
    noise = runtime.sample_noise(np.random.default_rng(4))
    pixels, state = runtime.preprocess(obs)
    hidden, pooled = runtime.text(INSTRUCTIONS[1])
    features = runtime.feature_session.run(
        None, {"images": pixels, "text_hidden": hidden, "noise": noise["features"]}
    )[0]
    normalized = runtime.policy_session.run(
        None, {"features": features, "lang": pooled, "noise": noise["actions"], "state": state}
    )[0]
    expected = runtime.action_normalizer.denormalize(normalized[0].astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(runtime.act(obs, INSTRUCTIONS[1], noise=noise), expected)


def test_the_views_run_one_per_call_on_parallel_threads_as_torch_runs_them_together(exported):
    """features.onnx keeps a symbolic view axis: the runtime may run each camera's feature pass
    on its own thread (docs/runtime.md), and still matches PyTorch's batched pass."""
    policy, folder = exported
    graph = onnx.load(str(folder / "features.onnx"), load_external_data=False).graph
    for value in [*graph.input, *graph.output]:
        if value.name != "text_hidden":
            assert value.type.tensor_type.shape.dim[1].dim_param == "views", value.name
    assert Manifest.read(folder).features.view_axis == "views"
    runtime = Policy.load(folder, threads=2, seed=0, parallel_views=True)
    together = Policy.load(folder, threads=1, seed=0, parallel_views=False)
    obs = observation(np.random.default_rng(6))
    assert_runtime_matches_torch(runtime, policy, obs, INSTRUCTIONS[0])
    noise = runtime.sample_noise(np.random.default_rng(7))
    np.testing.assert_allclose(
        runtime.act(obs, INSTRUCTIONS[0], noise=noise),
        together.act(obs, INSTRUCTIONS[0], noise=noise),
        atol=1e-5,
    )


def test_manifest_records_shapes_hashes_and_parity(exported):
    policy, folder = exported
    manifest = Manifest.read(folder)
    assert (
        folder / MANIFEST_SHA256
    ).read_text() == f"{sha256_file(folder / 'manifest.json')}  manifest.json\n"
    on_disk = {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith("manifest.json")
    }
    assert (
        set(manifest.files)
        == on_disk
        >= {"features.onnx", "policy.onnx", "text/hidden.npy", "text/pooled.npy"}
    )
    assert all(sha256_file(folder / name) == digest for name, digest in manifest.files.items())
    assert manifest.cameras == ("corner", "wrist") and manifest.image_size == policy.tvp.config.image_size
    assert manifest.action.normalizer.low == tuple(policy.action_normalizer.low.tolist())
    assert manifest.sampler.sigmas == tuple(policy.head.diffusion.sigmas().tolist())
    assert manifest.text.instructions == tuple(INSTRUCTIONS)
    assert manifest.producer == "vpp-export" and Manifest.from_json(manifest.to_json()) == manifest
    rewrites = manifest.graphs.features.rewrites
    cross_attentions = [name for name, _ in policy.tvp.unet.named_modules() if name.endswith(".attn2")]
    temporal = [name for name in cross_attentions if ".temporal_transformer_blocks." in name]
    # every temporal cross-attention attends once per video; the spatial ones' key and value
    # projections moved in front of the per-frame broadcast
    assert temporal and rewrites["temporal_cross_attention_folded"] == len(temporal)
    assert rewrites["projected_before_broadcast"] == 2 * (len(cross_attentions) - len(temporal)) > 0
    # every GEGLU feed-forward (spatial ff, temporal ff_in and ff) exported as two projections
    from diffusers.models.activations import GEGLU

    geglus = sum(isinstance(m, GEGLU) for m in policy.tvp.unet.modules())
    assert geglus > 0 and rewrites["geglu_split"] == geglus
    # every UNet attention is one ORT MultiHeadAttention node, and no Softmax is left in the UNet
    attentions = [name for name, _ in policy.tvp.unet.named_modules() if name.endswith((".attn1", ".attn2"))]
    assert rewrites["multi_head_attention_nodes"] == len(attentions)
    graph = onnx.load(str(folder / "features.onnx")).graph
    assert sum(
        node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft" for node in graph.node
    ) == len(attentions)
    # every GroupNorm (VAE encoder and UNet) is one vpp.fused node, most with the SiLU after it
    norms = [node for node in graph.node if node.domain == "vpp.fused" and node.op_type == "GroupNorm"]
    assert norms and not any(node.op_type == "InstanceNormalization" for node in graph.node)
    assert rewrites["fused_group_norms"] == len(norms) and 0 < rewrites["silu_folded_into_group_norm"] < len(
        norms
    )
    assert rewrites["fused_geglu"] == 0  # opt-in (export_policy(fused_geglu=True)): no faster on the CPU
    assert manifest.graphs.features.custom_ops.to_json_dict() == {
        "domain": "vpp.fused",
        "ops": {"GroupNorm": len(norms)},
    }
    assert not [
        node.name for node in graph.node if node.op_type == "Softmax" and node.name.startswith("/unet/")
    ]
    parity = manifest.parity
    assert 0 <= parity.policy_max_abs <= parity.tolerance["normalized_actions"]
    assert 0 <= parity.end_to_end_normalized_max_abs <= parity.tolerance["normalized_actions"]
    assert 0 <= parity.features_relative_max_abs <= parity.tolerance["features_relative"]
    assert 0 <= parity.text_max_abs <= parity.tolerance["text"]


def test_fixed_feature_noise_without_state(tmp_path):
    policy = tiny_policy(cameras=("corner",), state_dim=None, feature_noise="fixed", feature_seed=3)
    export_policy(policy, tmp_path, ["push the button"], text_encoder=False)
    assert not (tmp_path / "text_encoder.onnx").exists()
    runtime = Policy.load(tmp_path, threads=1)
    np.testing.assert_array_equal(runtime.fixed_feature_noise, policy.feature_noise(1).numpy())
    obs = {"corner": np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    assert_runtime_matches_torch(runtime, policy, obs)
    with pytest.raises(
        UnknownInstructionError,
        match=r"'open the door' is not in .* no text encoder; it holds \['push the button'\]",
    ):
        runtime.act(obs, "open the door")


def test_head_options_export_with_parity(tmp_path):
    # the position code is computed from the feature grid's shape; the null state token is a
    # training-only parameter that the exported sampler never reads; the feature statistics are
    # buffers the exported graph applies
    policy = tiny_policy(
        cameras=("corner", "wrist"),
        feature_position_embedding=True,
        state_dropout=0.5,
        standardize_features=True,
    )
    # statistics far from the identity, so that a graph without them could not match
    shape = policy.head.config.feature_shape
    generator = torch.Generator().manual_seed(0)
    policy.head.set_feature_statistics(
        torch.randn(shape, generator=generator), torch.rand(shape, generator=generator) + 0.1
    )
    export_policy(policy, tmp_path, ["push the button"], text_encoder=False)
    runtime = Policy.load(tmp_path, threads=1)
    obs = observation(np.random.default_rng(0))
    assert_runtime_matches_torch(runtime, policy, obs)


def test_vae_encoder_artifact_takes_no_feature_noise(tmp_path):
    policy = tiny_policy(state_dim=None, encoder="vae")
    export_policy(policy, tmp_path, ["push the button"], text_encoder=False)
    runtime = Policy.load(tmp_path, threads=1)
    obs = observation(np.random.default_rng(0), state_dim=None)
    assert set(runtime.sample_noise(np.random.default_rng(4))) == {"actions"} and [
        i.name for i in runtime.feature_session.get_inputs()
    ] == ["images"]
    # the UNet is not in this graph: no UNet rewrite is claimed
    rewrites = Manifest.read(tmp_path).graphs.features.rewrites
    unet_rewrites = (
        "projected_before_broadcast",
        "geglu_split",
        "temporal_cross_attention_folded",
        "multi_head_attention_nodes",
    )
    unet_rewrites += ("fused_geglu",)
    assert {name: rewrites[name] for name in unet_rewrites} == dict.fromkeys(unet_rewrites, 0)
    # the VAE encoder's GroupNorms are fused kernels all the same
    vae_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in policy.tvp.vae.encoder.modules())
    assert rewrites["fused_group_norms"] == vae_norms > 0
    assert_runtime_matches_torch(runtime, policy, obs)


def test_standard_ops_only_artifact(tmp_path):
    policy = tiny_policy(cameras=("corner",), state_dim=None)
    export_policy(
        policy, tmp_path, ["push the button"], text_encoder=False, attention_nodes=False, fused_kernels=False
    )
    graph = onnx.load(str(tmp_path / "features.onnx")).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    features = Manifest.read(tmp_path).graphs.features
    rewrites = features.rewrites
    assert rewrites["multi_head_attention_nodes"] == 0 and rewrites["temporal_cross_attention_folded"] > 0
    assert rewrites["fused_group_norms"] == rewrites["fused_geglu"] == 0 and features.custom_ops is None
    runtime = Policy.load(tmp_path, threads=1)
    obs = {"corner": np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    assert_runtime_matches_torch(runtime, policy, obs)


def test_export_fails_loudly_above_tolerance(tmp_path):
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_policy(
            tiny_policy(cameras=("corner",), state_dim=None),
            tmp_path,
            ["x"],
            tolerance={"features_relative": 0.0, "normalized_actions": 0.0, "text": 0.0},
        )
    # no manifest: the folder is not an artifact the runtime would load
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / MANIFEST_SHA256).exists()


def test_a_manifest_that_disagrees_with_its_graphs_fails_at_load(exported, tmp_path):
    """The manifest is rewritten with a valid sidecar, so only the graph check can catch it."""
    _, folder = exported
    manifest = Manifest.read(folder)
    action = dataclasses.replace(manifest.action, chunk=8)
    dataclasses.replace(manifest, action=action).write(tmp_path)
    for name in manifest.files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(
        ManifestGraphMismatchError,
        match=r"'action.chunk'.*policy.onnx's input 'noise' has shape \[1, 4, 4\]; the manifest implies \[1, 8, 4\]",
    ):
        Policy.load(tmp_path)


TOKENIZER_PROBES = [
    "Open the drawer!",
    "  pick up  the RED block, then place it.",
    "it's 3 cups",
    "café naïve",
    "a_b-c",
    "x" * 40,
    "-_-'s!'ll",
    "move 12.5cm\tleft\n",
    "Ünïcödé ÀB",
    "",
    "don't stop",
    "<|endoftext|> the end",
]


def test_tokenizer_matches_transformers(tmp_path):
    from transformers import CLIPTokenizer

    from vpp.runtime.tokenizer import ClipTokenizer
    from vpp.tvp.text import byte_vocabulary

    # the tiny preset's merge-free byte vocabulary, and a vocabulary with merges as real CLIP has
    vocab = byte_vocabulary()
    merges = [
        "t h",
        "th e</w>",
        "o p",
        "e n</w>",
        "op en</w>",
        "d r",
        "a w",
        "dr aw",
        "e r</w>",
        "draw er</w>",
        "c a",
        "ca f",
    ]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    with_merges = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    policy = tiny_policy(cameras=("corner",), state_dim=None)
    for reference in (policy.tvp.tokenizer, with_merges):
        policy.tvp.tokenizer = reference
        data = tokenizer_data(policy)
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps(data))
        ours = ClipTokenizer.load(path)
        for text in TOKENIZER_PROBES:
            assert ours(text) == policy.tvp.tokenize([text])[0].tolist(), text
    assert len(data["merges"]) == len(merges) and ours("open the drawer")[1:4] == [
        vocab["open</w>"],
        vocab["the</w>"],
        vocab["drawer</w>"],
    ]


def test_numpy_resize_matches_torch():
    rng = np.random.default_rng(0)
    for shape in [(2, 48, 64, 3), (1, 20, 20, 3), (1, 100, 70, 3), (1, 32, 32, 3)]:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(
            resize_frames(frames, 32), torch_resize_frames(frames, 32).numpy(), rtol=0, atol=2e-6
        )


def test_cli_export_round_trip(tmp_path):
    policy = tiny_policy(cameras=("corner",), state_dim=None)
    policy.save_pretrained(tmp_path / "policy")
    (tmp_path / "instructions.txt").write_text("lift the block\n\nopen the drawer\n")
    export_cli(
        [
            str(tmp_path / "policy"),
            "--out",
            str(tmp_path / "artifact"),
            "--instructions",
            str(tmp_path / "instructions.txt"),
            "--instruction",
            "stack the cups",
        ]
    )
    assert Policy.load(tmp_path / "artifact").instructions == [
        "stack the cups",
        "lift the block",
        "open the drawer",
    ]


@pytest.mark.slow
def test_artifact_runs_in_a_clean_venv_without_torch(exported, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # vpp-runtime itself, built from its source as `pip install vpp-runtime[cpu]` builds it: the
    # custom-op library that the artifact's fused GroupNorm nodes need; vpp-data, a dependency
    # that no index has, from its folder.
    install = [f"{REPO / 'packages' / 'runtime'}[cpu]", str(REPO / "packages" / "data")]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *install], check=True, timeout=900)
    policy, folder = exported
    obs = observation(np.random.default_rng(7))
    np.savez(tmp_path / "obs.npz", **obs)
    script = (
        "import importlib.util, sys, numpy as np\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is importable'\n"
        "from vpp.runtime.policy import Policy\n"
        f"policy = Policy.load({str(folder)!r}, threads=1)\n"
        f"assert policy.custom_ops_library.is_relative_to({str(venv)!r}), policy.custom_ops_library\n"
        f"obs = dict(np.load({str(tmp_path / 'obs.npz')!r}))\n"
        "noise = policy.sample_noise(np.random.default_rng(3))\n"
        f"np.save({str(tmp_path / 'actions.npy')!r}, policy.act(obs, 'open the drawer', noise=noise))\n"
        "assert policy.act(obs, 'wipe the table').shape == (4, 4)\n"
        "assert not {'torch', 'transformers', 'regex'} & set(sys.modules), sorted(sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-c", script], check=True, env=env, cwd=tmp_path)
    noise = Policy.load(folder).sample_noise(np.random.default_rng(3))
    expected = torch_actions(policy, obs, "open the drawer", noise)
    assert np.abs(np.load(tmp_path / "actions.npy") - expected).max() < 1e-4


def test_fused_kernels_without_the_custom_op_library_fail_clearly(exported, monkeypatch, tmp_path):
    from vpp.runtime import custom_ops

    monkeypatch.setattr(custom_ops, "ort_ops_library", lambda: None)
    with pytest.raises(
        custom_ops.CustomOpsUnavailableError, match=r"vpp.fused custom ops \(GroupNorm\).*--standard-ops-only"
    ):
        Policy.load(exported[1])
    # export looks the library up as the runtime does, before tracing anything
    policy = tiny_policy(cameras=("corner",), state_dim=None)
    with pytest.raises(ExportError, match=r"built without libvpp_ort_ops.so.*fused_kernels=False"):
        export_policy(policy, tmp_path, ["x"])
    monkeypatch.undo()
    monkeypatch.setenv(custom_ops.ENVIRONMENT_VARIABLE, str(tmp_path / "moved.so"))
    with pytest.raises(ExportError, match=r"moved.so: no such file.*fused_kernels=False"):
        export_policy(policy, tmp_path, ["x"])
    assert not list(tmp_path.iterdir())


def test_fused_geglu_artifact(tmp_path):
    """export_policy(fused_geglu=True): every GEGLU activation is one vpp.fused.GeGLU node, and
    the runtime's actions still match PyTorch's."""
    from diffusers.models.activations import GEGLU

    policy = tiny_policy(cameras=("corner",), state_dim=None)
    export_policy(policy, tmp_path, ["push the button"], text_encoder=False, fused_geglu=True)
    features = Manifest.read(tmp_path).graphs.features
    geglus = sum(isinstance(m, GEGLU) for m in policy.tvp.unet.modules())
    assert geglus > 0 and features.rewrites["fused_geglu"] == geglus == features.custom_ops.ops["GeGLU"]
    graph = onnx.load(str(tmp_path / "features.onnx")).graph
    assert not any(node.op_type == "Erf" for node in graph.node)
    runtime = Policy.load(tmp_path, threads=1)
    obs = {"corner": np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    assert_runtime_matches_torch(runtime, policy, obs)


def test_a_cuda_provider_without_cuda_kernels_for_the_custom_ops_is_warned_about(exported, caplog):
    from vpp.runtime import custom_ops

    if "CUDAExecutionProvider" in custom_ops.library_ops(custom_ops.ort_ops_library())["GroupNorm"]:
        pytest.skip("this vpp-runtime was built with the CUDA kernels")
    with caplog.at_level("WARNING", logger="vpp.runtime.policy"):
        # onnxruntime without CUDA falls back to the CPU provider, with a warning of its own
        Policy.load(exported[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    assert any(
        "no CUDA kernel for vpp.fused ['GroupNorm']" in record.getMessage() for record in caplog.records
    )

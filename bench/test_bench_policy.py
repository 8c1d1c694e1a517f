"""PyTorch eager vs the exported artifact on ONNX Runtime, tiny and small presets, 2 camera
views, timed side by side in one run:

    .venv/bin/python -m pytest bench/test_bench_policy.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results/policy_cpu.json

Groups, per preset: ``end-to-end`` (uint8 observation + instruction -> denormalised chunk:
``VideoPredictionPolicy.predict_action_chunk`` vs ``vpp.runtime.Policy.act``), ``features``
(the VAE encode and the UNet forward to the hooked up-blocks: ``predictive_features`` vs
``features.onnx``) and ``head`` (features -> normalised chunk with the 10-step DDIM loop:
``PolicyHead.sample`` vs ``policy.onnx``). Both sides use one thread: the bench machine is a
shared 2-core VM, where two threads per process measured noise. Each benchmark first checks the
two sides agree, so ``--benchmark-disable`` (the test suite's smoke run) is a parity test.
``bench/components.py`` splits the same graphs further, into the per-component table.

Groups ``artifact variants {preset}, N thread(s)`` time ``Policy.act`` of eight artifacts side by
side, on one and on two ORT threads: ``fp32`` (the artifact above), ``int8`` (``--quantize int8``,
calibrated on a LeRobot dataset written here; 2 fp32 candidates measured, at most 1 kept, to bound
the export time), ``early-exit`` (a policy whose TVP reads up-blocks (0, 1), the official code's
early exit, as the small UNet's three up-blocks allow; (0,) of the tiny UNet's two) and
``early-exit+int8``, the ``int8-dynamic`` pair (``--quantize int8-dynamic``: the matrix products
alone), and ``early-exit+4-frames`` with its int8 hybrid (``--feature-frames 4``: the feature pass
runs 4 of the TVP's 8 frames). Closed-loop parity of each: docs/quantization.md. Each
first checks its chunk against PyTorch from the same noise (int8 within
``QUANTIZED_PARITY_TOLERANCE``, in normalised units). On two threads the runtime runs the two
views' feature passes one per thread (``parallel_views``, its default with two threads).

Under ``--benchmark-disable`` (the test suite) the ``small`` preset's variants are skipped: the
``tiny`` preset's run the same export, quantisation and parity code, and building the small
ones took ~3 of CI's minutes for no other check.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vpp.data.lerobot import LeRobotDatasetWriter  # noqa: E402
from vpp.export.quantize import QuantizeOptions  # noqa: E402
from vpp.export.writer import QUANTIZED_PARITY_TOLERANCE, export_policy, reference_actions  # noqa: E402
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig  # noqa: E402
from vpp.runtime import Policy  # noqa: E402
from vpp.tvp.features import predictive_features  # noqa: E402
from vpp.tvp.model import TextGuidedVideoPredictor  # noqa: E402

INSTRUCTION = "open the drawer"
# Calls before the timed rounds: a session's first runs grow ORT's memory arena and touch new
# pages (1.3-2x slower), and pytest-benchmark's few rounds of the slow cases would keep them.
WARM_UP_CALLS = 3


def timed(benchmark, fn, *args):
    for _ in range(WARM_UP_CALLS):
        fn(*args)
    return benchmark(fn, *args)


IMPLEMENTATIONS = ["torch-eager", "onnxruntime"]
# The small preset's export alone takes ~30 s on 2 cores.
PRESETS = ["tiny", pytest.param("small", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=PRESETS)
def policies(request, tmp_path_factory):
    preset = request.param
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tvp = TextGuidedVideoPredictor.from_preset(preset)
    rng = np.random.default_rng(0)
    config = VPPConfig(cameras=["corner", "wrist"], action_dim=7, chunk=10, state_dim=7)
    eager = VideoPredictionPolicy.build(
        tvp, config, rng.normal(size=(100, 7)), rng.normal(size=(100, 7)), head_preset=preset
    ).eval()
    folder = tmp_path_factory.mktemp(f"artifact-{preset}")
    export_policy(eager, folder, [INSTRUCTION])
    runtime = Policy.load(folder, threads=1, seed=0)
    runtime.folder = folder
    side = 2 * tvp.config.image_size
    observation = {
        "corner": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "state": rng.normal(size=7),
    }
    return preset, eager, runtime, observation


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_end_to_end(benchmark, policies, implementation):
    preset, eager, runtime, observation = policies
    benchmark.group = f"end-to-end {preset} 2 views"
    noise = runtime.sample_noise(np.random.default_rng(1))
    pixels, _ = eager.observation_tensors(observation)
    expected = reference_actions(
        eager, pixels, INSTRUCTION, observation["state"], noise["features"], noise["actions"]
    )
    np.testing.assert_allclose(
        runtime.act(observation, INSTRUCTION, noise=noise), expected, rtol=0, atol=1e-4
    )
    if implementation == "torch-eager":
        generator = torch.Generator().manual_seed(0)
        timed(benchmark, eager.predict_action_chunk, observation, INSTRUCTION, generator)
    else:
        timed(benchmark, runtime.act, observation, INSTRUCTION)


@pytest.mark.parametrize("implementation", [*IMPLEMENTATIONS, "onnxruntime-views-in-one-call"])
def test_bench_end_to_end_on_both_cores(benchmark, policies, implementation):
    """The same, with two threads on each side: what a robot PC with this CPU and nothing
    else to run would see (noisier on the shared bench VM than the one-thread groups).
    ``onnxruntime`` runs the two views' feature passes one per thread (``parallel_views``, the
    runtime's choice here); ``onnxruntime-views-in-one-call`` both in one call on ORT's two
    intra-op threads, as before 2026-12-03."""
    preset, eager, runtime, observation = policies
    benchmark.group = f"end-to-end {preset} 2 views, 2 threads"
    two_threads = Policy.load(
        runtime.folder, threads=2, seed=0, parallel_views=implementation == "onnxruntime"
    )
    assert two_threads.parallel_views == (implementation == "onnxruntime")
    noise = runtime.sample_noise(np.random.default_rng(1))
    np.testing.assert_allclose(
        two_threads.act(observation, INSTRUCTION, noise=noise),
        runtime.act(observation, INSTRUCTION, noise=noise),
        rtol=0,
        atol=1e-5,
    )
    torch.set_num_threads(2)
    try:
        if implementation == "torch-eager":
            generator = torch.Generator().manual_seed(0)
            timed(benchmark, eager.predict_action_chunk, observation, INSTRUCTION, generator)
        else:
            timed(benchmark, two_threads.act, observation, INSTRUCTION)
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_features(benchmark, policies, implementation):
    preset, eager, runtime, observation = policies
    benchmark.group = f"features {preset} 2 views (VAE + UNet)"
    feed, _ = runtime.graph_feeds(observation, INSTRUCTION, runtime.sample_noise(np.random.default_rng(1)))
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

    def torch_features():
        with torch.no_grad():
            return predictive_features(
                eager.tvp, tensors["images"], text_hidden=tensors["text_hidden"], noise=tensors["noise"]
            ).numpy()

    expected = torch_features()
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(
        runtime.feature_session.run(None, feed)[0] / scale, expected / scale, rtol=0, atol=1e-4
    )
    if implementation == "torch-eager":
        timed(benchmark, torch_features)
    else:
        timed(benchmark, runtime.feature_session.run, None, feed)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_head(benchmark, policies, implementation):
    preset, eager, runtime, observation = policies
    benchmark.group = f"head {preset} (Video Former + 10 DDIM steps)"
    feature_feed, feed = runtime.graph_feeds(
        observation, INSTRUCTION, runtime.sample_noise(np.random.default_rng(1))
    )
    feed["features"] = runtime.feature_session.run(None, feature_feed)[0]
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

    def torch_head():
        with torch.no_grad():
            return eager.head.sample(
                tensors["features"], tensors["lang"], tensors["state"], noise=tensors["noise"]
            ).numpy()

    np.testing.assert_allclose(runtime.policy_session.run(None, feed)[0], torch_head(), rtol=0, atol=1e-4)
    if implementation == "torch-eager":
        timed(benchmark, torch_head)
    else:
        timed(benchmark, runtime.policy_session.run, None, feed)


VARIANTS = [
    "fp32",
    "int8",
    "int8-dynamic",
    "early-exit",
    "early-exit+int8",
    "early-exit+int8-dynamic",
    "early-exit+4-frames",
    "early-exit+4-frames+int8",
]


def build_policy(preset, rng, **tvp_overrides):
    torch.manual_seed(0)
    tvp = TextGuidedVideoPredictor.from_preset(preset, **tvp_overrides)
    config = VPPConfig(cameras=["corner", "wrist"], action_dim=7, chunk=10, state_dim=7)
    return VideoPredictionPolicy.build(
        tvp, config, rng.normal(size=(100, 7)), rng.normal(size=(100, 7)), head_preset=preset
    ).eval()


def write_calibration_dataset(root, side, frames=24):
    """Two episodes of random frames (the benchmark's observations are random too) and states."""
    features = {
        f"observation.images.{c}": {"dtype": "video", "shape": (side, side, 3)} for c in ("corner", "wrist")
    }
    features["action"] = {"dtype": "float32", "shape": (7,)}
    features["observation.state"] = {"dtype": "float32", "shape": (7,)}
    rng = np.random.default_rng(2)
    with LeRobotDatasetWriter(root, fps=10, features=features) as writer:
        for _ in range(2):
            episode = {
                key: rng.integers(0, 256, (frames // 2, side, side, 3), dtype=np.uint8) for key in features
            }
            episode["action"] = rng.normal(size=(frames // 2, 7)).astype(np.float32)
            episode["observation.state"] = rng.normal(size=(frames // 2, 7)).astype(np.float32)
            writer.add_episode(episode, task=INSTRUCTION)
    return root


@pytest.fixture(scope="module")
def variants(policies, tmp_path_factory):
    """{variant: (torch policy, artifact folder)} for the artifacts of the preset."""
    preset, eager, runtime, _ = policies
    tvp_config = eager.tvp.config
    early_blocks = (0, 1) if tvp_config.num_up_blocks > 2 else (0,)
    early = build_policy(preset, np.random.default_rng(0), features={"blocks": early_blocks})
    short = build_policy(
        preset,
        np.random.default_rng(0),
        features={"blocks": early_blocks, "frames": tvp_config.num_frames // 2},
    )
    calibration = write_calibration_dataset(
        tmp_path_factory.mktemp(f"calibration-{preset}") / "demos", 2 * tvp_config.image_size
    )
    quantize = QuantizeOptions(
        str(calibration), calibration_frames=16, held_out_frames=4, candidates=2, keep_fp32=1
    )
    folders = {"fp32": (eager, runtime.folder)}
    dynamic = dataclasses.replace(quantize, scheme="dynamic")
    for name, policy, options in (
        ("int8", eager, quantize),
        ("int8-dynamic", eager, dynamic),
        ("early-exit", early, None),
        ("early-exit+int8", early, quantize),
        ("early-exit+int8-dynamic", early, dynamic),
        ("early-exit+4-frames", short, None),
        ("early-exit+4-frames+int8", short, quantize),
    ):
        folder = tmp_path_factory.mktemp(f"artifact-{preset}-{name}")
        export_policy(policy, folder, [INSTRUCTION], quantize=options)
        folders[name] = (policy, folder)
    return folders


def check_variant(policy, runtime, observation, variant):
    noise = runtime.sample_noise(np.random.default_rng(1))
    pixels, _ = policy.observation_tensors(observation)
    expected = reference_actions(
        policy, pixels, INSTRUCTION, observation["state"], noise["features"], noise["actions"]
    )
    actions = runtime.act(observation, INSTRUCTION, noise=noise)
    normalizer = runtime.action_normalizer
    error = np.abs(normalizer.normalize(actions) - normalizer.normalize(expected)).max()
    tolerance = QUANTIZED_PARITY_TOLERANCE["normalized_actions"] if "int8" in variant else 1e-4
    assert error < tolerance, f"{variant}: normalised action error {error:.3g} >= {tolerance}"


# slow: building the eight artifacts (five int8 exports with calibration) takes ~4 minutes on 2 cores
@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bench_artifact_variants(request, benchmark, policies, variant, threads):
    preset, _, _, observation = policies
    if preset == "small" and request.config.getoption("benchmark_disable"):
        pytest.skip("the small preset's variants are timed by --benchmark-only; tiny's check their parity")
    variants = request.getfixturevalue("variants")
    benchmark.group = f"artifact variants {preset} 2 views, {threads} thread{'s' if threads > 1 else ''}"
    policy, folder = variants[variant]
    runtime = Policy.load(folder, threads=threads, seed=0)
    check_variant(policy, runtime, observation, variant)
    timed(benchmark, runtime.act, observation, INSTRUCTION)

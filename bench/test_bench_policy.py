"""PyTorch eager vs the exported artifact on ONNX Runtime, tiny preset, 2 camera views, timed
side by side in one run:

    .venv/bin/python -m pytest bench/test_bench_policy.py --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench/results/policy_cpu.json

Groups: ``end-to-end`` (uint8 observation + instruction -> denormalised chunk:
``VideoPredictionPolicy.predict_action_chunk`` vs ``vpp.runtime.Policy.act``) and ``head``
(features -> normalised chunk with the 10-step DDIM loop: ``PolicyHead.sample`` vs
``policy.onnx``). Both sides use one thread: the bench machine is a shared 2-core VM, where two
threads per process measured noise. Each benchmark first checks the two sides agree.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vpp.policy.export import export_policy, reference_actions  # noqa: E402
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig  # noqa: E402
from vpp.runtime import Policy  # noqa: E402
from vpp.tvp.model import TextGuidedVideoPredictor  # noqa: E402

INSTRUCTION = "open the drawer"


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tvp = TextGuidedVideoPredictor.from_preset("tiny")
    rng = np.random.default_rng(0)
    config = VPPConfig(cameras=["corner", "wrist"], action_dim=7, chunk=10, state_dim=7)
    eager = VideoPredictionPolicy.build(tvp, config, rng.normal(size=(100, 7)), rng.normal(size=(100, 7)), head_preset="tiny").eval()
    folder = tmp_path_factory.mktemp("artifact")
    export_policy(eager, folder, [INSTRUCTION])
    runtime = Policy.load(folder, threads=1, seed=0)
    observation = {
        "corner": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "state": rng.normal(size=7),
    }
    return eager, runtime, observation


@pytest.mark.parametrize("implementation", ["torch-eager", "onnxruntime"])
def test_bench_end_to_end(benchmark, policies, implementation):
    eager, runtime, observation = policies
    benchmark.group = "end-to-end tiny 2 views"
    noise = runtime.sample_noise(np.random.default_rng(1))
    pixels, _ = eager.observation_tensors(observation)
    expected = reference_actions(eager, pixels, INSTRUCTION, observation["state"], noise["features"], noise["actions"])
    np.testing.assert_allclose(runtime.act(observation, INSTRUCTION, noise=noise), expected, rtol=0, atol=1e-4)
    if implementation == "torch-eager":
        generator = torch.Generator().manual_seed(0)
        benchmark(eager.predict_action_chunk, observation, INSTRUCTION, generator)
    else:
        benchmark(runtime.act, observation, INSTRUCTION)


@pytest.mark.parametrize("implementation", ["torch-eager", "onnxruntime"])
def test_bench_head(benchmark, policies, implementation):
    eager, runtime, observation = policies
    benchmark.group = "head (10 DDIM steps)"
    pixels, state = runtime.preprocess(observation)
    hidden, pooled = runtime.text(INSTRUCTION)
    noise = runtime.sample_noise(np.random.default_rng(1))
    features = runtime.feature_session.run(None, {"images": pixels, "text_hidden": hidden, "noise": noise["features"]})[0]
    feed = {"features": features, "lang": pooled, "state": state, "noise": noise["actions"]}
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

    def torch_head():
        with torch.no_grad():
            return eager.head.sample(tensors["features"], tensors["lang"], tensors["state"], noise=tensors["noise"]).numpy()

    np.testing.assert_allclose(runtime.policy_session.run(None, feed)[0], torch_head(), rtol=0, atol=1e-4)
    if implementation == "torch-eager":
        benchmark(torch_head)
    else:
        benchmark(runtime.policy_session.run, None, feed)

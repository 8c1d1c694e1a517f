"""bench/gpu/run.sh, the prepared GPU benchmark, checked here by its dry run on the CPU.

``run.sh --dry-run`` runs every stage the GPU machine runs, through the same orchestrator and
the same scripts, with the ``tiny`` preset and two timed calls per variant; the stages that need
a GPU are skipped with the reason. The dry run takes 1-2.5 minutes of the shared 2-core machine
(slow); the option checks and the time-box checks below take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "bench" / "gpu"
STAGES = [
    "wheels",
    "environment",
    "kernels_build",
    "kernels_tests",
    "eager_bf16",
    "eager_fp32",
    "triton_fp32",
    "compile_bf16",
]
VARIANTS = STAGES[4:]
STATUSES = {"ok", "failed", "timeout", "skipped"}


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "VPP_BENCH_PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(GPU / "run.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=environment,
    )


def only_result(folder: Path) -> dict:
    files = sorted(folder.glob("gpu_*.json"))
    assert [f.name for f in files] == ["gpu_cpu-dry-run.json"], files
    return json.loads(files[0].read_text())


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"vpp_bench_gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-dry-run")
    result = run_script("--dry-run", "--results-dir", str(folder))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return only_result(folder)


@pytest.mark.slow
def test_dry_run_records_every_stage_as_run_or_skipped_with_a_reason(dry_run):
    assert dry_run["schema"] == "vpp-gpu-bench/1"
    assert dry_run["dry_run"] is True
    assert dry_run["gpu"] is None
    assert dry_run["settings"]["preset"] == "tiny"
    assert list(dry_run["stages"]) == STAGES
    for name, stage in dry_run["stages"].items():
        assert stage["status"] in STATUSES, (name, stage)
        if stage["status"] != "ok":
            assert stage.get("reason"), f"{name} is {stage['status']} without a reason"
    stages = dry_run["stages"]
    assert stages["environment"]["status"] == "ok"
    assert dry_run["environment"]["packages"]["torch"]["version"]
    assert stages["kernels_build"]["status"] == "ok"
    assert stages["kernels_build"]["result"]["built"] is False  # configure only on the CPU
    assert stages["kernels_tests"]["status"] == "skipped"
    assert "GPU" in stages["kernels_tests"]["reason"]
    if any((GPU / "wheels").glob("*.whl")):
        assert stages["wheels"]["status"] == "ok", stages["wheels"]
        assert any(name.startswith("diffusers") for name in stages["wheels"]["result"]["installed"])
        assert dry_run["environment"]["packages"]["diffusers"]["path"].startswith(
            stages["wheels"]["result"]["target"]
        ), "the carried diffusers wheel does not shadow the installed one"
    else:
        assert stages["wheels"]["status"] == "skipped"
        assert "gather_wheels.sh" in stages["wheels"]["reason"]


@pytest.mark.slow
def test_dry_run_times_every_variant_and_checks_it_against_the_projects_path(dry_run):
    stages = dry_run["stages"]
    for name in VARIANTS:
        stage = stages[name]
        assert stage["status"] == "ok", (name, stage.get("reason"), stage.get("log_tail"))
        result = stage["result"]
        latency = result["latency_ms"]
        assert latency["runs"] == 2 and len(latency["all"]) == 2
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["max"]
        assert result["dit_steps"] == 10
        assert result["views"] == 2 and result["frames"] == 8 and result["image_size"] == 32
        assert len(result["normalized_actions"]) == 10 * 7
        assert result["actions_finite"]
        # the hook-free act path computes what predictive_features + PolicyHead.sample compute
        assert result["parity"]["max_abs_normalized"] <= (1e-5 if result["dtype"] == "float32" else 1e-2), (
            name
        )
        assert dry_run["summary"][name]["p50_ms"] == latency["p50"]
    fused = stages["triton_fp32"]["result"]["fused"]
    assert fused["group_norm_silu_sites"] > 0 and fused["geglu_sites"] == fused["geglu_total"] > 0
    assert stages["triton_fp32"]["result"]["kernels"] == "torch-standin"
    compiled = stages["compile_bf16"]["result"]["compile"]
    assert compiled["backend"] == "eager"
    # one graph: with a break, CUDA graphs on the GPU would be split around Python code
    assert compiled["graph_breaks"] == 0 and compiled["unique_graphs"] == 1, compiled
    eager, fused_actions = (stages[n]["result"]["normalized_actions"] for n in ("eager_fp32", "triton_fp32"))
    assert max(abs(a - b) for a, b in zip(eager, fused_actions, strict=True)) < 1e-5


@pytest.mark.slow
def test_dry_run_leaves_bench_results_alone(dry_run):
    assert not (REPO / "bench" / "results" / "gpu_cpu-dry-run.json").exists()


def test_a_stage_past_its_time_box_is_recorded_and_the_next_stage_still_runs(tmp_path):
    result = run_script(
        "--dry-run",
        "--results-dir",
        str(tmp_path),
        "--stages",
        "environment,kernels_build",
        "--time-box",
        "environment=1",
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # a stage ran out of time
    assert "stages that failed or ran out of time: environment" in result.stdout
    stages = only_result(tmp_path)["stages"]
    assert stages["environment"]["status"] == "timeout"
    assert "1 s time box" in stages["environment"]["reason"]
    assert "log_tail" in stages["environment"]
    # configure-only on the CPU; it ran although the stage before it timed out
    assert stages["kernels_build"]["status"] in ("ok", "failed")
    assert stages["kernels_build"]["rc"] is not None
    for name in VARIANTS:
        assert stages[name]["status"] == "skipped"
        assert "not selected" in stages[name]["reason"]


def test_stopping_the_orchestrator_records_the_stage_it_stopped(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(GPU / "orchestrate.py"), "--dry-run", "--results-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    for line in process.stdout:  # wait until a stage process is running
        if "environment: up to" in line:
            break
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    report = only_result(tmp_path)
    assert report["stages"]["environment"]["status"] == "timeout"
    assert "budget ran out" in report["stages"]["environment"]["reason"]
    assert report["stages"]["compile_bf16"]["status"] == "timeout"
    assert "finished" in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stages", "eager,compile"], "unknown ['eager', 'compile']; stages are wheels"),
        (["--time-box", "warp=3"], "unknown stage 'warp'"),
        (["--time-box", "eager_fp32=soon"], "expected STAGE=SECONDS"),
        (["--runs", "0"], "--runs=0; expected a positive number"),
        (["--budget", "soon"], "--budget 'soon' is not a number of seconds"),
    ],
)
def test_bad_options_are_refused_naming_the_option(args, message, tmp_path):
    result = run_script("--dry-run", "--results-dir", str(tmp_path), *args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not list(tmp_path.glob("gpu_*.json"))


def test_percentiles_match_numpy():
    np = pytest.importorskip("numpy")
    policy_bench = load_module("policy_bench")
    values = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25, 8.0]
    for q in (0, 50, 90, 100):
        assert policy_bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    summary = policy_bench.latency_summary(values)
    assert summary["p50"] == pytest.approx(5.0) and summary["runs"] == 7
    with pytest.raises(ValueError, match="empty"):
        policy_bench.percentile([], 50)


def test_gpu_name_becomes_a_file_name():
    orchestrate = load_module("orchestrate")
    assert orchestrate.slug("NVIDIA H200") == "nvidia-h200"
    assert orchestrate.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert orchestrate.slug("///") == "unknown"

"""The README's main job, scripts/demo.sh, at the smallest scale that still runs every stage:
expert demos on the sim Panda -> tiny TVP -> policy -> ONNX artifact -> 10 Hz rollout -> grasp
rollouts from cube positions not in the demos."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpp.data.lerobot import LeRobotDataset
from vpp.data.video_io import read_video
from vpp.robots.collect import GRASP_TASK, CollectionState
from vpp.runtime.manifest import Manifest

pytest.importorskip("mujoco")
pytest.importorskip("franky_sim")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"
SMALL = {
    "VPP_DEMO_EPISODES": "2",
    "VPP_DEMO_VAE_STEPS": "2",
    "VPP_DEMO_TVP_STEPS": "2",
    "VPP_DEMO_POLICY_STEPS": "2",
    "VPP_DEMO_SECONDS": "3",
    "VPP_DEMO_GRASP_ROLLOUTS": "2",
    "VPP_DEMO_GRASP_SECONDS": "2",
    # The interpreter running this test has every vpp package (a .venv or Pants' sandbox).
    "VPP_PYTHON": sys.executable,
    "OMP_NUM_THREADS": "1",
}


def run_demo(out: Path) -> str:
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is not in this checkout (a sandbox without scripts/)")
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        check=False,
        env={**os.environ, **SMALL},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_the_main_job_makes_an_artifact_and_runs_it_on_the_sim_arm(tmp_path):
    out = tmp_path / "demo"
    stdout = run_demo(out)
    demos = LeRobotDataset(out / "demos")
    assert demos.num_episodes == 2 and demos.robot_type == "sim_panda"
    manifest = Manifest.read(out / "artifact")
    assert manifest.cameras == ("wrist",)
    assert manifest.action.dim == 7 and manifest.state.dim == 8

    report = json.loads((out / "rollout" / "latency_report.json").read_text())
    assert report["stop_reason"] is None and report["target_rate_hz"] == 10.0
    assert report["ticks"] >= 15 and report["chunks"] >= 1 and report["inference_latency"]["count"] >= 1
    # The rate is measured, not assumed; on a loaded CI machine it may fall short, but it is there.
    assert 0 < report["policy_rate_hz"] <= 11.0 and isinstance(report["rate_held"], bool)
    assert report["image_size"] == manifest.image_size
    assert report["sim_scene"]["final_tcp_to_object_m"] < 1.0
    video = read_video(out / "rollout" / "rollout.mp4")
    assert video.shape[1:] == (manifest.image_size, 2 * manifest.image_size, 3)
    assert "policy rate HELD" in stdout or "policy rate DID NOT HOLD" in stdout

    # The grasp rollouts ran the artifact from cube positions no demonstration (nor any dropped
    # collection attempt) started from, and the job printed how many of them grasped the cube.
    grasped = re.search(r"^== grasped (\d+)/2\b", stdout, flags=re.MULTILINE)
    assert grasped, stdout[-2000:]
    grasps = json.loads((out / "grasps" / "grasp_eval.json").read_text())
    assert grasps["episodes"] == 2 and grasps["grasped"] == int(grasped.group(1))
    attempts = CollectionState.read(out / "demos").tasks[GRASP_TASK].attempts
    demo_starts = np.array([attempt.start for attempt in attempts])
    rollout_starts = np.array([rollout["cube_start"] for rollout in grasps["rollouts"]])
    assert len(demo_starts) >= 2 and rollout_starts.shape == (2, 3)
    assert not any(np.allclose(start, demo) for start in rollout_starts for demo in demo_starts)
    assert {rollout["seed"] for rollout in grasps["rollouts"]}.isdisjoint(
        attempt.seed for attempt in attempts
    )
    # The 10 Hz rollout starts where the first grasp rollout does (read once the cube has settled
    # on the table: within a millimetre of its spawn point).
    np.testing.assert_allclose(report["sim_scene"]["object_start"], rollout_starts[0], rtol=0, atol=1e-3)

    # A second run skips every finished stage and runs the rollout again.
    again = run_demo(out)
    for stage in ("tvp-train", "policy-train", "export"):
        assert f"== {stage}: done already" in again
    assert LeRobotDataset(out / "demos").num_episodes == 2
    assert (out / "rollout" / "latency_report.json").is_file()
    assert re.search(r"^== grasped \d+/2\b", again, flags=re.MULTILINE)

    # The controls of the main job's score (scripts/grasp_controls.sh): the same artifact from the
    # same cube positions with the wrist camera blinded, and as an int8 artifact, in one table.
    controls = subprocess.run(
        ["bash", str(SCRIPT.parent / "grasp_controls.sh"), str(out), "2"],
        check=False,
        env={**os.environ, **SMALL},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert controls.returncode == 0, controls.stdout[-3000:] + controls.stderr[-3000:]
    summary = json.loads((out / "controls" / "summary.json").read_text())
    runs = ("deployed", "blind-first", "blind-gray", "int8", "int8-dynamic")
    assert all(summary[name]["episodes"] == 2 for name in runs)
    blinded = json.loads((out / "controls" / "blind-gray" / "grasp_eval.json").read_text())
    assert blinded["config"]["blind_cameras"] == ["wrist"] and blinded["config"]["blind_mode"] == "gray"
    assert [r["seed"] for r in blinded["rollouts"]] == [r["seed"] for r in grasps["rollouts"]]
    assert summary["int8_quantization"]["calibration"]["video_keys"] == {"wrist": "observation.images.wrist"}
    assert "| int8 | " in controls.stdout

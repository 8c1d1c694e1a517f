"""bench/torch_free.py times Policy.act in a process that never imports torch."""

import json
import subprocess
import sys
from pathlib import Path

from vpp.runtime.testing import StandInArtifact

SCRIPT = Path(__file__).parent / "torch_free.py"


def test_the_torch_free_timing_writes_medians_per_artifact_and_thread_count(tmp_path):
    folder = StandInArtifact(cameras=("scene",), image_size=16).write(tmp_path / "artifact")
    out = tmp_path / "timing.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--calls",
            "3",
            "--threads",
            "1,2",
            "--out",
            str(out),
            f"stand-in={folder}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [(r["name"], r["threads"], len(r["times_s"])) for r in record["results"]] == [
        ("stand-in", 1, 3),
        ("stand-in", 2, 3),
    ]
    assert all(r["median_ms"] > 0 for r in record["results"]) and record["machine"]["cores"] >= 1
    assert "stand-in" in done.stdout and "Hz" in done.stdout


def test_a_malformed_artifact_argument_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "NAME=FOLDER" in done.stderr

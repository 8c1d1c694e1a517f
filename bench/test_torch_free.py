"""bench/torch_free.py times Policy.act in a process that never imports torch; bench/thread_gain.py
what a second thread gains it."""

import json
import subprocess
import sys
from pathlib import Path

from vpp.runtime.testing import StandInArtifact

SCRIPT = Path(__file__).parent / "torch_free.py"


def test_the_torch_free_timing_writes_medians_per_artifact_and_thread_count(tmp_path):
    folder = StandInArtifact(cameras=("scene",), image_size=16).write(tmp_path / "artifact")
    two_views = StandInArtifact(image_size=16).write(tmp_path / "two-views")
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
            f"two-views={two_views}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    # two views on two threads: timed with the views one per thread and all in one call
    assert [(r["name"], r["threads"], r["parallel_views"], len(r["times_s"])) for r in record["results"]] == [
        ("stand-in", 1, False, 3),
        ("stand-in", 2, False, 3),
        ("two-views", 1, False, 3),
        ("two-views", 2, True, 3),
        ("two-views", 2, False, 3),
    ]
    assert all(r["median_ms"] > 0 for r in record["results"]) and record["machine"]["cores"] >= 1
    assert "stand-in" in done.stdout and "Hz" in done.stdout and "views in parallel" in done.stdout


def test_a_malformed_artifact_argument_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "NAME=FOLDER" in done.stderr


def test_the_thread_gain_run_times_each_way_of_using_two_threads(tmp_path):
    """bench/thread_gain.py: one thread, two in one call and (two views) one view per thread."""
    folder = StandInArtifact(image_size=16).write(tmp_path / "two-views")
    out = tmp_path / "gain.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT.parent / "thread_gain.py"),
            str(folder),
            "--calls",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert list(record["median_ms"]) == [
        "1 thread",
        "2 threads, views in one call",
        "2 threads, one view per thread",
    ]
    assert all(len(times) == 2 for times in record["times_s"].values())
    assert record["gain_over_one_thread"]["1 thread"] == 1.0 and record["torch"] == "none"

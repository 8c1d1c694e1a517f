"""bench/torch_free.py times Policy.act in a process that never imports torch; bench/thread_gain.py
what a second thread gains it."""

import json
import subprocess
import sys
from pathlib import Path

from vpp.runtime.testing import StandInArtifact

BENCH = Path(__file__).parent


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """bench/<script> with ``args``, in a child process of this interpreter."""
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_torch_free_timing_writes_medians_per_artifact_and_thread_count(tmp_path):
    folder = StandInArtifact(cameras=("scene",), image_size=16).write(tmp_path / "artifact")
    two_views = StandInArtifact(image_size=16).write(tmp_path / "two-views")
    out = tmp_path / "timing.json"
    done = run(
        "torch_free.py",
        "--calls",
        "3",
        "--threads",
        "1,2",
        "--out",
        str(out),
        f"stand-in={folder}",
        f"two-views={two_views}",
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
    done = run("torch_free.py", "no-equals-sign", timeout=60)
    assert done.returncode == 2 and "NAME=FOLDER" in done.stderr


def test_the_thread_gain_run_times_each_way_of_using_two_threads(tmp_path):
    """bench/thread_gain.py: one thread, two in one call and (two views) one view per thread,
    each in processes of its own, round by round."""
    folder = StandInArtifact(image_size=16).write(tmp_path / "two-views")
    out = tmp_path / "gain.json"
    done = run(
        "thread_gain.py",
        str(folder),
        "--rounds",
        "2",
        "--calls",
        "2",
        "--torch",
        "none,import",
        "--out",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [r["torch"] for r in record["results"]] == ["none", "import"]
    for result in record["results"]:
        assert len(result["rounds_ms"]) == 2
        assert list(result["summary"]) == [
            "1 thread",
            "2 threads, views in one call",
            "2 threads, one view per thread",
        ]
        assert result["summary"]["1 thread"]["gain_median"] == 1.0
        assert all(way["median_ms"] > 0 for way in result["summary"].values())
    assert "one view per thread" in done.stdout


def test_the_thread_gain_refuses_an_unknown_torch_mode(tmp_path):
    done = run("thread_gain.py", str(tmp_path), "--torch", "cuda", timeout=60)
    assert done.returncode == 2 and "expected none, import and/or ops" in done.stderr

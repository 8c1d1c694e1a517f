"""What a second thread gains ``Policy.act``, and whether torch in the process changes that.

    .venv/bin/python bench/thread_gain.py ARTIFACT [--torch none,import,ops] [--rounds 5]
        [--calls 10] [--out F]

Three ways to use the threads: one ORT thread; two with all views in one call; two with one
view per thread (``parallel_views``, when the artifact allows it). Each is timed in a process of
its own, as a robot PC runs one policy: sessions of other ways in the same process would leave
ORT worker threads spinning into the next way's calls. The processes run in rounds, the ways'
order alternating, so a noisy neighbour on a shared VM slows every way alike; the gain of a way
is taken round by round (its median against the one-thread median of the same round).

``--torch``: the child never imports torch (as on a robot PC), imports it, or imports it and
runs matrix products on two torch threads before timing (as a training or benchmark process).
Prints and writes (``--out``, JSON) every round's medians and the gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WAYS = {
    "1 thread": (1, False),
    "2 threads, views in one call": (2, False),
    "2 threads, one view per thread": (2, True),
}


def child(artifact: str, threads: int, parallel_views: bool, calls: int, torch_mode: str) -> None:
    """Times ``calls`` acts of one way in this process; prints their wall times as JSON."""
    if torch_mode != "none":
        import torch

        if torch_mode == "ops":
            torch.set_num_threads(2)
            x = torch.randn(512, 512)
            for _ in range(50):
                x = torch.tanh(x @ x)
    # after torch, if asked for: torch_free's module imports the runtime, not torch
    from torch_free import time_act

    times = time_act(artifact, threads, calls, parallel_views)
    print(json.dumps(times))


def run_way(artifact: str, way: str, calls: int, torch_mode: str) -> list[float]:
    threads, parallel = WAYS[way]
    command = [sys.executable, __file__, artifact, "--child", f"{threads},{int(parallel)}"]
    done = subprocess.run(
        [*command, "--calls", str(calls), "--torch", torch_mode],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{way} (torch={torch_mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--torch", default="none", help="comma-separated: none, import, ops")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per process")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch_modes = args.torch.split(",")
    if not set(torch_modes) <= {"none", "import", "ops"}:
        parser.error(f"--torch {args.torch}: expected none, import and/or ops")
    if args.child:
        threads, parallel = (int(v) for v in args.child.split(","))
        child(args.artifact, threads, bool(parallel), args.calls, torch_modes[0])
        return 0

    from vpp.runtime import Policy

    ways = list(WAYS)
    if not Policy.load(args.artifact, threads=2).parallel_views:
        ways.remove("2 threads, one view per thread")
    results = []
    for torch_mode in torch_modes:
        rounds = []
        for index in range(args.rounds):
            order = ways if index % 2 == 0 else ways[::-1]
            medians = {
                way: 1000 * statistics.median(run_way(args.artifact, way, args.calls, torch_mode))
                for way in order
            }
            rounds.append({way: medians[way] for way in ways})
        summary = {}
        for way in ways:
            gains = [r["1 thread"] / r[way] for r in rounds]
            summary[way] = {
                "median_ms": statistics.median(r[way] for r in rounds),
                "gain_median": statistics.median(gains),
                "gain_min": min(gains),
                "gain_max": max(gains),
            }
            print(
                f"torch={torch_mode:6s} {way:32s} {summary[way]['median_ms']:7.1f} ms  "
                f"gain x{summary[way]['gain_median']:.2f} (rounds {min(gains):.2f}-{max(gains):.2f})",
                flush=True,
            )
        results.append({"torch": torch_mode, "rounds_ms": rounds, "summary": summary})
    record = {
        "what": "Policy.act per way of using two threads, one process per way and round (bench/thread_gain.py)",
        "artifact": args.artifact,
        "calls_per_process": args.calls,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        "load_average_end": os.getloadavg(),
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``Policy.act`` timed in a process that never imports torch, as on a robot PC.

The pytest-benchmark groups run beside PyTorch (the eager side of each comparison), whose OpenMP
threads can take the cores ORT's threads need; this measures the artifacts alone:

    .venv/bin/python bench/torch_free.py --out bench/results/policy_cpu_torch_free.json \
        fp32=ARTIFACT early-exit+int8=ARTIFACT ...

Each artifact: 3 warm-up calls, then ``--calls`` timed ``Policy.act`` calls on random uint8 views
at twice the artifact's image size (the resize is part of the time), on 1 and on 2 ORT threads;
on 2 threads both ways the runtime can run the views' feature passes where the artifact allows
it (``parallel_views``: one view per thread, and all in one call). The JSON holds every call's
wall time, the medians, the load average and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from vpp.runtime import Policy

WARM_UP_CALLS = 3


def time_act(folder: str, threads: int, calls: int, parallel_views: bool | None = None) -> list[float]:
    policy = Policy.load(folder, threads=threads, seed=0, parallel_views=parallel_views)
    rng = np.random.default_rng(0)
    side = 2 * policy.image_size
    observation = {camera: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for camera in policy.cameras}
    if policy.state_normalizer is not None:
        observation["state"] = policy.state_normalizer.midpoint()
    instruction = policy.instructions[0]
    for _ in range(WARM_UP_CALLS):
        policy.act(observation, instruction)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        policy.act(observation, instruction)
        times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--threads", default="1,2", help="ORT thread counts, comma-separated")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    named = [item.partition("=")[::2] for item in args.artifacts]
    if any(not name or not folder for name, folder in named):
        parser.error("artifacts are NAME=FOLDER")
    started_load = os.getloadavg()
    results = []
    for name, folder in named:
        for threads in (int(t) for t in args.threads.split(",")):
            modes = [None]
            if threads > 1 and Policy.load(folder, threads=threads).parallel_views:
                modes = [True, False]
            for parallel in modes:
                times = time_act(folder, threads, args.calls, parallel)
                median = statistics.median(times)
                results.append(
                    {
                        "name": name,
                        "folder": folder,
                        "threads": threads,
                        "parallel_views": bool(parallel),
                        "median_ms": 1000 * median,
                        "times_s": times,
                    }
                )
                how = {True: ", views in parallel", False: ", views in one call", None: ""}[parallel]
                print(
                    f"{name:32s} {threads} thread(s){how}: median {1000 * median:7.1f} ms ({1 / median:5.1f} Hz)",
                    flush=True,
                )
    if "torch" in sys.modules:
        raise SystemExit("torch was imported: the measurement is not torch-free")
    record = {
        "what": "vpp.runtime.Policy.act in a process without torch (bench/torch_free.py)",
        "datetime": datetime.now(UTC).isoformat(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": started_load},
        "load_average_end": os.getloadavg(),
        "calls": args.calls,
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

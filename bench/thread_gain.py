"""What a second thread gains ``Policy.act``, and whether torch in the process changes that.

    .venv/bin/python bench/thread_gain.py ARTIFACT [--torch none|import|ops] [--calls 20] [--out F]

One process per run. ``--torch``: never import torch (as on a robot PC), import it, or import it
and run matrix products on two torch threads first (as a training or benchmark process has).
Then the artifact is opened three times: one ORT thread; two ORT threads with all views in one
call; two threads with one view per thread (``parallel_views``, when the artifact allows it).
The three are timed call by call in turn (the order alternating), so a noisy neighbour on a
shared VM slows all of them alike and the ratios hold where absolute times drift. Prints and
writes (``--out``, JSON) each median and the gain of each two-thread way over one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

WARM_UP_CALLS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--torch", choices=["none", "import", "ops"], default="none")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    if args.torch != "none":
        import torch

        if args.torch == "ops":
            torch.set_num_threads(2)
            x = torch.randn(512, 512)
            for _ in range(50):
                x = torch.tanh(x @ x)
    from vpp.runtime import Policy

    ways = {
        "1 thread": Policy.load(args.artifact, threads=1, seed=0, parallel_views=False),
        "2 threads, views in one call": Policy.load(args.artifact, threads=2, seed=0, parallel_views=False),
    }
    parallel = Policy.load(args.artifact, threads=2, seed=0)
    if parallel.parallel_views:
        ways["2 threads, one view per thread"] = parallel
    first = ways["1 thread"]
    rng = np.random.default_rng(0)
    side = 2 * first.image_size
    observation = {camera: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for camera in first.cameras}
    if first.state_normalizer is not None:
        observation["state"] = first.state_normalizer.midpoint()
    instruction = first.instructions[0]
    for policy in ways.values():
        for _ in range(WARM_UP_CALLS):
            policy.act(observation, instruction)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for call in range(args.calls):
        order = list(ways.items()) if call % 2 == 0 else list(reversed(ways.items()))
        for name, policy in order:
            start = time.perf_counter()
            policy.act(observation, instruction)
            times[name].append(time.perf_counter() - start)
    medians = {name: 1000 * statistics.median(values) for name, values in times.items()}
    record = {
        "artifact": args.artifact,
        "torch": args.torch,
        "calls": args.calls,
        "median_ms": medians,
        "gain_over_one_thread": {name: medians["1 thread"] / ms for name, ms in medians.items()},
        "times_s": times,
        "load_average_end": os.getloadavg(),
    }
    for name, ms in medians.items():
        print(f"torch={args.torch:6s} {name:32s} {ms:7.1f} ms  x{medians['1 thread'] / ms:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

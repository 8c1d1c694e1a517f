"""Where the time of one action chunk goes: a per-component table, PyTorch eager vs the artifact.

    .venv/bin/python bench/components.py --preset tiny --preset small --threads 1 --out bench/results/components_cpu

For each preset it builds an untrained policy (2 camera views, 7-D state and actions, chunk 10),
exports it, and times with ``--threads`` threads, side by side in one process:

- eager: the VAE encode of the current frames, the UNet forward to the hooked up-blocks (the
  features minus the VAE), the Video Former with the condition projections and the DiT encoder,
  and the 10 DDIM steps of the DiT decoder;
- ONNX Runtime: ``features.onnx`` and ``policy.onnx`` as the runtime calls them, with each
  graph's time split over the same components by ORT's per-node profile (node names keep the
  PyTorch module path), scaled to the measured median of the graph.

Both CPU time (``time.process_time``, summed over the process's threads; less sensitive than wall
time to other processes on the machine, though not to their use of caches and memory bandwidth)
and wall time are recorded; the ratio column uses CPU time, the rates wall time. The analytic
multiply-accumulate count of each component comes from the profiled shapes, which says how far a
component is from the machine's arithmetic limit. Writes ``OUT.json`` (machine described) and ``OUT.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vpp.export.writer import export_policy
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
from vpp.runtime import Policy
from vpp.tvp.config import TVPConfig
from vpp.tvp.features import predictive_features
from vpp.tvp.model import TextGuidedVideoPredictor

INSTRUCTION = "open the drawer"
# Top-level module names of the VAE encode in the exported features graph.
VAE_MODULES = ("encoder", "quant_conv")
COMPONENTS = ("vae encode", "unet to features", "video former + dit encoder", "dit decoder x10 steps")


def component_of(node_name: str, graph: str) -> str:
    """The table row an ORT node belongs to, from the module path the exporter kept in its name."""
    top = node_name.strip("/").split("/")[0]
    if graph == "features":
        # The VAE encoder's nodes keep its module names. Nodes that ORT fused or inserted lose
        # their path (the UNet's fused Gelus, the NCHWc reorders around its convolutions), and so
        # do the feature resize and the noise glue. They are counted with the UNet, as eager's
        # "unet to features" row (features minus the VAE encode) counts them.
        return "vae encode" if top in VAE_MODULES else "unet to features"
    if top.startswith(
        (
            "video_former",
            "video_token_projection",
            "language_projection",
            "state_projection",
            "encoder_blocks",
        )
    ):
        return "video former + dit encoder"
    return "dit decoder x10 steps"


def measure(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_ms": 1000 * statistics.median(cpu), "wall_ms": 1000 * statistics.median(wall)}


# Runs profiled but left out of the split: a session's first runs grow ORT's memory arena and
# touch new pages, which makes them 1.3-2x slower, the elementwise operators most of all.
WARM_UP_RUNS = 3


def node_events(events: list[dict], runs: int, skip: int) -> list[dict]:
    """The kernel-time events of the last ``runs - skip`` of ``runs`` profiled runs (each run
    records the same nodes, in order)."""
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    if len(kernels) % runs:
        raise ValueError(f"{len(kernels)} kernel events do not split into {runs} runs")
    return kernels[skip * len(kernels) // runs :]


def profile_split(
    path: Path,
    feed: dict[str, np.ndarray],
    graph: str,
    repeats: int,
    threads: int,
    custom_ops_library: Path | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(share of kernel time, multiply-accumulates) per component of one graph, from ORT's
    profile of ``repeats`` runs after :data:`WARM_UP_RUNS` unprofiled ones."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    if custom_ops_library is not None:
        options.register_custom_ops_library(str(custom_ops_library))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(WARM_UP_RUNS + repeats):
        session.run(None, feed)
    events = node_events(
        json.loads(Path(session.end_profiling()).read_text()), WARM_UP_RUNS + repeats, WARM_UP_RUNS
    )
    durations: dict[str, float] = defaultdict(float)
    macs: dict[str, float] = defaultdict(float)
    counted: set[str] = set()
    for event in events:
        row = component_of(event["name"], graph)
        durations[row] += event["dur"]
        if event["name"] in counted:
            continue
        counted.add(event["name"])
        op = event["args"].get("op_name", "")
        inputs = [next(iter(x.values())) for x in event["args"].get("input_type_shape", [])]
        outputs = [next(iter(x.values())) for x in event["args"].get("output_type_shape", [])]
        if not outputs or not inputs:
            continue
        if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger"):
            macs[row] += float(np.prod(outputs[0])) * inputs[0][-1]
        elif op in ("Conv", "FusedConv") and len(inputs) > 1:
            macs[row] += float(np.prod(outputs[0])) * float(np.prod(inputs[1][1:]))
        elif op == "MultiHeadAttention" and len(inputs) > 1:
            # q (B, S, C) against k (B, L, C): q k^T and the weighted sum of v, B*S*L*C each
            macs[row] += 2.0 * float(np.prod(inputs[0])) * inputs[1][1]
    total = sum(durations.values())
    return {k: v / total for k, v in durations.items()}, dict(macs)


def bench_preset(preset: str, image_size: int, repeats: int, threads: int) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tvp = TextGuidedVideoPredictor.from_preset(preset)
    rng = np.random.default_rng(0)
    config = VPPConfig(cameras=["corner", "wrist"], action_dim=7, chunk=10, state_dim=7)
    eager = VideoPredictionPolicy.build(
        tvp, config, rng.normal(size=(100, 7)), rng.normal(size=(100, 7)), head_preset=preset
    ).eval()
    folder = Path(tempfile.mkdtemp(prefix=f"vpp-bench-{preset}-"))
    export_policy(eager, folder, [INSTRUCTION])
    runtime = Policy.load(folder, threads=threads, seed=0)
    observation = {
        camera: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for camera in config.cameras
    }
    observation["state"] = rng.normal(size=7)

    feature_feed, policy_feed = runtime.graph_feeds(
        observation, INSTRUCTION, runtime.sample_noise(np.random.default_rng(1))
    )
    features = policy_feed["features"] = runtime.feature_session.run(None, feature_feed)[0]
    t = {k: torch.from_numpy(v) for k, v in policy_feed.items()}
    t.update(
        images=torch.from_numpy(feature_feed["images"]),
        text_hidden=torch.from_numpy(feature_feed["text_hidden"]),
    )
    t.update(feature_noise=torch.from_numpy(feature_feed["noise"]))
    head = eager.head
    with torch.no_grad():
        eager_rows = {
            "vae encode": measure(lambda: tvp.encode_video(t["images"].flatten(0, 1).unsqueeze(1)), repeats),
            "features (vae + unet)": measure(
                lambda: predictive_features(
                    tvp, t["images"], text_hidden=t["text_hidden"], noise=t["feature_noise"]
                ),
                repeats,
            ),
            "video former + dit encoder": measure(
                lambda: head.dit.encode(head.condition_tokens(t["features"], t["lang"], t["state"])), repeats
            ),
            "head (video former + 10 dit steps)": measure(
                lambda: head.sample(t["features"], t["lang"], t["state"], noise=t["noise"]), repeats
            ),
        }
        generator = torch.Generator().manual_seed(0)
        eager_end_to_end = measure(
            lambda: eager.predict_action_chunk(observation, INSTRUCTION, generator), repeats
        )
    ort_features = measure(lambda: runtime.feature_session.run(None, feature_feed), repeats)
    ort_policy = measure(lambda: runtime.policy_session.run(None, policy_feed), repeats)
    ort_end_to_end = measure(lambda: runtime.act(observation, INSTRUCTION), repeats)
    library = runtime.custom_ops_library
    feature_split, feature_macs = profile_split(
        folder / "features.onnx", feature_feed, "features", repeats, threads, library
    )
    policy_split, policy_macs = profile_split(
        folder / "policy.onnx", policy_feed, "policy", repeats, threads, library
    )

    def unet(d: dict[str, float]) -> dict[str, float]:
        return {k: d[k] - eager_rows["vae encode"][k] for k in d}

    def decoder(d: dict[str, float]) -> dict[str, float]:
        return {k: d[k] - eager_rows["video former + dit encoder"][k] for k in d}

    eager_components = {
        "vae encode": eager_rows["vae encode"],
        "unet to features": unet(eager_rows["features (vae + unet)"]),
        "video former + dit encoder": eager_rows["video former + dit encoder"],
        "dit decoder x10 steps": decoder(eager_rows["head (video former + 10 dit steps)"]),
    }
    ort_components = {}
    for name in COMPONENTS:
        graph_time, split = (
            (ort_features, feature_split)
            if name in ("vae encode", "unet to features")
            else (ort_policy, policy_split)
        )
        ort_components[name] = {k: v * split.get(name, 0.0) for k, v in graph_time.items()}
    macs = {**feature_macs, **policy_macs}
    rows = [
        {
            "component": name,
            "eager": eager_components[name],
            "onnxruntime": ort_components[name],
            "gmacs": macs.get(name, 0.0) / 1e9,
        }
        for name in COMPONENTS
    ]
    return {
        "preset": preset,
        "views": len(config.cameras),
        "image_size": image_size,
        "feature_shape": list(features.shape),
        "rows": rows,
        "end_to_end": {"eager": eager_end_to_end, "onnxruntime": ort_end_to_end},
    }


def machine(threads: int) -> dict[str, str | int]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "threads_per_process": threads,
        "load_average_at_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def markdown(results: dict) -> str:
    lines = [
        (
            f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
            f"{results['machine']['threads_per_process']} thread(s) for torch and for ORT; load average "
            f"{results['machine']['load_average_at_start']} when the run started. Times are medians of CPU "
            "time summed over threads (wall time in brackets); Hz from wall time."
        ),
        "",
    ]
    for preset in results["presets"]:
        e2e = preset["end_to_end"]
        lines += [
            f"### {preset['preset']}: 2 views at {preset['image_size']} px, features {tuple(preset['feature_shape'])}",
            "",
            "| component | GMAC | eager ms | onnxruntime ms | eager / ORT |",
            "|---|---|---|---|---|",
        ]
        for row in preset["rows"]:
            e, o = row["eager"], row["onnxruntime"]
            ratio = e["cpu_ms"] / o["cpu_ms"] if o["cpu_ms"] > 0 else float("nan")
            lines.append(
                f"| {row['component']} | {row['gmacs']:.2f} | {e['cpu_ms']:.1f} ({e['wall_ms']:.1f}) | "
                f"{o['cpu_ms']:.1f} ({o['wall_ms']:.1f}) | {ratio:.2f}x |"
            )
        e, o = e2e["eager"], e2e["onnxruntime"]
        lines += [
            (
                "| **end to end** (`predict_action_chunk` / `Policy.act`) | | "
                f"{e['cpu_ms']:.1f} ({e['wall_ms']:.1f}) | "
                f"{o['cpu_ms']:.1f} ({o['wall_ms']:.1f}) | {e['cpu_ms'] / o['cpu_ms']:.2f}x |"
            ),
            "",
            f"End to end: eager {1000 / e['wall_ms']:.1f} Hz, onnxruntime {1000 / o['wall_ms']:.1f} Hz (wall time).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", action="append", choices=("tiny", "small"), help="repeatable; default: tiny and small"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="camera frame side before resizing (default: the preset's)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    parser.add_argument("--out", default="bench/results/components_cpu", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    presets = args.preset or ["tiny", "small"]
    torch.set_num_threads(args.threads)
    results = {
        "machine": machine(args.threads),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "presets": [],
    }
    for preset in presets:
        size = args.image_size or TVPConfig.preset(preset).image_size
        print(f"benchmarking {preset} ...", file=sys.stderr, flush=True)
        results["presets"].append(bench_preset(preset, size, args.repeats, args.threads))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

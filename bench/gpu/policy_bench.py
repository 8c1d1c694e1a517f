"""One variant of the end-to-end policy timing, in a process of its own (run by orchestrate.py).

    python bench/gpu/policy_bench.py --variant eager_bf16 --preset paper --device cuda --out r.json

Builds a ``VideoPredictionPolicy`` of the preset with random weights (seeded, on the device),
2 camera views, 7-d actions in chunks of 10 and a 7-d state, as bench/test_bench_policy.py does,
then times ``act``: uint8 frames and an instruction on the host -> the denormalised action chunk
back on the host (tokenising, upload, CLIP, VAE encode, the UNet to the feature blocks, Video
Former, DiT encoder and the DDIM steps, the copy back), through :class:`fastpath.ActCore`.

Variants: ``eager_bf16`` / ``eager_fp32`` (the modules as they are), ``compile_bf16``
(``torch.compile`` of the whole ActCore, mode ``reduce-overhead``: inductor kernels replayed
as CUDA graphs) and ``triton_fp32`` (vpp-kernels' Triton GroupNorm+SiLU, GEGLU and DDIM-step
kernels swapped in; they take float32 only). Warm-up calls are excluded from the timings
(the first one holds compilation). Before timing, the variant's actions for one fixed noise
draw are compared with the project's own path (predictive_features + PolicyHead.sample) in the
same dtype, uncompiled and unpatched: ``parity.max_abs_normalized``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

VARIANTS = {
    "eager_bf16": {"dtype": "bfloat16", "compile": False, "triton": False},
    "eager_fp32": {"dtype": "float32", "compile": False, "triton": False},
    "triton_fp32": {"dtype": "float32", "compile": False, "triton": True},
    "compile_bf16": {"dtype": "bfloat16", "compile": True, "triton": False},
}
CAMERAS = ("corner", "wrist")
INSTRUCTION = "open the drawer"
ACTION_DIM = 7
STATE_DIM = 7
CHUNK = 10


class BenchSetupError(ValueError):
    """The options ask for something this machine or script cannot run."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a non-empty list."""
    if not values:
        raise ValueError("percentile of an empty list")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(milliseconds: list[float]) -> dict[str, Any]:
    return {
        "p50": percentile(milliseconds, 50),
        "p90": percentile(milliseconds, 90),
        "mean": sum(milliseconds) / len(milliseconds),
        "min": min(milliseconds),
        "max": max(milliseconds),
        "runs": len(milliseconds),
        "all": [round(value, 3) for value in milliseconds],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument(
        "--preset", default="paper", help="TVPConfig / PolicyHeadConfig preset (tiny, small, paper)"
    )
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--dit-steps", type=int, default=10, help="DDIM steps of the action head")
    parser.add_argument("--runs", type=int, default=30, help="timed calls of act")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed calls before them (compilation included)"
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of compile_bf16 (the dry run traces with 'eager': no inductor, no CUDA graphs)",
    )
    parser.add_argument(
        "--compile-mode", default="reduce-overhead", help="torch.compile mode (inductor only)"
    )
    parser.add_argument(
        "--kernels",
        choices=("triton", "torch-standin"),
        default="triton",
        help="what triton_fp32 patches in: vpp-kernels' Triton kernels, or torch stand-ins with their signatures "
        "(the dry run: the Triton interpreter takes minutes per act)",
    )
    parser.add_argument("--out", required=True, type=Path, help="where the variant's JSON result goes")
    args = parser.parse_args(argv)
    for name in ("runs", "warmup", "dit_steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}; expected a positive count")
    if VARIANTS[args.variant]["compile"] and args.compile_backend == "inductor" and args.warmup < 3:
        parser.error("compile_bf16 with CUDA graphs needs --warmup >= 3 (warm-up, recording, first replay)")
    return args


def build_policy(preset: str, device: Any, dit_steps: int, seed: int = 0):
    """A policy of ``preset`` with random weights, initialised directly on ``device``."""
    import numpy as np
    import torch

    from vpp.policy.config import VPPConfig
    from vpp.policy.normalization import ActionNormalizer
    from vpp.policy.policy import VideoPredictionPolicy
    from vpp.policy.policy_head import PolicyHead
    from vpp.tvp.model import TextGuidedVideoPredictor

    rng = np.random.default_rng(seed)
    config = VPPConfig(cameras=list(CAMERAS), action_dim=ACTION_DIM, chunk=CHUNK, state_dim=STATE_DIM)
    torch.manual_seed(seed)
    with torch.device(device):
        tvp = TextGuidedVideoPredictor.from_preset(preset)
        head_config = VideoPredictionPolicy.head_config(tvp, config, preset)
        head_config.diffusion.num_steps = dit_steps
        head = PolicyHead(head_config)
    policy = VideoPredictionPolicy(
        config,
        tvp,
        head,
        ActionNormalizer.from_actions(rng.normal(size=(100, ACTION_DIM))),
        ActionNormalizer.from_actions(rng.normal(size=(100, STATE_DIM))),
    )
    return policy.eval()


def parameter_counts(policy) -> dict[str, int]:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    tvp = policy.tvp
    return {
        "unet": count(tvp.unet),
        "vae": count(tvp.vae),
        "text_encoder": count(tvp.text_encoder),
        "head": count(policy.head),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    variant = VARIANTS[args.variant]
    started = time.perf_counter()
    if (
        variant["triton"]
        and args.kernels == "triton"
        and args.device == "cpu"
        and os.environ.get("TRITON_INTERPRET") != "1"
    ):
        raise BenchSetupError(
            "triton_fp32 with --kernels triton on the CPU needs TRITON_INTERPRET=1 (or --kernels torch-standin)"
        )
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fastpath  # pants: no-infer-dep (bench/gpu/fastpath.py, loaded by path; in :test_utils too)

    device = torch.device(args.device)
    if device.type == "cpu":
        # The dry run's machine is a shared 2-core VM, where two threads per process measured noise
        # and contended runs stalled (bench/test_bench_policy.py uses one thread too).
        torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchSetupError("--device cuda but torch sees no CUDA device; use --device cpu (the dry run)")
    dtype = getattr(torch, variant["dtype"])
    result: dict[str, Any] = {
        "variant": args.variant,
        "preset": args.preset,
        "device": str(device),
        "dtype": variant["dtype"],
        "views": len(CAMERAS),
        "instruction": INSTRUCTION,
        "warmup": args.warmup,
        # torch's defaults, left as they are
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    log(f"{args.variant}: building the {args.preset} policy on {device}")
    policy = build_policy(args.preset, device, args.dit_steps).to(dtype)
    tvp = policy.tvp
    cfg = tvp.config
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["weights_mib"] = torch.cuda.memory_allocated() / 2**20
    result["build_s"] = time.perf_counter() - started
    result["parameters"] = parameter_counts(policy)
    result["frames"] = cfg.num_frames
    result["image_size"] = cfg.image_size
    result["feature_shape"] = [cfg.num_frames, cfg.feature_channels, cfg.feature_size, cfg.feature_size]
    log(f"built in {result['build_s']:.1f} s: {result['parameters']}")

    ddim_step = None
    kernels = None
    if variant["triton"]:
        if args.kernels == "triton":
            import vpp.kernels.triton_kernels as kernels
        else:
            kernels = fastpath.TorchStandInKernels()
        ddim_step = fastpath.triton_ddim_step(kernels)
        result["kernels"] = args.kernels
    core = fastpath.ActCore(policy, ddim_step=ddim_step).eval()
    result["dit_steps"] = len(core.sigmas) - 1
    runner = core
    if variant["compile"]:
        options: dict[str, Any] = {"backend": args.compile_backend, "dynamic": False}
        if args.compile_backend == "inductor":
            options["mode"] = args.compile_mode
        runner = torch.compile(core, **options)
        result["compile"] = {"backend": args.compile_backend, "mode": options.get("mode")}

    rng = np.random.default_rng(0)
    side = cfg.image_size
    observation = {camera: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for camera in CAMERAS}
    observation["state"] = rng.normal(size=STATE_DIM)
    feature_shape = (1, len(CAMERAS), cfg.num_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    action_shape = (1, CHUNK, ACTION_DIM)
    generator = torch.Generator(device=device).manual_seed(1)

    def inputs(noise_generator):
        frames = np.stack([observation[camera] for camera in CAMERAS])
        pixels = torch.from_numpy(frames)[None].to(device)
        input_ids = tvp.tokenize([INSTRUCTION])
        raw_state = torch.from_numpy(np.asarray(observation["state"], dtype=np.float64))[None]
        state = policy.state_normalizer.normalize(raw_state).to(device, dtype)
        feature_noise = torch.randn(feature_shape, generator=noise_generator, device=device)
        action_noise = torch.randn(action_shape, generator=noise_generator, device=device)
        return pixels, input_ids, state, feature_noise, action_noise

    def act() -> np.ndarray:
        normalized = runner(*inputs(generator))
        return policy.action_normalizer.denormalize(normalized[0].double().cpu()).float().numpy()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad(), fastpath_context(fastpath, fastpath.act_path_modules(core), kernels, result):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if variant["compile"]:
            import torch._dynamo.utils as dynamo_utils

            dynamo_utils.counters.clear()
        warmup_times = []
        for index in range(args.warmup):
            tick = time.perf_counter()
            act()
            synchronize()
            warmup_times.append(time.perf_counter() - tick)
            log(f"warm-up call {index + 1}/{args.warmup}: {warmup_times[-1]:.3f} s")
        result["warmup_s"] = [round(value, 4) for value in warmup_times]
        if variant["compile"]:
            result["compile"].update(dynamo_counters())

        times = []
        for _ in range(args.runs):
            tick = time.perf_counter()
            actions = act()
            times.append((time.perf_counter() - tick) * 1000.0)
        result["latency_ms"] = latency_summary(times)
        result["actions_finite"] = bool(np.isfinite(actions).all())
        log(
            f"{args.variant}: p50 {result['latency_ms']['p50']:.2f} ms, p90 {result['latency_ms']['p90']:.2f} ms "
            f"over {args.runs} calls"
        )
        if device.type == "cuda":
            result["memory_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            result["memory_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20

        fixed = inputs(torch.Generator(device=device).manual_seed(2))
        mine = runner(*fixed).double().cpu()
    # the reference runs outside the Triton patches, uncompiled
    with torch.no_grad():
        reference = fastpath.reference_actions(core, *fixed).double().cpu()
    result["parity"] = {
        "max_abs_normalized": fastpath.max_abs(mine, reference),
        "reference_max_abs": float(reference.abs().max()),
        "against": "predictive_features + PolicyHead.sample, same dtype, uncompiled and unpatched",
    }
    result["normalized_actions"] = [round(float(v), 6) for v in mine.flatten()]
    log(f"parity with the project's path: {result['parity']['max_abs_normalized']:.3g}")
    result["total_s"] = time.perf_counter() - started
    return result


class fastpath_context:  # noqa: N801 (used as a context manager, like contextlib's)
    """The Triton patches for the triton variant, nothing otherwise; records what they patched."""

    def __init__(self, fastpath, modules, kernels, result: dict[str, Any]) -> None:
        self._manager = fastpath.fused_kernels(modules, kernels) if kernels is not None else None
        self._result = result

    def __enter__(self):
        if self._manager is not None:
            counts = self._manager.__enter__()
            self._result["fused"] = {**counts, "ddim_step": True}
        return self

    def __exit__(self, *exc):
        if self._manager is not None:
            return self._manager.__exit__(*exc)
        return False


def dynamo_counters() -> dict[str, Any]:
    import torch._dynamo.utils as dynamo_utils

    breaks = dict(dynamo_utils.counters.get("graph_break", {}))
    stats = dict(dynamo_utils.counters.get("stats", {}))
    inductor = dict(dynamo_utils.counters.get("inductor", {}))
    return {
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": sorted(breaks, key=breaks.get, reverse=True)[:5],
        "unique_graphs": int(stats.get("unique_graphs", 0)),
        # a skip means the graph ran without CUDA graphs (the log says why)
        "cudagraph_counters": {key: int(value) for key, value in inductor.items() if "cudagraph" in key},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args)
    except BenchSetupError as error:
        print(f"policy_bench: {error}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

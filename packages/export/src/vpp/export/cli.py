"""``vpp-export``: a saved policy -> the ONNX artifact for the torch-free vpp-runtime (parity checked).

vpp-export POLICY_DIR --out ARTIFACT --instruction TEXT [--instruction TEXT ...] [--instructions FILE]
    [--seed N] [--no-text-encoder] [--standard-ops-only] [--fused-geglu]
    [--quantize int8 --calibration-data LEROBOT_DATASET[#KEY,...] [--calibration-frames N]
     [--held-out-frames N] [--fp32-candidates N] [--keep-fp32 N]]

Prints the manifest's path, then a summary: the UNet up-blocks the features graph holds (a policy
whose TVP has ``features.blocks=(0, 1)``, the official code's early exit, traces only those), its
node count, and with --quantize what was quantised and how it agrees with fp32 on held-out frames.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vpp.export.quantize import (
    DEFAULT_CALIBRATION_FRAMES,
    DEFAULT_CANDIDATES,
    DEFAULT_HELD_OUT_FRAMES,
    DEFAULT_KEEP_FP32,
)


def read_instructions(path: str | Path) -> list[str]:
    """One instruction per non-empty line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpp-export", description=__doc__.splitlines()[0])
    parser.add_argument("policy", type=Path, help="a saved policy folder (vpp-policy train's OUTPUT/model)")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    parser.add_argument(
        "--instruction", action="append", help="an instruction to cache the text embedding of (repeatable)"
    )
    parser.add_argument("--instructions", type=Path, help="file with one instruction per line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random parity-check inputs")
    parser.add_argument(
        "--no-text-encoder", action="store_true", help="cache only: the runtime refuses other instructions"
    )
    parser.add_argument(
        "--standard-ops-only",
        action="store_true",
        help="standard ONNX only: no ONNX Runtime contrib ops (attention as MatMul/Softmax) and no vpp.fused "
        "custom ops (GroupNorm as InstanceNormalization), for runtimes other than ORT's CPU and CUDA providers or "
        "a vpp-runtime built without its custom-op library",
    )
    parser.add_argument(
        "--fused-geglu",
        action="store_true",
        help="each GEGLU activation as one vpp.fused.GeGLU node (one memory pass instead of ORT's Gelu and Mul), "
        "for the CUDA provider; on the CPU it measured no faster than ORT's own",
    )
    quantize = parser.add_argument_group("int8 features graph (vpp.export.quantize)")
    quantize.add_argument(
        "--quantize",
        choices=["int8", "int8-dynamic"],
        help="int8 features graph: static QDQ Convs (uint8 activations calibrated on --calibration-data, int8 "
        "per-channel weights) and dynamic int8 MatMul/Gemm, checked against fp32 on held-out frames; "
        "int8-dynamic: the MatMul/Gemm pass alone (less speed, far less error in what the head reads)",
    )
    quantize.add_argument(
        "--calibration-data",
        metavar="LEROBOT_DATASET[#KEY,...]",
        help="LeRobot v3 dataset of the robot's own observations; #KEY,... names one video key per policy camera, "
        "in the policy's camera order (default: the key equal to or ending in .CAMERA)",
    )
    quantize.add_argument(
        "--calibration-frames",
        type=int,
        default=DEFAULT_CALIBRATION_FRAMES,
        help="frames to calibrate on, spread over the whole dataset",
    )
    quantize.add_argument(
        "--held-out-frames",
        type=int,
        default=DEFAULT_HELD_OUT_FRAMES,
        help="further frames, not calibrated on, that the int8 graph is measured on against fp32",
    )
    quantize.add_argument(
        "--fp32-candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="convolutions with the noisiest quantised inputs whose effect is measured one by one (each costs a "
        "quantisation and the held-out frames)",
    )
    quantize.add_argument(
        "--keep-fp32",
        type=int,
        default=DEFAULT_KEEP_FP32,
        help="of those, how many whose fp32 raised the held-out feature cosine most stay fp32",
    )
    return parser


def summary(manifest_path: Path) -> str:
    """What the artifact's features graph holds: its UNet up-blocks and node count, and the
    quantisation record of an int8 graph."""
    import re

    import onnx

    from vpp.runtime.manifest import Manifest

    manifest = Manifest.read(manifest_path.parent)
    graph = onnx.load(
        str(manifest_path.parent / manifest.graphs.features.file), load_external_data=False
    ).graph
    blocks = sorted({int(m) for node in graph.node for m in re.findall(r"/up_blocks\.(\d+)/", node.name)})
    lines = [
        f"features.onnx: {len(graph.node)} nodes, UNet up-blocks {blocks}, features {list(manifest.features.shape)}"
    ]
    record = manifest.quantization
    if record is not None:
        agreement = record.held_out
        lines.append(
            f"int8 ({record.scheme}): quantised {record.quantized_nodes}, kept fp32 {list(record.fp32_nodes)}; "
            f"{record.calibration.frames} calibration frames; on {record.calibration.held_out_frames} held-out "
            f"frames feature cosine >= {agreement.feature_cosine_min:.5f}, normalised action error <= "
            f"{agreement.normalized_action_max_abs:.4f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    instructions = list(args.instruction or [])
    if args.instructions:
        instructions += read_instructions(args.instructions)
    if not instructions:
        parser.error("give --instruction TEXT (repeatable) or --instructions FILE")
    if args.quantize and not args.calibration_data:
        parser.error(
            "--quantize int8 needs --calibration-data LEROBOT_DATASET: the robot's own observations set the int8 "
            "activation ranges"
        )
    if args.calibration_data and not args.quantize:
        parser.error("--calibration-data is for --quantize int8; add it, or drop --calibration-data")
    quantize = None
    if args.quantize:
        from vpp.export.quantize import CalibrationDataError, QuantizeOptions

        try:
            quantize = QuantizeOptions(
                args.calibration_data,
                calibration_frames=args.calibration_frames,
                held_out_frames=args.held_out_frames,
                candidates=args.fp32_candidates,
                keep_fp32=args.keep_fp32,
                seed=args.seed,
                scheme="dynamic" if args.quantize == "int8-dynamic" else "hybrid",
            )
        except CalibrationDataError as error:
            parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # torch and the policy only after the arguments are read: --help and usage errors stay instant.
    from vpp.export.writer import export_policy
    from vpp.policy.policy import VideoPredictionPolicy

    policy = VideoPredictionPolicy.from_pretrained(args.policy).eval()
    manifest = export_policy(
        policy,
        args.out,
        list(dict.fromkeys(instructions)),
        seed=args.seed,
        text_encoder=not args.no_text_encoder,
        attention_nodes=not args.standard_ops_only,
        fused_kernels=not args.standard_ops_only,
        fused_geglu=args.fused_geglu,
        quantize=quantize,
    )
    print(manifest)
    print(summary(manifest))


if __name__ == "__main__":
    main(sys.argv[1:])

"""``vpp-export``: a saved policy -> the ONNX artifact for the torch-free vpp-runtime (parity checked).

vpp-export POLICY_DIR --out ARTIFACT --instruction TEXT [--instruction TEXT ...] [--instructions FILE]
    [--seed N] [--no-text-encoder] [--standard-ops-only] [--fused-geglu]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    instructions = list(args.instruction or [])
    if args.instructions:
        instructions += read_instructions(args.instructions)
    if not instructions:
        parser.error("give --instruction TEXT (repeatable) or --instructions FILE")
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
    )
    print(manifest)


if __name__ == "__main__":
    main(sys.argv[1:])

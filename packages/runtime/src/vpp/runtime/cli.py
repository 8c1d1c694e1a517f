"""``vpp-runtime``: serve an exported policy artifact to robot PCs, describe one, or check a server.

vpp-runtime serve ARTIFACT [--host 127.0.0.1] [--port 8000] [--threads N] [--providers P ...]
vpp-runtime info ARTIFACT
vpp-runtime health [URL] [--timeout 5]   (exit 0: serving; 1: shutting down or unreachable)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vpp.runtime.artifact import Artifact, ArtifactError

logger = logging.getLogger(__name__)


def _rows(label: str, *values: str) -> list[str]:
    """Aligned rows, the label on the first."""
    return [f"{label if index == 0 else '':<10} {value}" for index, value in enumerate(values)]


def info(folder: Path) -> None:
    # Without hash checks: a description should be instant even for a multi-GB artifact.
    artifact = Artifact.open(folder, verify=False)
    manifest = artifact.manifest
    state, text, sampler, parity = manifest.state, manifest.text, manifest.sampler, manifest.parity
    encoded = (
        "other instructions are encoded on the fly"
        if text.encoder
        else "no text encoder: other instructions are refused"
    )
    size = manifest.image_size
    lines = [
        *_rows("artifact", f"{folder} (format_version {manifest.format_version}, by {manifest.producer})"),
        *_rows("cameras", f"{', '.join(manifest.cameras)} (resized to {size}x{size})"),
        *_rows("actions", f"chunk {manifest.action.chunk} x {manifest.action.dim} dims"),
        *_rows("state", "none" if state is None else f"{state.dim} dims"),
        *_rows("features", f"{manifest.encoder} encoder, {manifest.features.noise or 'no'} noise"),
        *_rows("sampler", f"{sampler.name}, {sampler.num_steps} steps"),
        *_rows("text", f"{len(text.instructions)} cached, {encoded}", *(repr(i) for i in text.instructions)),
        *_rows(
            "parity",
            f"policy max abs {parity.policy_max_abs}, features relative {parity.features_relative_max_abs}",
        ),
        *_rows(
            "files",
            *(f"{name} ({artifact.path(name).stat().st_size / 1e6:.1f} MB)" for name in manifest.files),
        ),
    ]
    print("\n".join(lines))


def serve(
    folder: Path, host: str, port: int, threads: int | None, providers: Sequence[str] | None, seed: int | None
) -> None:
    # onnxruntime only here: `info` works on a machine without it.
    from vpp.runtime.policy import Policy
    from vpp.runtime.server import PolicyServer, warm_up

    started = time.perf_counter()
    policy = Policy.load(folder, providers=providers, threads=threads, seed=seed)
    logger.info(
        "loaded %s in %.1f s: cameras %s, chunk %d x %d, providers %s",
        folder,
        time.perf_counter() - started,
        policy.cameras,
        policy.chunk,
        policy.action_dim,
        policy.policy_session.get_providers(),
    )
    logger.info("warm-up chunk: %.1f ms", warm_up(policy))
    try:
        server = PolicyServer(policy, host, port)
    except OSError as error:
        raise SystemExit(f"vpp-runtime serve: cannot listen on {host}:{port}: {error}") from None
    stop = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    # serve_forever runs beside the main thread, which waits for a signal: shutdown() waits for
    # serve_forever to return, so a signal handler interrupting serve_forever could not call it.
    serving = threading.Thread(target=server.serve_forever, name="policy-server")
    serving.start()
    stop.wait()
    logger.info("%s: closing connections once the requests already received are answered", received[0])
    server.shutdown()
    serving.join()
    logger.info("policy server stopped")


def health(url: str, timeout: float) -> None:
    """Prints the server's health report; exits 1 unless it is serving (for Docker's
    HEALTHCHECK and the like, on machines without curl)."""
    from vpp.runtime.client import PolicyConnectionError, check_health

    try:
        report = check_health(url, timeout=timeout)
    except (PolicyConnectionError, ValueError) as error:
        raise SystemExit(f"vpp-runtime health: {error}") from None
    print(json.dumps(report))
    if report["status"] != "ok":
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vpp-runtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="answer PolicyClient.act calls over WebSocket (msgpack)")
    serve_parser.add_argument("artifact", type=Path, help="an exported policy artifact folder (vpp-export)")
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default %(default)s)",
    )
    serve_parser.add_argument(
        "--port", type=int, default=8000, help="0 picks a free port (logged) (default %(default)s)"
    )
    serve_parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's choice)"
    )
    serve_parser.add_argument(
        "--providers",
        nargs="+",
        default=None,
        metavar="PROVIDER",
        help="ONNX Runtime execution providers in order of preference (default: TensorRT, CUDA when present, then CPU)",
    )
    serve_parser.add_argument(
        "--seed", type=int, default=None, help="seed of the server's noise generator (reproducible chunks)"
    )
    serve_parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    info_parser = commands.add_parser("info", help="describe an artifact from its manifest")
    info_parser.add_argument("artifact", type=Path)
    health_parser = commands.add_parser(
        "health", help="ask a policy server's GET /healthz; exit 0 when it is serving, 1 otherwise"
    )
    health_parser.add_argument(
        "url", nargs="?", default="ws://127.0.0.1:8000", help="the server's address (default %(default)s)"
    )
    health_parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for its answer (default %(default)s)"
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "info":
            info(args.artifact)
            return
        if args.command == "health":
            health(args.url, args.timeout)
            return
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        from vpp.runtime.policy import onnxruntime_module

        if args.providers is not None:
            available = onnxruntime_module().get_available_providers()
            missing = [name for name in args.providers if name not in available]
            if missing:
                parser.error(f"--providers {missing} not in this onnxruntime, which has {available}")
        serve(args.artifact, args.host, args.port, args.threads, args.providers, args.seed)
    except ArtifactError as error:
        raise SystemExit(f"vpp-runtime {args.command}: {error}") from None
    except ModuleNotFoundError as error:
        if error.name != "onnxruntime":
            raise
        raise SystemExit(f"vpp-runtime {args.command}: {error}") from None


if __name__ == "__main__":
    main()

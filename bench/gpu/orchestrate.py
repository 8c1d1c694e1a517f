"""Runs the GPU benchmark's stages, each in a time-boxed process of its own, into one JSON file.

Called by bench/gpu/run.sh (see bench/gpu/README.md); standard library only, so that it runs
before anything is installed. Each stage is a command run under coreutils ``timeout`` with its
own log; a stage that fails or overruns its box is recorded with the reason and the end of its
log, and the next stage starts. The whole run keeps within ``--budget`` seconds: a stage gets
at most what is left (less what ``RESERVED_S`` keeps for later stages), and one that would get
less than ``MIN_STAGE_S`` is skipped, saying so.
The JSON is rewritten after every stage, so a run stopped from outside still leaves the stages
it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCHEMA = "vpp-gpu-bench/1"
SOURCE_ROOTS = [REPO / "packages" / name / "src" for name in ("data", "tvp", "policy", "kernels", "runtime")]
WHEELS = HERE / "wheels"
MIN_STAGE_S = 15
VARIANT_STAGES = ("eager_bf16", "eager_fp32", "triton_fp32", "compile_bf16")
STAGES = ("wheels", "environment", "kernels_build", "kernels_tests", *VARIANT_STAGES)
# Seconds each stage may take on the GPU machine (estimates for an H200 machine with 16 cores:
# wheels 5, environment 10, kernels build 30-60 and tests 60-120, eager variants 25-40 each;
# compile_bf16 is dynamo + inductor over the 1.5 B-parameter UNet, minutes).
TIME_BOX_S = {
    "wheels": 60,
    "environment": 60,
    "kernels_build": 100,
    "kernels_tests": 120,
    "eager_bf16": 75,
    "eager_fp32": 75,
    "triton_fp32": 100,
    "compile_bf16": 360,
}
# Seconds kept back for each later stage when an earlier one is given its box, so that an
# overrunning early stage is cut short rather than the compile stage starved.
RESERVED_S = {"compile_bf16": 180}
DRY_RUN_TIME_BOX_S = dict.fromkeys(STAGES, 150)
STATUSES = ("ok", "failed", "timeout", "skipped")


class OrchestrateError(ValueError):
    """Bad options: the message names the option and what it accepts."""


class BudgetExhaustedError(Exception):
    """SIGTERM from run.sh's outer ``timeout``: the whole run's time is up."""


def parse_time_boxes(values: list[str]) -> dict[str, float]:
    boxes: dict[str, float] = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in STAGES:
            raise OrchestrateError(
                f"--time-box {value!r}: unknown stage {name!r}; stages are {', '.join(STAGES)}"
            )
        try:
            boxes[name] = float(seconds)
        except ValueError:
            raise OrchestrateError(
                f"--time-box {value!r}: expected STAGE=SECONDS, e.g. compile_bf16=300"
            ) from None
        if boxes[name] <= 0:
            raise OrchestrateError(f"--time-box {value!r}: seconds must be > 0")
    return boxes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the same stages on the CPU: tiny preset, few calls, results in a temporary folder, GPU-only stages "
        "skipped with the reason",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where gpu_<gpu-name>.json goes (default: bench/results; for --dry-run a new temporary folder)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="builds, logs and compile caches (default: bench/gpu/.cache/work)"
    )
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    parser.add_argument(
        "--time-box",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="override one stage's time box",
    )
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 450; dry run 240)")
    parser.add_argument("--preset", help="policy preset (default paper; dry run tiny)")
    parser.add_argument("--runs", type=int, help="timed act calls per variant (default 30; dry run 2)")
    parser.add_argument("--warmup", type=int, help="untimed calls before them (default 5; dry run 1)")
    parser.add_argument(
        "--copy-to", type=Path, help="also copy the JSON and the stage logs here (the run tool's $OUT)"
    )
    args = parser.parse_args(argv)
    try:
        args.time_boxes = parse_time_boxes(args.time_box)
        if args.stages:
            chosen = [name.strip() for name in args.stages.split(",") if name.strip()]
            unknown = [name for name in chosen if name not in STAGES]
            if unknown or not chosen:
                raise OrchestrateError(
                    f"--stages {args.stages!r}: unknown {unknown}; stages are {', '.join(STAGES)}"
                )
            args.selected = set(chosen)
        else:
            args.selected = set(STAGES)
        for name in ("runs", "warmup", "budget"):
            value = getattr(args, name)
            if value is not None and value < (0 if name == "warmup" else 1):
                raise OrchestrateError(f"--{name}={value}; expected a positive number")
    except OrchestrateError as error:
        parser.error(str(error))
    if args.dry_run:
        defaults = {"budget": 240.0, "preset": "tiny", "runs": 2, "warmup": 1}
    else:
        defaults = {"budget": 450.0, "preset": "paper", "runs": 30, "warmup": 5}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def tail(path: Path, chars: int = 3000) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return text[-chars:]


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        self.dry_run = args.dry_run
        self.results_dir = args.results_dir or (
            Path(tempfile.mkdtemp(prefix="vpp-gpu-dry-run-")) if self.dry_run else REPO / "bench" / "results"
        )
        self.work = args.work_dir or (self.results_dir / "work" if self.dry_run else HERE / ".cache" / "work")
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.python = sys.executable
        self.current: subprocess.Popen | None = None
        self.report: dict[str, Any] = {
            "schema": SCHEMA,
            "dry_run": self.dry_run,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["bench/gpu/run.sh", *sys.argv[1:]]),
            "gpu": None,
            "environment": None,
            "settings": {
                "preset": args.preset,
                "views": 2,
                "dit_steps": 10,
                "runs": args.runs,
                "warmup": args.warmup,
                "budget_s": args.budget,
                "device": "cpu" if self.dry_run else "cuda",
            },
            "stages": {},
        }
        self.path = self.results_dir / ("gpu_cpu-dry-run.json" if self.dry_run else "gpu_unknown.json")

    # -- environment of the stage processes ----------------------------------------------------

    def stage_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in SOURCE_ROOTS]
        if (self.site / ".installed").is_file():
            paths.insert(0, str(self.site))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        # Triton reads this once, when first imported: the interpreter on the CPU, compiled on a GPU.
        env["TRITON_INTERPRET"] = "1" if self.dry_run else "0"
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(HERE / ".cache" / "inductor"))
        return env

    # -- stages ----------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, **fields: Any) -> None:
        self.report["stages"][name] = fields
        self.write()

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.report, indent=2))
        temporary.replace(self.path)

    def run_stage(
        self, name: str, command: list[str], result_file: Path | None = None
    ) -> dict[str, Any] | None:
        """Runs one stage's command under ``timeout``; records and returns its JSON result."""
        box = self.args.time_boxes.get(name, (DRY_RUN_TIME_BOX_S if self.dry_run else TIME_BOX_S)[name])
        later = STAGES[STAGES.index(name) + 1 :]
        reserved = (
            0.0 if self.dry_run else sum(RESERVED_S.get(s, 0) for s in later if s in self.args.selected)
        )
        left = self.remaining() - reserved
        if left < min(box, MIN_STAGE_S):
            kept = f", {reserved:.0f} s of it kept for later stages" if reserved else ""
            self.record(
                name,
                status="skipped",
                reason=f"only {max(left, 0):.0f} s of the {self.args.budget:.0f} s budget left{kept} "
                "(the stages before it used the rest)",
                seconds=0.0,
            )
            return None
        box = min(box, left)
        log_path = self.logs / f"{name}.log"
        if result_file is not None and result_file.exists():
            result_file.unlink()
        full = ["timeout", "-k", "10", f"{box:.0f}", *command]
        print(f"[orchestrate] {name}: up to {box:.0f} s: {' '.join(command)}", flush=True)
        tick = time.monotonic()
        with open(log_path, "w") as log:
            log.write("+ " + " ".join(full) + "\n")
            log.flush()
            self.current = subprocess.Popen(
                full,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.stage_env(),
                start_new_session=True,
            )
            try:
                rc = self.current.wait(timeout=box + 20)
            except subprocess.TimeoutExpired:
                self.kill_current()
                rc = 124
            except BudgetExhaustedError:
                self.kill_current()
                self.record(
                    name,
                    status="timeout",
                    reason="the run's time budget ran out (SIGTERM from run.sh's timeout)",
                    seconds=round(time.monotonic() - tick, 1),
                    log_tail=tail(log_path),
                )
                raise
            finally:
                self.current = None
        seconds = round(time.monotonic() - tick, 1)
        result = None
        if result_file is not None and result_file.is_file():
            result = json.loads(result_file.read_text())
        fields: dict[str, Any] = {
            "seconds": seconds,
            "time_box_s": round(box),
            "rc": rc,
            "log": str(log_path),
        }
        if rc == 0:
            fields["status"] = "ok"
        elif rc in (124, 137):
            fields.update(
                status="timeout", reason=f"ran past its {box:.0f} s time box", log_tail=tail(log_path)
            )
        else:
            fields.update(status="failed", reason=f"exited {rc}", log_tail=tail(log_path))
        if result is not None:
            fields["result"] = result
        print(f"[orchestrate] {name}: {fields['status']} in {seconds} s", flush=True)
        self.record(name, **fields)
        return result if rc == 0 else None

    def skip(self, name: str, reason: str) -> None:
        print(f"[orchestrate] {name}: skipped: {reason}", flush=True)
        self.record(name, status="skipped", reason=reason, seconds=0.0)

    def kill_current(self) -> None:
        process = self.current
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wheels(self) -> None:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            self.skip(
                "wheels",
                f"no wheels in {WHEELS.relative_to(REPO)} (bash bench/gpu/gather_wheels.sh makes them); "
                "the machine's own packages are used",
            )
            return
        if self.site.exists():
            shutil.rmtree(self.site)
        command = [
            self.python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(self.site),
            *map(str, wheels),
        ]
        self.run_stage("wheels", command)
        if self.report["stages"]["wheels"]["status"] == "ok":
            (self.site / ".installed").write_text("\n".join(w.name for w in wheels))
            self.report["stages"]["wheels"]["result"] = {
                "installed": [w.name for w in wheels],
                "target": str(self.site),
            }
            self.write()

    def environment(self) -> None:
        out = self.work / "environment.json"
        info = self.run_stage(
            "environment", [self.python, str(HERE / "environment.py"), "--out", str(out)], out
        )
        if info is None:
            return
        self.report["environment"] = info
        self.report["gpu"] = info.get("gpu")
        if not self.dry_run and info.get("gpu"):
            old = self.path
            self.path = self.results_dir / f"gpu_{slug(info['gpu']['name'])}.json"
            if old.exists() and old != self.path:
                old.unlink()
        self.write()

    def has_gpu(self) -> bool:
        return bool(self.report.get("gpu"))

    def kernels_build(self) -> None:
        out = self.work / "kernels_build.json"
        command = [
            self.python,
            str(HERE / "kernels.py"),
            "build",
            "--work",
            str(self.work),
            "--out",
            str(out),
        ]
        if self.dry_run:
            # The compile takes 15-35 s of 2 cores; scripts/setup.sh and test_cuda_compiles.py build it in CI.
            command += ["--no-cuda", "--configure-only"]
        elif not self.has_gpu():
            self.skip("kernels_build", "no GPU was found by the environment stage (see its log)")
            return
        self.run_stage("kernels_build", command, out)
        if self.dry_run and self.report["stages"]["kernels_build"]["status"] == "ok":
            self.report["stages"]["kernels_build"]["note"] = (
                "dry run: CMake configure only, without CUDA (the build and its CUDA kernels run on the GPU machine)"
            )
            self.write()

    def kernels_tests(self) -> None:
        if self.dry_run or not self.has_gpu():
            self.skip(
                "kernels_tests",
                "no CUDA device: the CUDA parity tests need a GPU (CI runs the CPU and "
                "Triton-interpreter parity tests of packages/kernels/tests)",
            )
            return
        out = self.work / "kernels_tests.json"
        self.run_stage(
            "kernels_tests",
            [self.python, str(HERE / "kernels.py"), "test", "--work", str(self.work), "--out", str(out)],
            out,
        )

    def variant(self, name: str) -> None:
        if not self.dry_run and not self.has_gpu():
            self.skip(
                name, "no GPU was found by the environment stage (see its log); --dry-run runs on the CPU"
            )
            return
        out = self.work / f"{name}.json"
        command = [
            self.python,
            str(HERE / "policy_bench.py"),
            "--variant",
            name,
            "--preset",
            self.args.preset,
            "--device",
            "cpu" if self.dry_run else "cuda",
            "--runs",
            str(self.args.runs),
            "--warmup",
            str(self.args.warmup),
            "--out",
            str(out),
        ]
        if self.dry_run:
            command += ["--kernels", "torch-standin", "--compile-backend", "eager"]
        elif name == "compile_bf16":
            command += ["--warmup", str(max(self.args.warmup, 3))]
        self.run_stage(name, command, out)
        if self.dry_run and name in ("triton_fp32", "compile_bf16") and name in self.report["stages"]:
            self.report["stages"][name]["note"] = {
                "triton_fp32": "dry run: torch stand-ins with the Triton kernels' signatures are patched in "
                "(the Triton interpreter took 105 s per tiny act on 2 cores)",
                "compile_bf16": "dry run: dynamo traces with backend 'eager' (no inductor, no CUDA graphs on the CPU)",
            }[name]
            self.write()

    def summary(self) -> None:
        rows = {}
        for name in VARIANT_STAGES:
            stage = self.report["stages"].get(name, {})
            result = stage.get("result") or {}
            latency = result.get("latency_ms") or {}
            rows[name] = {
                "status": stage.get("status"),
                "p50_ms": latency.get("p50"),
                "p90_ms": latency.get("p90"),
                "memory_peak_allocated_mib": result.get("memory_peak_allocated_mib"),
                "parity_max_abs": (result.get("parity") or {}).get("max_abs_normalized"),
            }
        self.report["summary"] = rows

    def main(self) -> int:
        steps = [
            ("wheels", self.wheels),
            ("environment", self.environment),
            ("kernels_build", self.kernels_build),
            ("kernels_tests", self.kernels_tests),
        ]
        steps += [(name, lambda name=name: self.variant(name)) for name in VARIANT_STAGES]
        try:
            for name, step in steps:
                if name not in self.args.selected:
                    self.skip(name, f"not selected (--stages {self.args.stages})")
                    continue
                step()
        except BudgetExhaustedError:
            self.kill_current()
            for name, _ in steps:
                if name not in self.report["stages"]:
                    self.report["stages"][name] = {
                        "status": "timeout",
                        "reason": "the run's time budget ran out (SIGTERM from run.sh's timeout)",
                        "seconds": 0.0,
                    }
        self.summary()
        self.report["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.write()
        if self.args.copy_to is not None:
            self.copy_out(self.args.copy_to)
        print(f"[orchestrate] wrote {self.path}", flush=True)
        for name, row in self.report["summary"].items():
            print(f"[orchestrate] {name}: {row}", flush=True)
        bad = [
            name for name, stage in self.report["stages"].items() if stage["status"] in ("failed", "timeout")
        ]
        if bad:
            print(f"[orchestrate] stages that failed or ran out of time: {', '.join(bad)}", flush=True)
        return 1 if bad else 0

    def copy_out(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.path, folder / self.path.name)
        with open(folder / "stage_logs.txt", "w") as combined:
            for log in sorted(self.logs.glob("*.log")):
                combined.write(f"\n===== {log.name} =====\n{tail(log, 200_000)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)

    def on_term(signum, frame):
        raise BudgetExhaustedError

    signal.signal(signal.SIGTERM, on_term)
    return run.main()


if __name__ == "__main__":
    sys.exit(main())

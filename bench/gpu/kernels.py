"""vpp-kernels' CUDA extension on the GPU machine: build it, then run the parity tests.

    python bench/gpu/kernels.py build --work DIR --out build.json [--configure-only] [--no-cuda]
    python bench/gpu/kernels.py test --work DIR --out tests.json

``build`` configures packages/kernels/cpp with CMake (``VPP_WITH_CUDA=ON`` for sm_90, the
H100/H200), builds it on every core, and lays the module beside a copy of vpp.kernels' Python
files in ``DIR/kernels-overlay`` (put first on PYTHONPATH, ``vpp.kernels._kernels`` is then the
CUDA build), then imports it there and records ``available()``. ``test`` runs
packages/kernels/tests/test_cuda_compiles.py (the CUDA kernels against the C++ ones on the GPU:
that file's fixture builds its own copy with CMake) and test_kernels_triton.py (the Triton
kernels against numpy, on the GPU when there is one) and records every test's outcome from
pytest's JUnit report. The per-source nvcc compile checks and the ONNX Runtime custom-op build
(no ORT header on the GPU machine) are deselected: CI runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KERNELS_CPP = REPO / "packages" / "kernels" / "cpp"
KERNELS_PY = REPO / "packages" / "kernels" / "src" / "vpp" / "kernels"
TEST_FILES = [
    "packages/kernels/tests/test_cuda_compiles.py",
    "packages/kernels/tests/test_kernels_triton.py",
]
DESELECT = "not compiles_for_sm90 and not custom_op_library"


class KernelStageError(RuntimeError):
    """A build or test step failed; the message names the command and the end of its output."""


def run_step(command: list[str], log: list[dict[str, Any]], env: dict[str, str] | None = None) -> str:
    print("+ " + " ".join(command), flush=True)
    tick = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    output = result.stdout + result.stderr
    print(output[-6000:], flush=True)
    log.append(
        {
            "command": " ".join(command),
            "seconds": round(time.perf_counter() - tick, 2),
            "rc": result.returncode,
        }
    )
    if result.returncode != 0:
        raise KernelStageError(f"{' '.join(command)} exited {result.returncode}:\n{output[-3000:]}")
    return output


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))
    return str(candidates[-1]) if candidates else None


def pybind11_dir() -> str:
    try:
        import pybind11
    except ImportError:
        raise KernelStageError(
            f"pybind11 is not installed for {sys.executable} (pip install pybind11)"
        ) from None
    return pybind11.get_cmake_dir()


def build(work: Path, with_cuda: bool, configure_only: bool) -> dict[str, Any]:
    if shutil.which("cmake") is None:
        raise KernelStageError("cmake is not on PATH")
    environment = dict(os.environ)
    nvcc = nvcc_path()
    if with_cuda:
        if nvcc is None:
            raise KernelStageError(
                "nvcc was not found (PATH, /usr/local/cuda*/bin): the CUDA kernels cannot build"
            )
        environment["CUDACXX"] = nvcc
    build_dir = work / "kernels-build"
    steps: list[dict[str, Any]] = []
    configure = [
        "cmake",
        "-S",
        str(KERNELS_CPP),
        "-B",
        str(build_dir),
        f"-DVPP_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        "-DVPP_CUDA_ARCHITECTURES=90",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11_dir()}",
    ]
    run_step(configure, steps, environment)
    result: dict[str, Any] = {"with_cuda": with_cuda, "nvcc": nvcc, "steps": steps, "built": False}
    if configure_only:
        return result
    run_step(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)], steps, environment)
    modules = sorted(build_dir.glob("_kernels*.so"))
    if not modules:
        raise KernelStageError(f"the build left no _kernels*.so in {build_dir}")
    overlay = work / "kernels-overlay" / "vpp" / "kernels"
    if overlay.exists():
        shutil.rmtree(overlay)
    shutil.copytree(KERNELS_PY, overlay, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(modules[0], overlay / modules[0].name)
    probe = (
        "import json, vpp.kernels as k; from vpp.kernels import _kernels;"
        "print(json.dumps({'file': _kernels.__file__, 'built_with_cuda': bool(_kernels.built_with_cuda),"
        " 'available': k.available()}))"
    )
    probe_env = {
        **environment,
        "PYTHONPATH": os.pathsep.join([str(overlay.parents[1]), environment.get("PYTHONPATH", "")]),
    }
    output = run_step([sys.executable, "-c", probe], steps, probe_env)
    result.update(
        built=True, module=str(overlay / modules[0].name), probe=json.loads(output.strip().splitlines()[-1])
    )
    if Path(result["probe"]["file"]).parent != overlay:
        raise KernelStageError(
            f"vpp.kernels._kernels imported from {result['probe']['file']}, not the overlay {overlay}: an installed "
            "vpp-kernels (an editable install's import hook, say) shadows it; run where none is installed"
        )
    if with_cuda and not result["probe"]["built_with_cuda"]:
        raise KernelStageError(f"the overlay's module was built without CUDA: {result['probe']}")
    return result


def junit_outcomes(report: Path) -> dict[str, Any]:
    root = ElementTree.parse(report).getroot()
    tests = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or element.text or "")[:500]
        tests.append(
            {"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message}
        )
    counts = {
        key: sum(t["outcome"] == key for t in tests) for key in ("passed", "failed", "error", "skipped")
    }
    return {"counts": counts, "tests": tests}


def test(work: Path) -> dict[str, Any]:
    report = work / "kernels-tests.xml"
    overlay_root = work / "kernels-overlay"
    environment = dict(os.environ)
    if (overlay_root / "vpp" / "kernels").is_dir():
        environment["PYTHONPATH"] = os.pathsep.join([str(overlay_root), environment.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        *TEST_FILES,
        "-k",
        DESELECT,
        f"--junitxml={report}",
    ]
    print("+ " + " ".join(command), flush=True)
    tick = time.perf_counter()
    completed = subprocess.run(command, check=False, cwd=REPO, env=environment)
    if not report.is_file():
        raise KernelStageError(f"pytest exited {completed.returncode} without a JUnit report")
    result = junit_outcomes(report)
    result.update(
        pytest_rc=completed.returncode,
        seconds=round(time.perf_counter() - tick, 2),
        command=" ".join(command),
        overlay=str(overlay_root) if "PYTHONPATH" in environment else None,
    )
    by_name = {t["test"].rsplit("::", 1)[-1]: t for t in result["tests"]}
    parity = by_name.get("test_cuda_kernels_match_cpu_kernels_on_a_gpu")
    result["cuda_parity_checked"] = parity is not None and parity["outcome"] == "passed"
    if completed.returncode != 0:
        failed = [t["test"] for t in result["tests"] if t["outcome"] in ("failed", "error")]
        raise TestsFailedError(result, f"pytest exited {completed.returncode}; failed: {failed}")
    return result


class TestsFailedError(KernelStageError):
    """Tests ran and some failed: the result is still recorded."""

    def __init__(self, result: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.result = result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("build", "test"))
    parser.add_argument("--work", required=True, type=Path, help="folder for the build and reports")
    parser.add_argument("--out", required=True, type=Path, help="where the stage's JSON result goes")
    parser.add_argument("--no-cuda", action="store_true", help="build the CPU kernels only")
    parser.add_argument("--configure-only", action="store_true", help="run CMake's configure step only")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        if args.action == "build":
            result = build(args.work, with_cuda=not args.no_cuda, configure_only=args.configure_only)
        else:
            result = test(args.work)
    except TestsFailedError as failure:
        args.out.write_text(json.dumps(failure.result, indent=2))
        print(f"kernels {args.action}: {failure}", file=sys.stderr)
        return 1
    except KernelStageError as error:
        print(f"kernels {args.action}: {error}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

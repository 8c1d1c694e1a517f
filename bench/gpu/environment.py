"""The machine the GPU benchmark ran on: GPU, driver, toolchain and package versions, as JSON.

    python bench/gpu/environment.py --out env.json

Imports torch and the packages the benchmark uses, and records where each was imported from
(so that a carried wheel shadowing the machine's copy shows). No GPU is fine: ``gpu`` is then
null and ``gpu_missing_reason`` says why.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "triton", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pybind11")


def command_output(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"failed: {error}"
    return (result.stdout or result.stderr).strip()


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))
    return str(candidates[-1]) if candidates else None


def package_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # a broken install is recorded, not fatal
            versions[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        versions[name] = {
            "version": getattr(module, "__version__", None),
            "path": str(Path(module.__file__).parent),
        }
    return versions


def describe() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "dev_nvidia0": os.path.exists("/dev/nvidia0"),
        "packages": package_versions(),
    }
    nvcc = nvcc_path()
    info["nvcc"] = {
        "path": nvcc,
        "version": command_output([nvcc, "--version"]).splitlines()[-1] if nvcc else None,
    }
    cmake = command_output(["cmake", "--version"])
    info["cmake"] = cmake.splitlines()[0] if cmake else None
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": round(properties.total_memory / 2**30, 2),
            "multiprocessors": properties.multi_processor_count,
            "count": torch.cuda.device_count(),
        }
        smi = command_output(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"]
        )
        info["gpu"]["nvidia_smi"] = smi
    else:
        info["gpu"] = None
        info["gpu_missing_reason"] = "torch.cuda.is_available() is False on this machine"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    info = describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    print(json.dumps({"gpu": info["gpu"], "torch": info["packages"]["torch"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

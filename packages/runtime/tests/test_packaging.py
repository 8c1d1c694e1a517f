"""vpp-runtime builds a wheel and a self-contained sdist without network access, the sdist
installs alone into a fresh venv (as `pip install vpp-runtime[cpu]` would on a robot PC) and
brings the custom-op library, and a build that cannot make that library says so and stops
(unless told to build without it, which it then says)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2]
RUNTIME = PACKAGES / "runtime"
ORT_HEADERS = PACKAGES.parent / ".cache" / "onnxruntime-headers" / "include"

pytestmark = pytest.mark.slow


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, **kwargs)


@pytest.fixture(scope="module")
def ort_headers() -> Path:
    # an environment variable names the folder for builds from the sdist, which lies outside the checkout
    folder = Path(os.environ.get("VPP_ORT_INCLUDE_DIR") or ORT_HEADERS)
    if not (folder / "onnxruntime_c_api.h").is_file():
        pytest.skip(f"no ONNX Runtime C API header in {folder} (run scripts/ort-headers.sh)")
    return folder


@pytest.fixture(scope="module")
def distributions(tmp_path_factory, ort_headers) -> dict[str, Path]:
    """The sdist, and the wheel that `python -m build` makes from it, with no build isolation (offline)."""
    out = tmp_path_factory.mktemp("dist")
    environment = {**os.environ, "VPP_ORT_INCLUDE_DIR": str(ort_headers)}
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(RUNTIME)]
    result = run(command, env=environment)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (sdist,) = out.glob("vpp_runtime-*.tar.gz")
    (wheel,) = out.glob("vpp_runtime-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_sdist_carries_the_custom_op_sources_and_no_build_output(distributions):
    with tarfile.open(distributions["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for source in (
        "pyproject.toml",
        "cpp/CMakeLists.txt",
        "cpp/src/ort_ops.cpp",
        "cpp/src/group_norm_silu.cpp",
        "cpp/include/vpp/kernels.h",
        "cpp/cuda/group_norm_silu.cu",
        "cpp/cmake/VppKernelTargets.cmake",
        "src/vpp/runtime/policy.py",
    ):
        assert source in names, f"{source} missing from the sdist"
    assert not any(name.startswith("build/") or name.endswith(".so") for name in names), sorted(names)


def test_the_wheel_holds_the_custom_op_library_for_every_python_3(distributions):
    wheel = distributions["wheel"]
    assert "-py3-none-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "vpp/runtime/libvpp_ort_ops.so" in names
    assert not any("kernels" in name for name in names), sorted(names)
    # onnxruntime comes from an extra, so that a GPU install does not get the CPU wheel as well
    assert 'Requires-Dist: onnxruntime; extra == "cpu"' in metadata
    assert 'Requires-Dist: onnxruntime-gpu; extra == "gpu"' in metadata
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: onnxruntime")]
    assert all("extra ==" in line for line in requirements), requirements


def test_the_sdist_installs_alone_in_a_fresh_venv_and_loads_its_custom_ops(
    distributions, ort_headers, tmp_path
):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # vpp-data from its folder: it is a dependency, and no index has it
    environment = {**os.environ, "VPP_ORT_INCLUDE_DIR": str(ort_headers)}
    runtime = f"vpp-runtime[cpu] @ {distributions['sdist'].as_uri()}"
    install = [python, "-m", "pip", "install", "-q", runtime, str(PACKAGES / "data")]
    result = run(install, env=environment)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    script = (
        "import sys\n"
        "import onnxruntime as ort\n"
        "import vpp.runtime\n"
        "from vpp.runtime import custom_ops\n"
        "library = custom_ops.ort_ops_library()\n"
        f"assert library is not None and library.is_relative_to({str(venv)!r}), library\n"
        "options = ort.SessionOptions()\n"
        "options.register_custom_ops_library(str(library))\n"
        "ops = custom_ops.library_ops(library)\n"
        "assert 'CPUExecutionProvider' in ops['GroupNorm'] and 'CPUExecutionProvider' in ops['GeGLU'], ops\n"
        "assert 'torch' not in sys.modules\n"
        "print('loaded', library)\n"
    )
    result = run([python, "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout


def test_a_build_without_the_ort_header_stops_and_says_how_to_fix_it(distributions, tmp_path):
    """Built from the sdist (outside the checkout, so CMake finds no header) with no folder named."""
    with tarfile.open(distributions["sdist"]) as archive:
        archive.extractall(tmp_path, filter="data")
    (source,) = tmp_path.glob("vpp_runtime-*")
    environment = {key: value for key, value in os.environ.items() if key != "VPP_ORT_INCLUDE_DIR"}
    out = str(tmp_path / "out")
    # `build`, not `pip wheel`: the interpreter Pants gives tests has no pip.
    wheel = [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", out, str(source)]
    result = run(wheel, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "onnxruntime_c_api.h not found" in output and "VPP_ORT_INCLUDE_DIR" in output, output[-4000:]
    assert not list(tmp_path.glob("out/*.whl"))


def test_a_named_header_folder_without_the_header_stops_the_build(tmp_path):
    """From the checkout, whose .cache holds the header: an explicit VPP_ORT_INCLUDE_DIR that lacks
    it is an error, not a silent fallback to another copy."""
    empty = tmp_path / "include"
    empty.mkdir()
    environment = {**os.environ, "VPP_ORT_INCLUDE_DIR": str(empty)}
    out = tmp_path / "out"
    wheel = [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out), str(RUNTIME)]
    result = run(wheel, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    words = " ".join(output.split())  # CMake wraps its messages
    assert f"VPP_ORT_INCLUDE_DIR={empty} holds no onnxruntime_c_api.h" in words, output[-4000:]
    assert not list(out.glob("*.whl"))


def test_a_build_told_to_skip_the_custom_ops_says_so_and_leaves_them_out(distributions, tmp_path):
    """The explicit opt-out: a wheel without libvpp_ort_ops, and a warning in the build's output."""
    with tarfile.open(distributions["sdist"]) as archive:
        archive.extractall(tmp_path, filter="data")
    (source,) = tmp_path.glob("vpp_runtime-*")
    environment = {key: value for key, value in os.environ.items() if key != "VPP_ORT_INCLUDE_DIR"}
    out = tmp_path / "out"
    wheel = [
        *(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out)),
        *("-C", "cmake.define.VPP_REQUIRE_ORT_OPS=OFF", str(source)),
    ]
    result = run(wheel, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "building WITHOUT the ONNX Runtime custom ops" in output, output[-4000:]
    (built,) = out.glob("vpp_runtime-*.whl")
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
    assert "vpp/runtime/policy.py" in names and not any(name.endswith(".so") for name in names), sorted(names)

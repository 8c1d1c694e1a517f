"""The CUDA kernels compile for Hopper (sm_90) here; on a machine with a GPU they also match the CPU kernels.

The GroupNorm+SiLU and GEGLU kernels are vpp-runtime's (packages/runtime/cpp/cuda, in its
custom-op library for ORT's CUDA provider), the sampler and attention kernels vpp-kernels' own.
This machine has nvcc but no GPU, so the per-file compile is the check that always runs; the
CMake builds with VPP_WITH_CUDA=ON and the device parity test need more time or a device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

PACKAGES = Path(__file__).resolve().parents[2]
KERNELS_CPP = PACKAGES / "kernels" / "cpp"
RUNTIME_CPP = PACKAGES / "runtime" / "cpp"
CUDA_SOURCES = sorted([*(KERNELS_CPP / "cuda").glob("*.cu"), *(RUNTIME_CPP / "cuda").glob("*.cu")])
NVCC = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed on this machine")


def test_every_cuda_kernel_has_a_source():
    assert {source.stem for source in CUDA_SOURCES} == {
        "group_norm_silu",
        "sampler_step",
        "attention",
        "geglu",
    }


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda source: source.name)
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    object_file = tmp_path / f"{source.stem}.o"
    command = [
        NVCC,
        "-std=c++17",
        "-O3",
        "-arch=sm_90",
        "-Werror",
        "all-warnings",
        "-I",
        str(KERNELS_CPP / "include"),
        "-I",
        str(RUNTIME_CPP / "include"),
        "-c",
        str(source),
        "-o",
        str(object_file),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    contents = object_file.read_bytes()
    assert b".nv_fatbin" in contents, "the object carries no device code"
    assert b"sm_90" in contents, "the device code was not built for sm_90"


def _pybind11_cmake_dir() -> str | None:
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_cmake_dir()


@pytest.fixture(scope="module")
def cuda_extension_dir(tmp_path_factory) -> Path:
    """The extension built by CMake with VPP_WITH_CUDA=ON (about 15 s on 2 cores)."""
    if NVCC is None or shutil.which("cmake") is None:
        pytest.skip("nvcc and cmake are needed to build the CUDA extension")
    pybind11_dir = _pybind11_cmake_dir()
    if pybind11_dir is None:
        pytest.skip("pybind11 is not installed in this interpreter (pip install pybind11)")
    build_dir = tmp_path_factory.mktemp("cuda-build")
    environment = {**os.environ, "CUDACXX": NVCC}
    configure = [
        "cmake",
        "-S",
        str(KERNELS_CPP),
        "-B",
        str(build_dir),
        "-DVPP_WITH_CUDA=ON",
        "-DVPP_CUDA_ARCHITECTURES=90",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11_dir}",
    ]
    for command in (configure, ["cmake", "--build", str(build_dir), "--parallel", "2"]):
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=300, env=environment
        )
        assert result.returncode == 0, (
            f"{' '.join(command)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return build_dir


def _run_with_extension(build_dir: Path, script: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=build_dir,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_cmake_builds_the_extension_with_cuda_bindings(cuda_extension_dir):
    output = _run_with_extension(
        cuda_extension_dir,
        "import _kernels\n"
        "assert _kernels.built_with_cuda\n"
        "names = [n for n in dir(_kernels) if n.startswith('cuda_')]\n"
        "print(_kernels.cuda_device_count(), sorted(names))\n",
    )
    device_count, names = output.split(" ", 1)
    assert int(device_count) >= 0
    for kernel in (
        "cuda_group_norm_silu",
        "cuda_geglu",
        "cuda_ddim_step",
        "cuda_euler_step",
        "cuda_edm_denoise",
        "cuda_scaled_dot_product_attention",
    ):
        assert kernel in names


@pytest.mark.slow
def test_the_custom_op_library_of_a_cuda_build_has_cuda_kernels(tmp_path):
    from vpp.runtime import custom_ops

    if NVCC is None or shutil.which("cmake") is None:
        pytest.skip("nvcc and cmake are needed to build the CUDA custom-op library")
    build_dir = tmp_path / "ort-ops-cuda"
    environment = {**os.environ, "CUDACXX": NVCC}
    configure = [
        "cmake",
        "-S",
        str(RUNTIME_CPP),
        "-B",
        str(build_dir),
        "-DVPP_WITH_CUDA=ON",
        "-DVPP_CUDA_ARCHITECTURES=90",
    ]
    for command in (configure, ["cmake", "--build", str(build_dir), "--parallel", "2"]):
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=300, env=environment
        )
        if result.returncode != 0 and "onnxruntime_c_api.h not found" in result.stdout + result.stderr:
            pytest.skip("no ONNX Runtime C API header here (scripts/ort-headers.sh)")
        assert result.returncode == 0, (
            f"{' '.join(command)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    ops = custom_ops.library_ops(build_dir / custom_ops.library_name())
    assert all("CUDAExecutionProvider" in ops[name] for name in ("GroupNorm", "GeGLU")), ops


@pytest.mark.slow
def test_cuda_kernels_match_cpu_kernels_on_a_gpu(cuda_extension_dir):
    script = textwrap.dedent(
        """
        import _kernels, numpy as np
        if _kernels.cuda_device_count() == 0:
            print('no-device'); raise SystemExit
        close = np.testing.assert_allclose
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 320, 14, 16, 16)).astype(np.float32) * 3 + 1
        w, b = (rng.standard_normal(320).astype(np.float32) for _ in range(2))
        close(
            _kernels.cuda_group_norm_silu(x, w, b, 32, 1e-5, True),
            _kernels.group_norm_silu(x, w, b, 32, 1e-5, True), rtol=1e-4, atol=1e-4,
        )
        f = rng.standard_normal(x.shape).astype(np.float32)
        close(_kernels.cuda_geglu(x, f), _kernels.geglu(x, f), rtol=1e-5, atol=1e-5)
        for name in ('ddim_step', 'euler_step'):
            for p in ('edm', 'v'):
                close(
                    getattr(_kernels, 'cuda_' + name)(x, f, 80.0, 40.0, 0.5, p, None),
                    getattr(_kernels, name)(x, f, 80.0, 40.0, 0.5, p, None), rtol=1e-6, atol=1e-5,
                )
        q, k, v = (rng.standard_normal((2, 8, 40, 64)).astype(np.float32) for _ in range(3))
        mask = np.broadcast_to(rng.random((1, 1, 40, 40)) > 0.3, (2, 8, 40, 40))
        close(
            _kernels.cuda_scaled_dot_product_attention(q, k, v, mask, True, None),
            _kernels.scaled_dot_product_attention(q, k, v, mask, True, None), rtol=1e-4, atol=1e-5,
        )
        print('ok')
        """
    )
    if _run_with_extension(cuda_extension_dir, script).strip() == "no-device":
        pytest.skip("no CUDA device on this machine: compiled and linked, parity not checked")


def test_available_says_no_cuda_without_a_cuda_build():
    from vpp import kernels
    from vpp.kernels import _kernels

    if not _kernels.built_with_cuda:
        assert kernels.available()["cuda"] is False
        with pytest.raises(kernels.BackendUnavailableError, match="VPP_WITH_CUDA"):
            kernels.ddim_step(
                np.zeros(3, np.float32), np.zeros(3, np.float32), 1.0, 0.5, sigma_data=0.5, backend="cuda"
            )

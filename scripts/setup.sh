#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages, a .venv with every vpp package
# installed editable, torch pinned to the CPU build 2.13.0 (pip finds the wheel on disk;
# an unpinned torch would pull several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${VPP_PYTHON:-python3.11}
stamp=.venv/.vpp-setup-stamp
inputs=$(cat scripts/setup.sh packages/*/pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat $stamp)" == "$inputs" ]]; then
    exit 0
fi

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    # ffmpeg libs are bundled by PyAV; the GL stack is for MuJoCo's off-screen rendering;
    # curl, binutils (ar) and xz-utils unpack ONNX Runtime's headers (scripts/ort-headers.sh).
    need=()
    for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 curl binutils xz-utils; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if ((${#need[@]})); then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

# ONNX Runtime's C API header, for vpp-runtime's custom-op library (built by the install below).
bash scripts/ort-headers.sh || echo "warning: no ONNX Runtime headers; the vpp-runtime install below will stop and say how to proceed" >&2

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt \
    -e "packages/data[test]" -e "packages/tvp[test]" -e "packages/policy[test]" -e "packages/export[test]" -e "packages/runtime[cpu,test]" -e "packages/kernels[test]" -e "packages/robots[test]"
# gym-xarm only supplies the xArm7 MuJoCo model files that SimXArm loads; its own pin (mujoco<3)
# conflicts with franky-sim's MuJoCo 3.3, and the model runs on 3.3, so its metadata is skipped.
.venv/bin/python -m pip install -q --no-deps gym-xarm==0.1.1
# ruff formats and lints the tree (ruff.toml; .ci/run checks both); pinned, because each release
# adds rules and changes formatting.
.venv/bin/python -m pip install -q ruff==0.17.6
echo "$inputs" > "$stamp"

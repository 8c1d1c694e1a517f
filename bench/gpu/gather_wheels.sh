#!/usr/bin/env bash
# Downloads the Python wheels the GPU machine lacks into bench/gpu/wheels (git-ignored), which
# the run tool carries there and run.sh installs with `pip install --no-index --no-deps --target`
# (nothing can be downloaded on that machine). Then measures what travels: the working tree
# (tracked and untracked-not-ignored files) plus the carried wheels must stay under 64 MiB.
#
#   bash bench/gpu/gather_wheels.sh                    # the default list below
#   bash bench/gpu/gather_wheels.sh diffusers==0.42.1  # or name the wheels
#
# The machine (Python 3.12, x86-64) has torch 2.11 + CUDA 13, Triton, transformers, accelerate,
# safetensors, huggingface-hub, numpy, pybind11, CMake and nvcc (see
# /work/.library/device/KINDS.md); vpp-tvp's diffusers is the one import it lacks. Its
# version is the one this checkout's .venv has, so the GPU runs the code the tests here ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${VPP_BENCH_PYTHON:-.venv/bin/python}
folder=bench/gpu/wheels
limit_mib=64

if [[ $# -gt 0 ]]; then
    packages=("$@")
else
    version=$("$python" -c "import importlib.metadata as m; print(m.version('diffusers'))") || {
        echo "gather_wheels: diffusers is not installed in $python; name the wheel, e.g. diffusers==0.42.1" >&2
        exit 2
    }
    packages=("diffusers==$version")
fi

rm -rf "$folder"
mkdir -p "$folder"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$folder" "${packages[@]}"

if ! git check-ignore -q "$folder/x.whl"; then
    echo "gather_wheels: $folder is not git-ignored: the wheels would travel twice and show in git status" >&2
    exit 1
fi
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheel_bytes=$(du -cb "$folder"/*.whl | tail -1 | cut -f1)
ls -l "$folder"
"$python" - "$tree_bytes" "$wheel_bytes" "$limit_mib" <<'PY'
import sys

tree, wheels, limit = (int(v) for v in sys.argv[1:])
mib = 2**20
print(f"gather_wheels: working tree {tree / mib:.1f} MiB + wheels {wheels / mib:.1f} MiB = "
      f"{(tree + wheels) / mib:.1f} MiB of the {limit} MiB the run tool carries")
if tree + wheels > limit * mib:
    sys.exit("gather_wheels: over the limit: carry fewer wheels or ignore large untracked files")
PY

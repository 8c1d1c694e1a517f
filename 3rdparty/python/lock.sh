#!/usr/bin/env bash
# The one command to run after changing dependencies in any packages/*/pyproject.toml:
# regenerates requirements.txt from them, then Pants' lockfile (default.lock) from PyPI plus the
# CPU torch wheel in /opt/wheels. Commit both files.
set -euo pipefail
cd "$(dirname "$0")/../.."
PANTS_BOOTSTRAP_ONLY=1 ./pants
.tools/pants-2.17.1/bin/python 3rdparty/python/sync_from_pyprojects.py
./pants --no-pantsd generate-lockfiles --resolve=python-default
if grep -q '"project_name": "nvidia-' 3rdparty/python/default.lock; then
    echo "lock.sh: CUDA packages (nvidia-*) entered the lockfile: torch must stay the +cpu build" >&2
    exit 1
fi
grep -q '"version": "2.13.0+cpu"' 3rdparty/python/default.lock || {
    echo "lock.sh: the lockfile does not pin torch 2.13.0+cpu" >&2
    exit 1
}

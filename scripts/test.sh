#!/usr/bin/env bash
# Runs every test (slow ones included) and ends with pytest's "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

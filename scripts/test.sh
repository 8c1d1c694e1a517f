#!/usr/bin/env bash
# Runs every test (slow ones included) and ends with pytest's "N passed, N failed" line.
# The benchmarks in bench/ run once each with timing off, as tests of their parity checks
# (`pytest bench/ --benchmark-only` times them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --benchmark-disable "$@"

#!/usr/bin/env bash
# The prepared GPU benchmark: vpp-kernels' CUDA build and parity tests, then the paper-preset
# policy timed end to end (eager bf16/fp32, Triton kernels, torch.compile with CUDA graphs), into
# bench/results/gpu_<gpu-name>.json. Never runs longer than 8 minutes; see bench/gpu/README.md.
#
#   bash bench/gpu/run.sh                      # on the GPU machine
#   bash bench/gpu/run.sh --copy-to "$OUT"     # ... and copy the JSON and logs to the run tool's $OUT
#   bash bench/gpu/run.sh --dry-run            # the same stages on the CPU, tiny preset, temp folder
#   bash bench/gpu/run.sh --stages compile_bf16 --budget 200   # rerun one stage
#   bash bench/gpu/run.sh --help
#
# Python: $VPP_BENCH_PYTHON, else the checkout's .venv/bin/python, else python3 (the GPU
# machine's, which holds its torch and Triton).
set -uo pipefail
cd "$(dirname "$0")/../.."

python=${VPP_BENCH_PYTHON:-}
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "run.sh: no Python at '$python' (set VPP_BENCH_PYTHON to an interpreter with torch)" >&2
    exit 2
fi
if ! command -v timeout >/dev/null 2>&1; then
    echo "run.sh: coreutils 'timeout' is needed to time-box the stages" >&2
    exit 2
fi

# The orchestrator keeps to --budget (450 s; dry run 240 s) by itself; this outer limit (15 s
# more, then SIGKILL 10 s later) stops it even if it hangs, within the 8 minutes.
budget=450
copy_to=""
dry_run=0
previous=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1; [[ "$budget" == 450 ]] && budget=240 ;;
        --budget=*) budget=${arg#--budget=} ;;
        --copy-to=*) copy_to=${arg#--copy-to=} ;;
        -h|--help) exec "$python" bench/gpu/orchestrate.py --help ;;
    esac
    [[ "$previous" == "--budget" ]] && budget=$arg
    [[ "$previous" == "--copy-to" ]] && copy_to=$arg
    previous=$arg
done
if ! [[ "$budget" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "run.sh: --budget '$budget' is not a number of seconds" >&2
    exit 2
fi
limit=$(( ${budget%.*} + 15 ))

timeout -k 10 "$limit" "$python" bench/gpu/orchestrate.py "$@"
status=$?
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "run.sh: the orchestrator was stopped after ${limit} s; its JSON holds the stages it finished" >&2
    # it copies its files itself when it ends normally
    if [[ -n "$copy_to" && $dry_run -eq 0 ]]; then
        mkdir -p "$copy_to" && cp -f bench/results/gpu_*.json "$copy_to"/ 2>/dev/null
    fi
fi
exit $status

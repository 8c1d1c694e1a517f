#!/usr/bin/env bash
# Does a fast variant of a trained MetaWorld policy keep its skill? The policy of a
# scripts/metaworld_repro.sh run, exported as float32, int8 hybrid and int8-dynamic (calibrated on the
# run's demonstrations), each evaluated on the same unseen configurations (the eval split's first
# EVAL_EPISODES per task, the repro's step cap), then `vpp-robot eval compare` against float32
# (docs/quantization.md).
#
#   RUN=runs/mw4 bash scripts/metaworld_variants.sh [POLICY_FOLDER]    # default: $RUN/policy-tvp/model
#
# Resumable: finished exports and evaluations are kept, an evaluation continues from its last
# finished episode. JOBS=2 runs two evaluations at once (one ORT thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:?set RUN to a scripts/metaworld_repro.sh run folder}
policy=${1:-$RUN/policy-tvp/model}
TASKS=${TASKS:-reach,button-press-topdown,drawer-open,door-open,window-open,plate-slide,coffee-push,sweep-into,push,pick-place}
EVAL_EPISODES=${EVAL_EPISODES:-10}
EVAL_MAX_STEPS=${EVAL_MAX_STEPS:-150}
JOBS=${JOBS:-1}
out=${OUT:-$RUN/variants}
BIN=.venv/bin
export OMP_NUM_THREADS=1
mkdir -p "$out"
[[ -f $policy/config.json ]] || { echo "no trained policy at $policy" >&2; exit 2; }
# the instructions the evaluation will give (one per task), cached in the artifact
$BIN/python -c 'import sys
from vpp.robots.envs.metaworld_tasks import INSTRUCTIONS
print("\n".join(INSTRUCTIONS[t] for t in sys.argv[1].split(",")))' "$TASKS" > "$out/instructions.txt"

export_variant() {
    local name=$1
    shift
    if [[ -e $out/$name/manifest.json.sha256 ]]; then
        echo "== export $name: done already"
        return 0
    fi
    echo "== export $name"
    $BIN/vpp-export "$policy" --out "$out/$name" --instructions "$out/instructions.txt" "$@" > "$out/export-$name.log" 2>&1
}
export_variant fp32
export_variant int8 --quantize int8 --calibration-data "$RUN/demos"
export_variant int8-dynamic --quantize int8-dynamic --calibration-data "$RUN/demos"

evaluate() {
    local name=$1
    if [[ -e $out/eval-$name/results.json ]]; then
        echo "== eval $name: done already"
        return 0
    fi
    echo "== eval $name"
    $BIN/vpp-robot eval metaworld --policy "$out/$name" --name "$name" --tasks "$TASKS" --episodes "$EVAL_EPISODES" \
        --max-steps "$EVAL_MAX_STEPS" --split eval --videos-per-task 0 --inference-threads 1 \
        --out "$out/eval-$name" > "$out/eval-$name.log" 2>&1
}
running=0
for name in fp32 int8 int8-dynamic; do
    evaluate "$name" &
    running=$((running + 1))
    if ((running >= JOBS)); then
        wait -n
        running=$((running - 1))
    fi
done
wait
$BIN/vpp-robot eval compare fp32="$out/eval-fp32" int8="$out/eval-int8" int8-dynamic="$out/eval-int8-dynamic" \
    --json "$out/comparison.json" | tee "$out/comparison.md"

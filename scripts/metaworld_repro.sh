#!/usr/bin/env bash
# The CPU-scale MetaWorld reproduction, end to end and resumable: oracle demonstrations (the train
# split of configurations) -> `small` TVP (VAE fitted first) fine-tuned on their videos -> policy on
# its predictive features and the static-encoder ablation (encoder=vae) with the same steps, batch
# and windows -> offline diagnostics on held-out demos (action error, image sensitivity) -> success
# on configurations never collected (the eval split), with 95% intervals, in the paper's Table 2
# layout -> the TVP's predictions of unseen scenes, scored -> summary.json
# (docs/results/metaworld-cpu.json's source).
#
#   mkdir -p runs/mw2 && nohup bash scripts/metaworld_repro.sh > runs/mw2/repro.out 2>&1 &
#
# Rerunning continues every stage from its checkpoint or finished output (evaluation from its last
# finished episode). Each stage logs to $RUN/logs/<stage>.log and appends its wall time to
# $RUN/stages.jsonl. Every size is an environment variable below; use a new RUN folder when the
# data or models change. The defaults are the next run's (docs/metaworld-cpu.md): about 2.5-3
# hours of an idle 2-core machine. The 2026-12-02 attempt used VAE_FIT_STEPS=150 TVP_STEPS=120
# POLICY_STEPS=1500 and was stopped before its policies finished.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-runs/mw2}
TASKS=${TASKS:-reach,button-press-topdown,drawer-open,door-open,window-open,plate-slide,coffee-push,sweep-into,push,pick-place}
DEMOS_PER_TASK=${DEMOS_PER_TASK:-50}
# the last HELD_OUT_PER_TASK demos of each task are never trained on (offline diagnostics)
HELD_OUT_PER_TASK=${HELD_OUT_PER_TASK:-5}
VAE_FIT_STEPS=${VAE_FIT_STEPS:-600}
TVP_STEPS=${TVP_STEPS:-300}
TVP_BATCH=${TVP_BATCH:-4}
TVP_LR=${TVP_LR:-3e-4}
TVP_CHECKPOINT_EVERY=${TVP_CHECKPOINT_EVERY:-20}
WINDOW_STRIDE=${WINDOW_STRIDE:-8}
CHUNK=${CHUNK:-4}
POLICY_STEPS=${POLICY_STEPS:-2000}
POLICY_BATCH=${POLICY_BATCH:-32}
POLICY_LR=${POLICY_LR:-3e-4}
# extra `vpp-policy train` flags shared by both policies (state token, dropout, position embedding)
POLICY_FLAGS=${POLICY_FLAGS:---state-dropout 0 --feature-position-embedding}
EVAL_EPISODES=${EVAL_EPISODES:-20}
EVAL_MAX_STEPS=${EVAL_MAX_STEPS:-150}
# stage names not to run, space-separated, e.g. "policy-vae eval-vae diagnose-vae" when only the VPP
# policy is wanted (the summary leaves a skipped row null)
SKIP_STAGES=${SKIP_STAGES:-}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
BIN=.venv/bin
mkdir -p "$RUN/logs"
TRAIN_EPISODES_PER_TASK=$((DEMOS_PER_TASK - HELD_OUT_PER_TASK))

log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$RUN/logs/repro.log"; }

# stage NAME DONE_PATH COMMAND...: runs COMMAND unless DONE_PATH exists, logging and timing it
stage() {
    local name=$1 done_path=$2
    shift 2
    if [[ " $SKIP_STAGES " == *" $name "* ]]; then
        log "$name: skipped (SKIP_STAGES)"
        return 0
    fi
    if [[ -e $done_path ]]; then
        log "$name: already done ($done_path)"
        return 0
    fi
    log "$name: start: $*"
    local start end
    start=$(date +%s)
    "$@" >> "$RUN/logs/$name.log" 2>&1
    end=$(date +%s)
    echo "{\"stage\": \"$name\", \"start\": $start, \"end\": $end, \"seconds\": $((end - start))}" >> "$RUN/stages.jsonl"
    log "$name: done in $((end - start)) s"
}

policy_train() {
    local encoder=$1 output=$2
    shift 2
    # shellcheck disable=SC2086  # POLICY_FLAGS is a list of flags
    $BIN/vpp-policy train --data "$RUN/demos" --chunk "$CHUNK" --encoder "$encoder" \
        --episodes-per-task "$TRAIN_EPISODES_PER_TASK" --window-stride "$WINDOW_STRIDE" --steps "$POLICY_STEPS" \
        --batch-size "$POLICY_BATCH" --lr "$POLICY_LR" --checkpoint-every 250 --output "$output" $POLICY_FLAGS "$@"
}

policy_eval() {
    local policy=$1 name=$2 output=$3
    $BIN/vpp-robot eval metaworld --policy "$policy" --name "$name" --tasks "$TASKS" --episodes "$EVAL_EPISODES" \
        --max-steps "$EVAL_MAX_STEPS" --split eval --videos-per-task 2 --out "$output"
}

policy_diagnose() {
    local policy=$1 output=$2
    $BIN/vpp-policy diagnose --policy "$policy" --data "$RUN/demos" --train-episodes-per-task "$TRAIN_EPISODES_PER_TASK" \
        --held-out-per-task "$HELD_OUT_PER_TASK" --samples 4 --stride 16 --out "$output"
}

log "settings: tasks $TASKS; demos/task $DEMOS_PER_TASK ($HELD_OUT_PER_TASK held out); vae fit $VAE_FIT_STEPS;" \
    "tvp $TVP_STEPS x $TVP_BATCH; window stride $WINDOW_STRIDE; policy $POLICY_STEPS x $POLICY_BATCH lr $POLICY_LR" \
    "($POLICY_FLAGS); eval $EVAL_EPISODES unseen configurations/task <= $EVAL_MAX_STEPS steps"

# The dataset's meta/info.json exists from the first episode on, so a stopped collection is marked
# finished only by collect.done (a rerun of a finished collection resumes and finds nothing to do).
collect_demos() {
    $BIN/vpp-robot collect metaworld --tasks "$TASKS" --episodes "$DEMOS_PER_TASK" --image-size 64 --out "$RUN/demos"
    touch "$RUN/logs/collect.done"
}
stage collect "$RUN/logs/collect.done" collect_demos
# The TVP trains in the background. The VAE ablation needs only its fitted VAE, which the TVP run
# writes to tvp/base/ (renamed into place when complete) before its first step, so the ablation's
# training, diagnostics and evaluation run beside the TVP's stages, one core each.
stage tvp "$RUN/tvp/model" $BIN/vpp-tvp train --preset small --data "metaworld=lerobot:$RUN/demos#corner" \
    --fit-vae-steps "$VAE_FIT_STEPS" --steps "$TVP_STEPS" --batch-size "$TVP_BATCH" --lr "$TVP_LR" \
    --checkpoint-every "$TVP_CHECKPOINT_EVERY" --output "$RUN/tvp" &
tvp_pid=$!
while [[ ! -f $RUN/tvp/base/config.json ]]; do
    kill -0 "$tvp_pid" 2> /dev/null || { wait "$tvp_pid" || exit 1; break; }
    sleep 10
done

vae_ablation() {
    stage policy-vae "$RUN/policy-vae/model" policy_train vae "$RUN/policy-vae" --tvp "$RUN/tvp/base" --feature-cache "$RUN/features"
    stage eval-vae "$RUN/eval-vae/results.json" policy_eval "$RUN/policy-vae/model" "small, static VAE encoder" "$RUN/eval-vae"
    stage diagnose-vae "$RUN/diagnose-vae/diagnostics.json" policy_diagnose "$RUN/policy-vae/model" "$RUN/diagnose-vae"
}
vae_ablation &
vae_pid=$!

wait "$tvp_pid"
stage policy-tvp "$RUN/policy-tvp/model" policy_train tvp "$RUN/policy-tvp" --tvp "$RUN/tvp/model" --feature-cache "$RUN/features"
stage eval-tvp "$RUN/eval-tvp/results.json" policy_eval "$RUN/policy-tvp/model" "small, TVP features (VPP)" "$RUN/eval-tvp"
stage diagnose-tvp "$RUN/diagnose-tvp/diagnostics.json" policy_diagnose "$RUN/policy-tvp/model" "$RUN/diagnose-tvp"
wait "$vae_pid"
# the upper bound the demonstrations come from, on the same unseen configurations and step cap
stage eval-oracle "$RUN/eval-oracle/results.json" policy_eval oracle "MetaWorld oracle" "$RUN/eval-oracle"
# the TVP's predictions of the oracle's evaluation videos (scenes no training clip showed), scored
# against the real frames beside holding the first frame: tvp-predict/unseen.{png,gif,json}
stage tvp-predict "$RUN/tvp-predict/unseen.json" env RUN="$RUN" $BIN/python scripts/metaworld_tvp_check.py

export RUN TASKS DEMOS_PER_TASK SKIP_STAGES HELD_OUT_PER_TASK VAE_FIT_STEPS TVP_STEPS TVP_BATCH TVP_LR WINDOW_STRIDE CHUNK POLICY_STEPS \
    POLICY_BATCH POLICY_LR POLICY_FLAGS EVAL_EPISODES EVAL_MAX_STEPS
$BIN/python scripts/metaworld_summary.py
log "all stages done; $RUN/summary.json written"

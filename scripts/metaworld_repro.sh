#!/usr/bin/env bash
# Issue 4's CPU-scale MetaWorld reproduction, end to end and resumable: oracle demonstrations ->
# `small` TVP (VAE fitted first) fine-tuned on their videos -> policy on its predictive features
# and the static-encoder ablation (encoder=vae) with the same steps, batch and windows -> eval of
# both in the paper's Table 2 layout.
#
#   nohup bash scripts/metaworld_repro.sh > runs/mw-cpu/repro.out 2>&1 &
#
# Rerunning continues every stage from its checkpoint or finished output. Each stage logs to
# $RUN/logs/<stage>.log and appends its wall time to $RUN/stages.jsonl. The sizes below were
# chosen for a 2-core machine shared with other jobs (docs/metaworld-cpu.md says why); override
# any of them from the environment, with a new RUN folder if the data or models change.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-runs/mw-cpu}
TRAIN_TASKS=${TRAIN_TASKS:-reach,button-press-topdown,drawer-open,door-open,window-open,plate-slide,coffee-push,sweep-into,push,pick-place}
EVAL_TASKS=${EVAL_TASKS:-reach,button-press-topdown,plate-slide,coffee-push,push}
DEMOS_PER_TASK=${DEMOS_PER_TASK:-50}
VAE_FIT_STEPS=${VAE_FIT_STEPS:-60}
TVP_STEPS=${TVP_STEPS:-240}
TVP_BATCH=${TVP_BATCH:-4}
TVP_CHECKPOINT_EVERY=${TVP_CHECKPOINT_EVERY:-10}
# epoch seconds after which TVP training stops at its newest checkpoint and writes model/ from it
TVP_DEADLINE=${TVP_DEADLINE:-}
POLICY_EPISODES_PER_TASK=${POLICY_EPISODES_PER_TASK:-10}
WINDOW_STRIDE=${WINDOW_STRIDE:-32}
POLICY_STEPS=${POLICY_STEPS:-250}
POLICY_BATCH=${POLICY_BATCH:-16}
EVAL_EPISODES=${EVAL_EPISODES:-8}
EVAL_MAX_STEPS=${EVAL_MAX_STEPS:-120}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
BIN=.venv/bin
mkdir -p "$RUN/logs"

log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$RUN/logs/repro.log"; }

# stage NAME DONE_PATH COMMAND...: runs COMMAND unless DONE_PATH exists, logging and timing it
stage() {
    local name=$1 done_path=$2
    shift 2
    if [[ -e $done_path ]]; then
        log "$name: already done ($done_path)"
        return 0
    fi
    log "$name: start: $*"
    local start
    start=$(date +%s)
    "$@" >> "$RUN/logs/$name.log" 2>&1
    local end
    end=$(date +%s)
    echo "{\"stage\": \"$name\", \"start\": $start, \"end\": $end, \"seconds\": $((end - start))}" >> "$RUN/stages.jsonl"
    log "$name: done in $((end - start)) s"
}

TVP_ARGS=(--preset small --data "metaworld=lerobot:$RUN/demos#corner" --fit-vae-steps "$VAE_FIT_STEPS"
    --batch-size "$TVP_BATCH" --lr 2e-4 --checkpoint-every "$TVP_CHECKPOINT_EVERY" --output "$RUN/tvp")

# TVP training under an optional deadline: past it, the run is stopped and resumed with --steps
# set to its newest checkpoint, which has nothing left to do and writes model/ (constant LR, so
# the shorter run is the same run cut short).
tvp_train_until_deadline() {
    if [[ -z $TVP_DEADLINE ]]; then
        $BIN/vpp-tvp train "${TVP_ARGS[@]}" --steps "$TVP_STEPS"
        return
    fi
    # exec, so that $! is the trainer itself and not a subshell that a kill would leave it behind
    (exec $BIN/vpp-tvp train "${TVP_ARGS[@]}" --steps "$TVP_STEPS") &
    local pid=$!
    while kill -0 "$pid" 2> /dev/null; do
        if (( $(date +%s) >= TVP_DEADLINE )); then
            kill "$pid"
            wait "$pid" || true
            local newest
            newest=$(ls -d "$RUN"/tvp/checkpoints/step-* | sort | tail -1)
            local reached=$((10#${newest##*step-}))
            echo "deadline reached: stopping at the step-$reached checkpoint"
            $BIN/vpp-tvp train "${TVP_ARGS[@]}" --steps "$reached"
            return
        fi
        sleep 20
    done
    wait "$pid"
}

policy_train() {
    local encoder=$1 output=$2
    shift 2
    $BIN/vpp-policy train --data "$RUN/demos" --tvp "$RUN/tvp/model" --chunk 4 --encoder "$encoder" \
        --episodes-per-task "$POLICY_EPISODES_PER_TASK" --window-stride "$WINDOW_STRIDE" --steps "$POLICY_STEPS" --batch-size "$POLICY_BATCH" \
        --checkpoint-every 50 --output "$output" "$@"
}

policy_eval() {
    local policy=$1 name=$2 output=$3
    $BIN/vpp-policy eval --policy "$policy" --name "$name" --tasks "$EVAL_TASKS" --episodes "$EVAL_EPISODES" \
        --max-steps "$EVAL_MAX_STEPS" --out "$output"
}

# Offline check of what each policy learned: action-chunk MSE on demos it was not trained on
# (episodes 10-14 of every task, every 16th timestep), beside predicting the mean training action
# chunk of the episode's task. Cheap next to rollouts, and informative where every rollout fails.
offline_action_error() {
    RUN=$RUN POLICY_EPISODES_PER_TASK=$POLICY_EPISODES_PER_TASK $BIN/python - << 'PY'
import json, os
from pathlib import Path

import numpy as np
import torch

from vpp.policy.data import LeRobotEpisodeSource
from vpp.policy.policy import VideoPredictionPolicy

run = Path(os.environ["RUN"])
trained_per_task = int(os.environ["POLICY_EPISODES_PER_TASK"])
held_out_per_task, stride, chunk = 5, 16, 4
source = LeRobotEpisodeSource(run / "demos")
episodes = [source.episode(i) for i in range(len(source))]
seen: dict[str, int] = {}
train, test = [], []
for episode in episodes:
    k = seen[episode.instruction] = seen.get(episode.instruction, 0) + 1
    if k <= trained_per_task:
        train.append(episode)
    elif k <= trained_per_task + held_out_per_task:
        test.append(episode)
task_mean = {}
for episode in train:
    task_mean.setdefault(episode.instruction, []).extend(
        episode.actions[t : t + chunk] for t in range(episode.length - chunk + 1))
task_mean = {k: np.mean(v, axis=0) for k, v in task_mean.items()}
policies = {name: VideoPredictionPolicy.from_pretrained(run / f"policy-{name}" / "model").eval() for name in ("tvp", "vae")}
errors = {name: [] for name in (*policies, "task_mean_chunk")}
for e, episode in enumerate(test):
    for t in range(0, episode.length - chunk + 1, stride):
        truth = episode.actions[t : t + chunk]
        observation = {"corner": episode.read_frames("corner", np.array([t]))[0], "state": episode.state[t]}
        for name, policy in policies.items():
            predicted = policy.predict_action_chunk(observation, episode.instruction, torch.Generator().manual_seed(e * 1000 + t))
            errors[name].append(float(np.mean((predicted - truth) ** 2)))
        errors["task_mean_chunk"].append(float(np.mean((task_mean[episode.instruction] - truth) ** 2)))
result = {"held_out_episodes": len(test), "windows": len(errors["tvp"]), "timestep_stride": stride,
          "action_chunk_mse": {k: float(np.mean(v)) for k, v in errors.items()}}
(run / "offline").mkdir(exist_ok=True)
(run / "offline" / "results.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
PY
}

# One JSON with the settings, machine, stage wall times, training curves' ends and every eval.
summarize() {
    TRAIN_TASKS=$TRAIN_TASKS EVAL_TASKS=$EVAL_TASKS DEMOS_PER_TASK=$DEMOS_PER_TASK VAE_FIT_STEPS=$VAE_FIT_STEPS \
    TVP_STEPS=$TVP_STEPS TVP_BATCH=$TVP_BATCH WINDOW_STRIDE=$WINDOW_STRIDE POLICY_EPISODES_PER_TASK=$POLICY_EPISODES_PER_TASK POLICY_STEPS=$POLICY_STEPS \
    POLICY_BATCH=$POLICY_BATCH EVAL_EPISODES=$EVAL_EPISODES EVAL_MAX_STEPS=$EVAL_MAX_STEPS RUN=$RUN \
    $BIN/python - << 'PY'
import json, os, platform, re
from pathlib import Path

import torch

run = Path(os.environ["RUN"])
env = {k: os.environ[k] for k in ("TRAIN_TASKS", "EVAL_TASKS", "DEMOS_PER_TASK", "VAE_FIT_STEPS", "TVP_STEPS", "TVP_BATCH",
                                  "WINDOW_STRIDE", "POLICY_EPISODES_PER_TASK", "POLICY_STEPS", "POLICY_BATCH", "EVAL_EPISODES", "EVAL_MAX_STEPS")}


def curve(folder):
    # up to the step the model was written at: a run stopped at its deadline may have logged past it
    last = json.loads((folder / "train_config.json").read_text())["max_steps"]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= last]
    tail = rows[-5:]
    return {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "mean_loss_last_5_logs": sum(r["loss"] for r in tail) / len(tail), "log_every": rows[1]["step"] - rows[0]["step"]}


def windows(log):
    found = re.findall(r"(\d+) training windows", (run / "logs" / log).read_text())
    return int(found[-1])


def evaluation(name):
    results = json.loads((run / name / "results.json").read_text())
    results.pop("paper_table2")
    return results


cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
demos = json.loads((run / "demos" / "collection_state.json").read_text())
oracle = evaluation("eval-oracle")
summary = {
    "what": "issue 4: CPU-scale MetaWorld reproduction with the small preset (scripts/metaworld_repro.sh)",
    "machine": {"cpus": os.cpu_count(), "cpu": cpu_model, "torch": torch.__version__,
                "threads_per_job": int(os.environ.get("OMP_NUM_THREADS", "1")),
                "note": "2-core VM shared with other jobs (load average 5-9 during the run); no GPU"},
    "settings": {"train_tasks": env["TRAIN_TASKS"].split(","), "eval_tasks": env["EVAL_TASKS"].split(","),
                 "demos_per_task": int(env["DEMOS_PER_TASK"]), "camera": "corner", "image_size": 64,
                 "tvp": {"preset": "small", "vae_fit_steps": int(env["VAE_FIT_STEPS"]), "steps_planned": int(env["TVP_STEPS"]),
                         "batch_size": int(env["TVP_BATCH"]), "lr": 2e-4},
                 "policy": {"chunk": 4, "head_preset": "small", "episodes_per_task": int(env["POLICY_EPISODES_PER_TASK"]), "window_stride": int(env["WINDOW_STRIDE"]),
                            "steps": int(env["POLICY_STEPS"]), "batch_size": int(env["POLICY_BATCH"]), "lr": 1e-4,
                            "lr_schedule": "tristage"},
                 "eval": {"episodes_per_task": int(env["EVAL_EPISODES"]), "max_steps": int(env["EVAL_MAX_STEPS"]),
                          "seed_offset": oracle["seed_offset"]}},
    "demos": {"kept": sum(t["kept"] for t in demos["tasks"].values()), "dropped": {k: t["dropped"] for k, t in demos["tasks"].items() if t["dropped"]}},
    "stages": [json.loads(line) for line in (run / "stages.jsonl").read_text().splitlines() if line.strip()],
    "training": {"tvp": curve(run / "tvp"), "policy_tvp": {**curve(run / "policy-tvp"), "windows": windows("policy-tvp.log")},
                 "policy_vae": {**curve(run / "policy-vae"), "windows": windows("policy-vae.log")}},
    "offline_action_error": json.loads((run / "offline" / "results.json").read_text()),
    "eval": {"tvp": evaluation("eval-tvp"), "vae": evaluation("eval-vae"), "oracle": oracle},
    "paper_table2": json.loads((run / "eval-oracle" / "results.json").read_text())["paper_table2"],
}
(run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary["eval"]["tvp"]["groups"]), json.dumps(summary["eval"]["vae"]["groups"]))
PY
}

log "settings: train tasks $TRAIN_TASKS; eval tasks $EVAL_TASKS; demos/task $DEMOS_PER_TASK; vae fit $VAE_FIT_STEPS;" \
    "tvp $TVP_STEPS x $TVP_BATCH (deadline ${TVP_DEADLINE:-none}); policy episodes/task $POLICY_EPISODES_PER_TASK;" \
    "window stride $WINDOW_STRIDE;" \
    "policy $POLICY_STEPS x $POLICY_BATCH; eval $EVAL_EPISODES episodes <= $EVAL_MAX_STEPS steps"

stage collect "$RUN/demos/meta/info.json" \
    $BIN/vpp-policy collect --tasks "$TRAIN_TASKS" --episodes "$DEMOS_PER_TASK" --size 64 --out "$RUN/demos"
stage tvp "$RUN/tvp/model" tvp_train_until_deadline

# The two policies run side by side: the ablation's VAE encoding is cheap, and the TVP policy
# first spends its time caching features.
stage policy-vae "$RUN/policy-vae/model" policy_train vae "$RUN/policy-vae" &
vae_pid=$!
stage policy-tvp "$RUN/policy-tvp/model" policy_train tvp "$RUN/policy-tvp" --feature-cache "$RUN/features"
wait "$vae_pid"

stage eval-vae "$RUN/eval-vae/results.json" policy_eval "$RUN/policy-vae/model" "small, static VAE encoder" "$RUN/eval-vae" &
eval_pid=$!
stage eval-tvp "$RUN/eval-tvp/results.json" policy_eval "$RUN/policy-tvp/model" "small, TVP features" "$RUN/eval-tvp"
wait "$eval_pid"
# the upper bound the demonstrations come from, under the same seeds and step cap
stage eval-oracle "$RUN/eval-oracle/results.json" policy_eval oracle "MetaWorld oracle" "$RUN/eval-oracle"
stage offline "$RUN/offline/results.json" offline_action_error
summarize
log "all stages done; $RUN/summary.json written"

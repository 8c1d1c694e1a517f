#!/usr/bin/env bash
# The main job: a policy artifact made from scratch and run on the simulated arm at 10 Hz.
#
#   bash scripts/demo.sh OUT
#
# 1. OUT/demos     scripted-expert demonstrations on the simulated Panda (LeRobot v3)
# 2. OUT/tvp       a tiny TVP trained on their videos (both cameras)
# 3. OUT/policy    the policy head trained on the TVP's features of the demonstrations' scene camera
# 4. OUT/artifact  the policy exported to ONNX + manifest (the torch-free runtime's input)
# 5. OUT/rollout   the artifact on the simulated arm at 10 Hz: rollout.mp4, latency_report.json
#
# The stages talk through these folders only. Collection and training resume where a killed run
# stopped, a finished stage is skipped, and the rollout is run anew every time (it is the job's
# measurement). The VPP_DEMO_* variables scale the job down (tests/test_robot_demo.py);
# VPP_PYTHON is the interpreter with every vpp package (default: the repository's .venv).
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: bash scripts/demo.sh OUT" >&2
    exit 2
fi
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
python=${VPP_PYTHON:-.venv/bin/python}
episodes=${VPP_DEMO_EPISODES:-6}
vae_steps=${VPP_DEMO_VAE_STEPS:-60}
tvp_steps=${VPP_DEMO_TVP_STEPS:-80}
policy_steps=${VPP_DEMO_POLICY_STEPS:-300}
seconds=${VPP_DEMO_SECONDS:-10}
instruction="grasp the red cube"
# 1.6 s of actions at 10 Hz: with the newest chunk replacing the schedule, a chunk must outlast the
# model's latency plus the wait for the next. The policy sees the scene camera only (the wrist one
# is still recorded): each view is one more TVP pass per chunk, and with two the tiny artifact
# takes 0.45-1 s on two busy cores instead of 0.2-0.4 s, too slow to hold 10 Hz there.
chunk=16
# Every stage sees the same two cores; more BLAS threads than cores only adds contention.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$out"

stage_times=()
stage() {
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@"
    stage_times+=("$name $((SECONDS - started)) s")
}
skip_if() {
    local done_marker=$1 name=$2
    if [[ -e $done_marker ]]; then
        echo "== $name: done already ($done_marker)"
        stage_times+=("$name skipped")
        return 0
    fi
    return 1
}

stage collect "$python" -m vpp.robots.cli collect --robot sim-panda --episodes "$episodes" --out "$out/demos"
skip_if "$out/tvp/model" tvp-train || stage tvp-train "$python" -m vpp.tvp.cli train --preset tiny \
    --data "scene=lerobot:$out/demos#scene" --data "wrist=lerobot:$out/demos#wrist" \
    --fit-vae-steps "$vae_steps" --steps "$tvp_steps" --batch-size 4 --lr 1e-3 --checkpoint-every 50 --output "$out/tvp"
skip_if "$out/policy/model" policy-train || stage policy-train "$python" -m vpp.policy.cli train --data "$out/demos" \
    --tvp "$out/tvp/model" --camera scene --chunk "$chunk" --head-preset tiny \
    --steps "$policy_steps" --batch-size 16 --lr 3e-4 --checkpoint-every 100 \
    --feature-cache "$out/features" --output "$out/policy"
skip_if "$out/artifact/manifest.json" export || stage export "$python" -m vpp.policy.cli export \
    --policy "$out/policy/model" --out "$out/artifact" --instruction "$instruction"
# One ORT thread leaves the other core to the simulation's physics, servo and rendering; every
# action of a chunk may run, so that a chunk outlasts the wait for the next one.
rm -rf "$out/rollout"
stage rollout "$python" -m vpp.robots.cli run --robot sim-panda --policy "$out/artifact" --instruction "$instruction" \
    --rate 10 --seconds "$seconds" --inference-threads 1 --execute-steps "$chunk" --out "$out/rollout"

echo "== stage times"
printf '   %s\n' "${stage_times[@]}"
"$python" - "$out/rollout/latency_report.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
verdict = "HELD" if report["rate_held"] else "DID NOT HOLD"
inference = report["inference_latency"].get("p50_ms", float("nan"))
print(
    f"== policy rate {verdict} {report['target_rate_hz']:g} Hz: achieved {report['policy_rate_hz']:.2f} Hz, "
    f"{report['missed_deadlines']} ticks without an action, inference p50 {inference:.0f} ms; "
    f"the arm ended {100 * report['sim_scene']['final_tcp_to_object_m']:.1f} cm from the cube"
)
PY
echo "== wrote $out/rollout/rollout.mp4 and $out/rollout/latency_report.json"

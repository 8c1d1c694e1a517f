#!/usr/bin/env bash
# The main job: a policy artifact made from scratch, run on the simulated arm at 10 Hz and scored
# on grasps from cube positions it never saw.
#
#   bash scripts/demo.sh OUT
#
# 1. OUT/demos     scripted-expert demonstrations on the simulated Panda (LeRobot v3): reach, close, lift
# 2. OUT/tvp       a tiny TVP trained on their videos (both cameras)
# 3. OUT/policy    the policy head trained on the TVP's features of the demonstrations' wrist camera
#                  (cached for every second window: neighbouring windows are nearly the same sample,
#                  and the TVP forward of each cached window is this job's largest cost)
# 4. OUT/artifact  the policy exported to ONNX + manifest (the torch-free runtime's input)
# 5. OUT/rollout   the artifact on the simulated arm at 10 Hz in real time: rollout.mp4, latency_report.json
# 6. OUT/grasps    the artifact in simulated time from N cube positions drawn from a seed stream
#                  disjoint from the demonstrations': grasp_eval.json, grasps.mp4, "grasped K/N"
#
# The stages talk through these folders only. Collection and training resume where a killed run
# stopped, a finished stage is skipped, and both rollout stages run anew every time (they are the
# job's measurements). The VPP_DEMO_* variables scale the job down (tests/test_robot_demo.py);
# VPP_PYTHON is the interpreter with every vpp package (default: the repository's .venv).
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: bash scripts/demo.sh OUT" >&2
    exit 2
fi
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
python=${VPP_PYTHON:-.venv/bin/python}
episodes=${VPP_DEMO_EPISODES:-60}
vae_steps=${VPP_DEMO_VAE_STEPS:-60}
tvp_steps=${VPP_DEMO_TVP_STEPS:-80}
policy_steps=${VPP_DEMO_POLICY_STEPS:-2000}
seconds=${VPP_DEMO_SECONDS:-10}
grasp_rollouts=${VPP_DEMO_GRASP_ROLLOUTS:-10}
grasp_seconds=${VPP_DEMO_GRASP_SECONDS:-15}
instruction="grasp the red cube"
# The wrist camera: at 32 px the scene camera shows the cube as one or two pixels (and the arm
# hides it from above), while the wrist view shows where it lies relative to the fingers. One
# view is one TVP pass per chunk, which keeps the tiny artifact fast enough for 10 Hz.
camera=wrist
# 1.6 s of actions at 10 Hz: with the newest chunk replacing the schedule, a chunk must outlast the
# model's latency plus the wait for the next. Both rollout stages run whole chunks: measured on
# this job's policy, running 4 or 8 of 16 actions before replanning grasped less often (1/10, 3/10
# against 7/10).
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

stage collect "$python" -m vpp.robots.cli collect grasp --robot sim-panda --episodes "$episodes" --out "$out/demos"
skip_if "$out/tvp/model" tvp-train || stage tvp-train "$python" -m vpp.tvp.cli train --preset tiny \
    --data "scene=lerobot:$out/demos#scene" --data "wrist=lerobot:$out/demos#wrist" \
    --fit-vae-steps "$vae_steps" --steps "$tvp_steps" --batch-size 4 --lr 1e-3 --checkpoint-every 50 --output "$out/tvp"
skip_if "$out/policy/model" policy-train || stage policy-train "$python" -m vpp.policy.cli train --data "$out/demos" \
    --tvp "$out/tvp/model" --camera "$camera" --chunk "$chunk" --head-preset tiny \
    --feature-position-embedding --window-stride 2 --steps "$policy_steps" --batch-size 32 --lr 1e-3 \
    --checkpoint-every 500 --feature-cache "$out/features" --output "$out/policy"
# The sidecar marks an artifact of the current format (older ones have none, and are exported again).
skip_if "$out/artifact/manifest.json.sha256" export || stage export "$python" -m vpp.export.cli "$out/policy/model" \
    --out "$out/artifact" --instruction "$instruction"
# One ORT thread leaves the other core to the simulation's physics, servo and rendering; every
# action of a chunk may run, so that a chunk outlasts the wait for the next one. The cube starts
# where the first grasp rollout's does (the evaluation stream's first seed).
rm -rf "$out/rollout" "$out/grasps"
stage rollout "$python" -m vpp.robots.cli run --robot sim-panda --policy "$out/artifact" --instruction "$instruction" \
    --rate 10 --seconds "$seconds" --inference-threads 1 --execute-steps "$chunk" --out "$out/rollout"
# The same artifact through the same runtime, with the physics waiting for each chunk, so that
# the score measures the policy, not how busy the machine is.
stage grasp-eval "$python" -m vpp.robots.cli eval grasp --policy "$out/artifact" --instruction "$instruction" \
    --episodes "$grasp_rollouts" --max-seconds "$grasp_seconds" --execute-steps "$chunk" --demos "$out/demos" \
    --out "$out/grasps"

echo "== stage times"
printf '   %s\n' "${stage_times[@]}"
"$python" - "$out/rollout/latency_report.json" "$out/grasps/grasp_eval.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
grasps = json.load(open(sys.argv[2]))
verdict = "HELD" if report["rate_held"] else "DID NOT HOLD"
inference = report["inference_latency"].get("p50_ms", float("nan"))
scene = report["sim_scene"]
print(
    f"== policy rate {verdict} {report['target_rate_hz']:g} Hz: achieved {report['policy_rate_hz']:.2f} Hz, "
    f"{report['missed_deadlines']} ticks without an action, inference p50 {inference:.0f} ms; the arm ended "
    f"{100 * scene['final_tcp_to_object_m']:.1f} cm from the cube, {'holding it up' if scene['grasped_at_end'] else 'not holding it'}"
)
settings = grasps["config"]
print(
    f"== grasped {grasps['grasped']}/{grasps['episodes']}: the cube's centre lifted >= {100 * settings['lift_m']:g} cm "
    f"with both fingers on it within {settings['max_seconds']:g} s, from cube positions not in the demonstrations "
    f"(seeds {settings['seed']}..{settings['seed'] + settings['episodes'] - 1}; {grasps['wall_s']:.0f} s for all)"
)
PY
echo "== wrote $out/rollout/rollout.mp4, $out/rollout/latency_report.json, $out/grasps/grasps.mp4 and $out/grasps/grasp_eval.json"

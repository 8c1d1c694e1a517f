#!/usr/bin/env bash
# What the main job's grasp score means: the same artifact on the same unseen cube positions
# (1) as deployed, (2) with the wrist camera blinded to a fixed real frame, (3) to gray,
# (4) exported with an int8 features graph (static convolutions + dynamic matrix products) and
# (5) with only the matrix products int8; then a table with Wilson 95% intervals and the paired
# (same seed) differences.
#
#   bash scripts/grasp_controls.sh OUT [ROLLOUTS]     # OUT: a finished `bash scripts/demo.sh OUT`
#
# If the blinded policy grasps as often as the deployed one, the score does not show that the
# policy uses its camera. An int8 artifact counts as equivalent only if its rate lies inside the
# float32 interval. Every stage is simulated time (the physics waits for each chunk), so the
# machine's load cannot change a result; finished stages are skipped when run again.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: bash scripts/grasp_controls.sh OUT [ROLLOUTS]" >&2
    exit 2
fi
out=$(realpath -m "$1")
rollouts=${2:-20}
cd "$(dirname "$0")/.."
python=${VPP_PYTHON:-.venv/bin/python}
instruction="grasp the red cube"
chunk=16 # as scripts/demo.sh: whole chunks
controls="$out/controls"
mkdir -p "$controls"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

evaluate() {
    local name=$1 artifact=$2
    shift 2
    if [[ -e $controls/$name/grasp_eval.json ]]; then
        echo "== $name: done already"
        return 0
    fi
    echo "== $name"
    "$python" -m vpp.robots.cli eval grasp --policy "$artifact" --instruction "$instruction" \
        --episodes "$rollouts" --execute-steps "$chunk" --demos "$out/demos" --inference-threads 1 \
        --out "$controls/$name" "$@"
}

if [[ ! -e $controls/artifact-int8/manifest.json.sha256 ]]; then
    echo "== export int8 (calibrated on the demonstrations' wrist frames)"
    "$python" -m vpp.export.cli "$out/policy/model" --out "$controls/artifact-int8" \
        --instruction "$instruction" --quantize int8 --calibration-data "$out/demos"
fi
if [[ ! -e $controls/artifact-int8-dynamic/manifest.json.sha256 ]]; then
    echo "== export int8-dynamic"
    "$python" -m vpp.export.cli "$out/policy/model" --out "$controls/artifact-int8-dynamic" \
        --instruction "$instruction" --quantize int8-dynamic --calibration-data "$out/demos"
fi
evaluate deployed "$out/artifact"
evaluate blind-first "$out/artifact" --blind-camera wrist --blind-mode first
evaluate blind-gray "$out/artifact" --blind-camera wrist --blind-mode gray
evaluate int8 "$controls/artifact-int8"
evaluate int8-dynamic "$controls/artifact-int8-dynamic"

"$python" - "$controls" <<'PY'
import json
import sys
from pathlib import Path

from vpp.robots.compare import compare, table

controls = Path(sys.argv[1])
names = ["deployed", "blind-first", "blind-gray", "int8", "int8-dynamic"]
rows = compare([(name, controls / name) for name in names])
summary = {
    row.name: {
        "grasped": row.successes,
        "episodes": row.episodes,
        "ci95": [round(row.ci95[0], 3), round(row.ci95[1], 3)],
        "grasped_only_by_deployed": row.only_baseline,
        "grasped_only_by_this": row.only_this,
        "mcnemar_p": row.mcnemar_p,
        "against_deployed_ci95": row.against_baseline_ci,
    }
    for row in rows
}
for name in ("int8", "int8-dynamic"):
    manifest = json.loads((controls / f"artifact-{name}" / "manifest.json").read_text())
    summary[f"{name}_quantization"] = manifest.get("quantization")
(controls / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(table(rows))
print(f"== wrote {controls / 'summary.json'}")
PY

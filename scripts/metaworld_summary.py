"""One JSON for a scripts/metaworld_repro.sh run: settings, machine, stage wall times, training
curves, offline diagnostics and the unseen-configuration success rates of VPP, the static-VAE
ablation and the oracle, each as easy / middle / hard / average with 95% intervals.

    RUN=runs/mw2 .venv/bin/python scripts/metaworld_summary.py   # -> runs/mw2/summary.json
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from vpp.robots.collect import CollectionState

GROUPS = ("easy", "middle", "hard", "average")
SETTINGS = (
    "TASKS",
    "SKIP_STAGES",
    "DEMOS_PER_TASK",
    "HELD_OUT_PER_TASK",
    "VAE_FIT_STEPS",
    "TVP_STEPS",
    "TVP_BATCH",
    "TVP_LR",
    "WINDOW_STRIDE",
    "CHUNK",
    "POLICY_STEPS",
    "POLICY_BATCH",
    "POLICY_LR",
    "POLICY_FLAGS",
    "EVAL_EPISODES",
    "EVAL_MAX_STEPS",
)


def read_jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def curve(folder: Path) -> dict | None:
    rows = read_jsonl(folder / "metrics.jsonl")
    if not rows:
        return None
    tail = rows[-5:]
    return {
        "steps": rows[-1]["step"],
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "mean_loss_last_5_logs": sum(r["loss"] for r in tail) / len(tail),
    }


def windows(log: Path) -> int | None:
    found = re.findall(r"(\d+) training windows", log.read_text()) if log.is_file() else []
    return int(found[-1]) if found else None


def table_row(results: dict) -> dict:
    """easy/middle/hard/average success and their 95% intervals, and the per-task counts."""
    row: dict = {group: None if results[group] is None else results[group]["success"] for group in GROUPS}
    row["ci95"] = {group: None if results[group] is None else results[group]["ci95"] for group in GROUPS}
    row["episodes"] = {
        group: None if results[group] is None else results[group]["episodes"] for group in GROUPS
    }
    row["per_task"] = {
        task: {k: r[k] for k in ("success", "successes", "episodes", "ci95", "mean_episode_length")}
        for task, r in results["per_task"].items()
    }
    return row


def main() -> None:
    run = Path(os.environ.get("RUN", "runs/mw2"))
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    # a row the run has not reached yet stays in the file as null, so a partial run reads as one
    evaluations: dict[str, dict | None] = {}
    for key, folder in (("vpp", "eval-tvp"), ("vae_ablation", "eval-vae"), ("oracle", "eval-oracle")):
        path = run / folder / "results.json"
        evaluations[key] = None
        if path.is_file():
            results = json.loads(path.read_text())
            evaluations[key] = {
                **table_row(results),
                "split": results["split"],
                "max_steps": results["max_steps"],
                "ci_method": results["ci_method"],
            }
    diagnostics = {}
    for key, folder in (("vpp", "diagnose-tvp"), ("vae_ablation", "diagnose-vae")):
        path = run / folder / "diagnostics.json"
        if path.is_file():
            diagnostics[key] = json.loads(path.read_text())
    prediction = run / "tvp-predict" / "unseen.json"
    vae_fit = run / "tvp" / "base" / "vae_fit.json"
    demos = CollectionState.read(run / "demos")
    summary = {
        "what": "CPU-scale MetaWorld reproduction with the small preset (scripts/metaworld_repro.sh), "
        "evaluated on configurations never collected",
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "threads_per_job": int(os.environ.get("OMP_NUM_THREADS", "1")),
        },
        "settings": {k.lower(): os.environ[k] for k in SETTINGS if k in os.environ},
        "demos": {
            "split": demos.settings.get("split"),
            "kept": sum(t.kept for t in demos.tasks.values()),
            "dropped": {k: t.dropped for k, t in demos.tasks.items() if t.dropped},
        },
        "stages": read_jsonl(run / "stages.jsonl"),
        "training": {
            "tvp": curve(run / "tvp"),
            "policy_tvp": {
                "curve": curve(run / "policy-tvp"),
                "windows": windows(run / "logs" / "policy-tvp.log"),
            },
            "policy_vae": {
                "curve": curve(run / "policy-vae"),
                "windows": windows(run / "logs" / "policy-vae.log"),
            },
        },
        "vae_fit": json.loads(vae_fit.read_text()) if vae_fit.is_file() else None,
        "tvp_prediction_unseen": json.loads(prediction.read_text())["scores"]
        if prediction.is_file()
        else None,
        "diagnostics": diagnostics,
        **evaluations,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, row in evaluations.items():
        print(key, "not evaluated" if row is None else {g: (row[g], row["ci95"][g]) for g in GROUPS})


if __name__ == "__main__":
    main()

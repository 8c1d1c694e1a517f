"""Loss curves as PNG files beside a run, for people who would rather look than read JSON.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global state), and
written under a temporary name then renamed, so a run killed mid-write leaves the previous
picture, never a broken one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def write_loss_curve(
    path: str | Path,
    steps: Sequence[int],
    losses: Sequence[float],
    title: str,
    learning_rates: Sequence[float] | None = None,
) -> Path:
    """Loss against step (log scale when every loss is positive), with the learning rate on a
    second axis when given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    marker = "o" if len(steps) < 30 else None  # a short log is a few points, invisible as a line
    axes.plot(steps, losses, color="tab:blue", linewidth=1.2, marker=marker, markersize=3)
    if losses and min(losses) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss", color="tab:blue")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if learning_rates is not None:
        lr_axes = axes.twinx()
        lr_axes.plot(
            steps, learning_rates, color="tab:orange", linewidth=1.0, alpha=0.8, marker=marker, markersize=2
        )
        lr_axes.set_ylabel("learning rate", color="tab:orange")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def write_metrics_curve(metrics_path: str | Path, path: str | Path, title: str) -> Path | None:
    """The curve of a trainer's ``metrics.jsonl`` (lines of step, loss, lr); None while it is empty."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    return write_loss_curve(
        path, [r["step"] for r in rows], [r["loss"] for r in rows], title, [r["lr"] for r in rows]
    )

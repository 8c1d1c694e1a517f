"""Paired comparison of evaluations that ran the same starts: a variant against a baseline.

An int8 or early-exit artifact counts as equivalent to its fp32 baseline only if its success rate
lies inside the baseline's 95% interval (issue 15's rule); a rate above the interval is reported
as such and does not disqualify a variant (an int8 graph is not better by design: that is noise).
Because every evaluation here is seeded (a grasp rollout by its seed, a MetaWorld episode by its
task and index in the eval split), two runs of the same starts can also be compared episode by
episode: the starts only the baseline solved, those only the variant solved, and the exact
McNemar test of whether the difference is more than chance. Reads the ``grasp_eval.json`` of
``vpp-robot eval grasp`` and the ``results.json`` of ``vpp-robot eval metaworld``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vpp.robots.evaluate import wilson_interval


class EvaluationFileError(ValueError):
    """An evaluation folder that holds no readable grasp_eval.json or results.json."""


def read_outcomes(folder: str | Path) -> dict[str, bool]:
    """{start: success} of one evaluation folder; a start is "seed N" (grasp) or "task #index"."""
    folder = Path(folder)
    grasp, metaworld = folder / "grasp_eval.json", folder / "results.json"
    path = grasp if grasp.is_file() else metaworld
    if not path.is_file():
        raise EvaluationFileError(
            f"{folder} holds neither grasp_eval.json (vpp-robot eval grasp) nor results.json "
            "(vpp-robot eval metaworld)"
        )
    try:
        data = json.loads(path.read_text())
        if path == grasp:
            return {f"seed {r['seed']}": bool(r["grasped"]) for r in data["rollouts"]}
        return {f"{e['task']} #{e['index']}": bool(e["success"]) for e in data["episodes"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise EvaluationFileError(
            f"{path} is not an evaluation this tool reads ({type(error).__name__}: {error})"
        ) from error


def exact_mcnemar(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs under a fair coin."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    name: str
    successes: int
    episodes: int
    ci95: tuple[float, float]
    # paired with the baseline on the starts both ran
    shared: int
    only_baseline: int
    only_this: int
    mcnemar_p: float
    # where the rate lies against the baseline's 95% interval: "inside", "above" or "below"
    against_baseline_ci: str

    @property
    def at_parity(self) -> bool:
        """Not below the baseline's interval."""
        return self.against_baseline_ci != "below"

    def row(self) -> str:
        low, high = self.ci95
        verdict = "**below**" if self.against_baseline_ci == "below" else self.against_baseline_ci
        return (
            f"| {self.name} | {self.successes}/{self.episodes} | [{low:.2f}, {high:.2f}] | {verdict} | "
            f"{self.only_baseline} | {self.only_this} | {self.mcnemar_p:.2g} |"
        )


HEADER = (
    "| run | successes | Wilson 95% | against the baseline's 95% | only the baseline | only this run | "
    "exact McNemar p |\n|---|---|---|---|---|---|---|"
)


def compare(named_folders: list[tuple[str, str | Path]]) -> list[Comparison]:
    """The first (name, folder) is the baseline; every run is compared with it on the starts both
    ran. Raises EvaluationFileError for an unreadable folder, ValueError if a run shares no
    start with the baseline."""
    if not named_folders:
        raise ValueError("no evaluations to compare")
    outcomes = [(name, read_outcomes(folder)) for name, folder in named_folders]
    base_name, base = outcomes[0]
    base_ci = wilson_interval(sum(base.values()), len(base))
    rows = []
    for name, runs in outcomes:
        shared = sorted(set(base) & set(runs))
        if not shared:
            raise ValueError(f"{name} shares no start with the baseline {base_name}: were they seeded alike?")
        only_base = sum(base[s] and not runs[s] for s in shared)
        only_this = sum(runs[s] and not base[s] for s in shared)
        successes = sum(runs.values())
        rate = successes / len(runs)
        rows.append(
            Comparison(
                name=name,
                successes=successes,
                episodes=len(runs),
                ci95=wilson_interval(successes, len(runs)),
                shared=len(shared),
                only_baseline=only_base,
                only_this=only_this,
                mcnemar_p=exact_mcnemar(only_base, only_this),
                against_baseline_ci="below"
                if rate < base_ci[0]
                else "above"
                if rate > base_ci[1]
                else "inside",
            )
        )
    return rows


def table(rows: list[Comparison]) -> str:
    return HEADER + "\n" + "\n".join(row.row() for row in rows)

"""Success rates on MetaWorld, with 95% confidence intervals, in the paper's Table 2 layout.

A policy is anything with ``act(observation, instruction) -> (k, 4) actions``: the chunk is
executed whole (``execute`` actions of it, if set) before the policy is asked again, as the
paper does. Episode i of every task starts from configuration i of a named split (default
``eval``): object and goal positions drawn by MetaWorld's own randomisation from a seed stream
disjoint from the one demonstrations are collected from (``vpp.policy.envs.metaworld``).

Resumable: with an output folder, every finished episode is appended to ``episodes.jsonl`` (its
configuration, success, length and time), and a rerun with the same settings skips the episodes
already there, so a killed evaluation loses at most the episode it was running.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from vpp.policy.envs.metaworld import MetaWorldTask, check_split, check_task
from vpp.policy.envs.metaworld_tasks import GROUPS, PAPER_TABLE2

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
SETTINGS_FILE = "eval_settings.json"
Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
CI_METHOD = (
    "Wilson score interval, 95%. Per task: over its episodes. For easy/middle/hard/average: over all the group's "
    "episodes pooled, whose success rate is the mean of the per-task rates (every task has the same number of "
    "episodes); pooling treats them as one binomial, which is conservative when the tasks' rates differ"
)


class ChunkPolicy(Protocol):
    def act(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    task: str
    index: int
    success: bool
    steps: int
    seconds: float
    rand_vec: list[float]


def wilson_interval(successes: int, episodes: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: unlike p +- z*sqrt(p(1-p)/n) it stays
    inside [0, 1] and does not collapse to a point at 0/n or n/n."""
    if episodes <= 0 or not 0 <= successes <= episodes:
        raise ValueError(f"{successes} successes in {episodes} episodes; expected 0 <= successes <= episodes > 0")
    p = successes / episodes
    denominator = 1 + z * z / episodes
    centre = (p + z * z / (2 * episodes)) / denominator
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(successes: int, episodes: int) -> dict:
    interval = list(wilson_interval(successes, episodes))
    return {"success": successes / episodes, "successes": successes, "episodes": episodes, "ci95": interval}


def group_scores(per_task: dict[str, tuple[int, int]]) -> dict[str, dict | None]:
    """Per paper group and for all evaluated tasks (``average``): pooled success, its Wilson
    interval and the number of tasks; None for a group with no evaluated task.
    ``per_task`` maps task -> (successes, episodes)."""
    scores: dict[str, dict | None] = {}
    for group, members in (*GROUPS.items(), ("average", tuple(per_task))):
        counts = [per_task[t] for t in members if t in per_task]
        if not counts:
            scores[group] = None
            continue
        scores[group] = {**summarize(sum(k for k, _ in counts), sum(n for _, n in counts)), "tasks": len(counts)}
    return scores


def format_table(name: str, scores: dict[str, dict | None], tasks_evaluated: int) -> str:
    """The paper's Table 2 rows, then this evaluation's row with 95% intervals."""

    def cell(score: dict | None) -> str:
        if score is None:
            return "-"
        low, high = score["ci95"]
        return f"{score['success']:.3f} [{low:.2f}, {high:.2f}]"

    columns = ("easy", "middle", "hard", "average")
    rows = [(f"{method} (paper, 50 tasks)", [f"{r[c]:.3f}" for c in columns]) for method, r in PAPER_TABLE2.items()]
    rows.append((f"{name} ({tasks_evaluated} tasks)", [cell(scores[c]) for c in columns]))
    width = max(len(label) for label, _ in rows)
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(["method".ljust(width), *(c.ljust(w) for c, w in zip(columns, widths))]) + " |",
        "|" + "|".join(["-" * (width + 2), *("-" * (w + 2) for w in widths)]) + "|",
    ]
    for label, values in rows:
        lines.append("| " + " | ".join([label.ljust(width), *(v.ljust(w) for v, w in zip(values, widths))]) + " |")
    return "\n".join(lines)


def format_task_table(per_task: dict[str, dict]) -> str:
    lines = ["| task | success | 95% CI | episodes |", "|---|---|---|---|"]
    for task, r in per_task.items():
        lines.append(f"| {task} | {r['success']:.3f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['episodes']} |")
    return "\n".join(lines)


def _load_finished(output: Path, settings: dict) -> dict[tuple[str, int], EpisodeResult]:
    """Episodes an earlier run with the same settings finished; writes the settings if new."""
    settings_path = output / SETTINGS_FILE
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text())
        if saved != settings:
            raise ValueError(
                f"{output} holds an evaluation with {saved}, not {settings}; use another output folder or the same "
                "settings to resume"
            )
    else:
        output.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    finished: dict[tuple[str, int], EpisodeResult] = {}
    path = output / EPISODES_FILE
    if path.is_file():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            try:
                record = EpisodeResult(**json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines) - 1:
                    raise
                # the run was killed while writing its last line: drop it before appending more
                path.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
                break
            finished[(record.task, record.index)] = record
    return finished


def _append(path: Path, result: EpisodeResult) -> None:
    with path.open("a") as f:
        f.write(json.dumps(asdict(result)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_episode(
    env: MetaWorldTask,
    policy: ChunkPolicy | str,
    index: int,
    split: str,
    execute: int | None,
    max_steps: int | None,
    frames: list[np.ndarray] | None = None,
) -> EpisodeResult:
    """One episode from configuration ``index`` of ``split``; appends the first camera's frames
    to ``frames`` when given."""
    start = time.perf_counter()
    camera = env.cameras[0]
    obs = env.reset(index, split)
    rand_vec = env.rand_vec.tolist()
    if frames is not None:
        frames.append(obs[camera])
    while True:
        chunk = env.oracle_action()[None] if policy == "oracle" else np.asarray(policy.act(obs, env.instruction))
        for action in chunk[: execute or len(chunk)]:
            result = env.step(action)
            obs = result.observation
            if frames is not None:
                frames.append(obs[camera])
            if result.done or (max_steps is not None and env.steps >= max_steps):
                return EpisodeResult(env.task, index, result.success, env.steps, time.perf_counter() - start, rand_vec)


def evaluate_metaworld(
    policy: ChunkPolicy | str,
    tasks: Sequence[str],
    episodes: int,
    cameras: Sequence[str],
    image_size: int,
    output: str | Path | None = None,
    name: str = "vpp",
    execute: int | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    split: str = "eval",
    videos_per_task: int = 1,
) -> dict:
    """Runs episodes 0..episodes-1 of ``split`` per task. With ``output``: results.json, results.md
    (Table 2 layout and a per-task table), episodes.jsonl and rollout videos of each task's first
    ``videos_per_task`` episodes (``videos/<task>.mp4``, then ``videos/<task>-<i>.mp4``).
    ``policy="oracle"`` runs MetaWorld's scripted policies (the upper bound demonstrations come
    from); ``max_steps`` shortens episodes below MetaWorld's 500."""
    if isinstance(policy, str) and policy != "oracle":
        raise ValueError(f"policy {policy!r}: expected an object with act() or 'oracle'")
    if episodes < 1:
        raise ValueError(f"episodes={episodes}; expected a positive number per task")
    tasks = [check_task(t) for t in tasks]
    split = check_split(split)
    output = Path(output) if output is not None else None
    settings = {
        "name": name, "split": split, "cameras": list(cameras), "image_size": image_size,
        "execute": execute, "max_steps": max_steps,
    }
    finished = _load_finished(output, settings) if output is not None else {}
    wanted = [(task, i) for task in tasks for i in range(episodes)]
    skipped = sum(key in finished for key in wanted)
    if skipped:
        logger.info("resuming: %d of %d episodes already finished in %s", skipped, len(wanted), output)
    bar = tqdm(total=len(wanted), initial=skipped, desc=f"metaworld eval ({split})", disable=not progress)
    for task in tasks:
        todo = [i for i in range(episodes) if (task, i) not in finished]
        if not todo:
            continue
        with MetaWorldTask(task, cameras, image_size) as env:
            for i in todo:
                frames = [] if output is not None and i < videos_per_task else None
                result = run_episode(env, policy, i, split, execute, max_steps, frames)
                if frames is not None:
                    _write_video(output / "videos" / (f"{task}.mp4" if i == 0 else f"{task}-{i}.mp4"), frames)
                if output is not None:
                    _append(output / EPISODES_FILE, result)
                finished[(task, i)] = result
                done = [finished[(task, j)].success for j in range(episodes) if (task, j) in finished]
                bar.set_postfix_str(f"{task} {sum(done)}/{len(done)}")
                bar.update(1)
        logger.info("%s: %d/%d successes", task, sum(finished[(task, i)].success for i in range(episodes)), episodes)
    bar.close()
    records = [finished[key] for key in wanted]
    counts = {task: (sum(r.success for r in records if r.task == task), episodes) for task in tasks}
    per_task = {}
    for task in tasks:
        lengths = [r.steps for r in records if r.task == task]
        per_task[task] = {**summarize(*counts[task]), "mean_episode_length": float(np.mean(lengths))}
    scores = group_scores(counts)
    results = {
        **settings,
        "episodes_per_task": episodes,
        "ci_method": CI_METHOD,
        **scores,
        "per_task": per_task,
        "episodes": [asdict(r) for r in records],
        "paper_table2": PAPER_TABLE2,
    }
    table = format_table(name, scores, len(tasks))
    print(table)
    if output is not None:
        (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (output / "results.md").write_text(f"{table}\n\n{format_task_table(per_task)}\n\n{CI_METHOD}.\n")
    return results


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 20) -> None:
    from vpp.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, np.stack(frames), fps=fps)

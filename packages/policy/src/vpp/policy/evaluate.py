"""Success rates on MetaWorld with fixed seeds, grouped and laid out as the paper's Table 2.

A policy is anything with ``act(observation, instruction) -> (k, 4) actions``: the chunk is
executed whole (``execute`` actions of it, if set) before the policy is asked again, as the
paper does. Episode i of every task starts from configuration i of the ``eval`` split: object and
goal positions drawn by MetaWorld's own randomisation from a seed stream disjoint from the one
demonstrations are collected from (``vpp.policy.envs.metaworld``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from vpp.policy.envs.metaworld import MetaWorldTask, check_split, check_task
from vpp.policy.envs.metaworld_tasks import GROUPS, PAPER_TABLE2

logger = logging.getLogger(__name__)


class ChunkPolicy(Protocol):
    def act(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray: ...


def group_scores(per_task: dict[str, float]) -> dict[str, float | None]:
    """Mean success per paper group (None where no task of the group was evaluated) and the
    average over every evaluated task."""
    scores: dict[str, float | None] = {}
    for group, tasks in GROUPS.items():
        values = [per_task[t] for t in tasks if t in per_task]
        scores[group] = float(np.mean(values)) if values else None
    scores["average"] = float(np.mean(list(per_task.values()))) if per_task else None
    return scores


def format_table(name: str, scores: dict[str, float | None], tasks_evaluated: int) -> str:
    def cell(value: float | None) -> str:
        return "  -  " if value is None else f"{value:.3f}"

    header = f"| {'method':<36} | easy  | middle | hard  | average |"
    rule = "|" + "-" * 38 + "|-------|--------|-------|---------|"
    rows = [
        f"| {method + ' (paper, 50 tasks)':<36} | {r['easy']:.3f} | {r['middle']:.3f}  | {r['hard']:.3f} | {r['average']:.3f}   |"
        for method, r in PAPER_TABLE2.items()
    ]
    ours = f"{name} ({tasks_evaluated} tasks)"
    rows.append(
        f"| {ours:<36} | {cell(scores['easy'])} | {cell(scores['middle'])}  | {cell(scores['hard'])} | {cell(scores['average'])}   |"
    )
    return "\n".join([header, rule, *rows])


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
) -> dict:
    """Runs ``episodes`` seeded episodes per task; writes results.json, results.md and one
    rollout video per task (its first episode) under ``output``. ``policy="oracle"`` runs
    MetaWorld's scripted policies (the upper bound demonstrations come from); ``max_steps``
    shortens episodes below MetaWorld's 500 (smoke runs)."""
    if isinstance(policy, str) and policy != "oracle":
        raise ValueError(f"policy {policy!r}: expected an object with act() or 'oracle'")
    tasks = [check_task(t) for t in tasks]
    check_split(split)
    output = Path(output) if output is not None else None
    per_task: dict[str, float] = {}
    episode_lengths: dict[str, list[int]] = {}
    configurations: dict[str, list[list[float]]] = {}
    bar = tqdm(total=len(tasks) * episodes, desc="metaworld eval", disable=not progress)
    for task in tasks:
        successes = []
        episode_lengths[task] = []
        configurations[task] = []
        with MetaWorldTask(task, cameras, image_size) as env:
            for i in range(episodes):
                obs = env.reset(i, split)
                configurations[task].append(env.rand_vec.tolist())
                frames = [obs[cameras[0]]] if i == 0 and output is not None else None
                success = False
                done = False
                while not done:
                    if policy == "oracle":
                        chunk = env.oracle_action()[None]
                    else:
                        chunk = np.asarray(policy.act(obs, env.instruction))
                    for action in chunk[: execute or len(chunk)]:
                        result = env.step(action)
                        obs = result.observation
                        if frames is not None:
                            frames.append(obs[cameras[0]])
                        if result.done or (max_steps is not None and env.steps >= max_steps):
                            success, done = result.success, True
                            break
                successes.append(success)
                episode_lengths[task].append(env.steps)
                if frames is not None:
                    _write_video(output / "videos" / f"{task}.mp4", frames)
                bar.update(1)
        per_task[task] = float(np.mean(successes))
        logger.info("%s: success %.2f", task, per_task[task])
    bar.close()
    scores = group_scores(per_task)
    results = {
        "name": name,
        "episodes_per_task": episodes,
        "split": split,
        "cameras": list(cameras),
        "image_size": image_size,
        "per_task": per_task,
        "mean_episode_length": {t: float(np.mean(v)) for t, v in episode_lengths.items()},
        "groups": scores,
        "rand_vecs": configurations,
        "paper_table2": PAPER_TABLE2,
    }
    table = format_table(name, scores, len(per_task))
    print(table)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "results.json").write_text(json.dumps(results, indent=2))
        (output / "results.md").write_text(table + "\n")
    return results


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 20) -> None:
    from vpp.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, np.stack(frames), fps=fps)

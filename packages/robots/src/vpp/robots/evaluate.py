"""The evaluation harness: any policy with `act(observation, instruction) -> chunk` (a torch
`VideoPredictionPolicy`, an exported artifact, a scripted policy; see `vpp.robots.policies.load_policy`)
on MetaWorld tasks or on the simulated arm's cube grasp, from starts no demonstration used.

MetaWorld (`evaluate_metaworld`): success rates with 95% confidence intervals, in the paper's
Table 2 layout. The chunk is executed whole (``execute`` actions of it, if set) before the policy
is asked again, as the paper does. Episode i of every task starts from configuration i of a named
split (default ``eval``): object and goal positions drawn by MetaWorld's own randomisation from a
seed stream disjoint from the one demonstrations are collected from (`vpp.robots.envs.metaworld`).
Resumable: with an output folder, every finished episode is appended to ``episodes.jsonl`` (its
configuration, success, length and time), and a rerun with the same settings skips the episodes
already there, so a killed evaluation loses at most the episode it was running.

Grasp (`evaluate_grasps`): rollout k respawns the cube from seed `seed + k` (the evaluation
stream starts at EVAL_SEED, far from the collection's seeds, which start at 0) and runs the policy
in simulated time (`SimulatedTimeLoop`) until the cube is grasped or `max_seconds` of simulated
time pass. A grasp is `SimArm.object_grasped`: the cube's centre at least `lift_m` above its
resting height while both fingers touch it. Given the demonstrations' folder, the evaluation
refuses to start if one of its seeds was used by a collection attempt or one of its cube starts
equals a demonstration's. Writes `grasp_eval.json` (settings, per-rollout seed, cube start,
outcome, ticks and wall time) and `grasps.mp4` (every rollout's cameras, one after another).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vpp.robots.control_loop import RolloutRecorder
from vpp.robots.drivers.sim import GRASP_LIFT_M, SimConfig, build_sim_arm
from vpp.robots.envs.metaworld import MetaWorldTask, check_split, check_task
from vpp.robots.envs.metaworld_tasks import GROUPS, PAPER_TABLE2
from vpp.robots.interfaces import ActionPolicy
from vpp.robots.policies import BlindedPolicy
from vpp.robots.sim_loop import SimulatedTimeConfig, SimulatedTimeLoop

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
SETTINGS_FILE = "eval_settings.json"
EVAL_SEED = 1_000_000
Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
CI_METHOD = (
    "Wilson score interval, 95%. Per task: over its episodes. For easy/middle/hard/average: over all the group's "
    "episodes pooled, whose success rate is the mean of the per-task rates (every task has the same number of "
    "episodes); pooling treats them as one binomial, which is conservative when the tasks' rates differ"
)


class SeedOverlapError(ValueError):
    """An evaluation rollout would start where a demonstration started."""


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
        raise ValueError(
            f"{successes} successes in {episodes} episodes; expected 0 <= successes <= episodes > 0"
        )
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
        scores[group] = {
            **summarize(sum(k for k, _ in counts), sum(n for _, n in counts)),
            "tasks": len(counts),
        }
    return scores


def format_table(name: str, scores: dict[str, dict | None], tasks_evaluated: int) -> str:
    """The paper's Table 2 rows, then this evaluation's row with 95% intervals."""

    def cell(score: dict | None) -> str:
        if score is None:
            return "-"
        low, high = score["ci95"]
        return f"{score['success']:.3f} [{low:.2f}, {high:.2f}]"

    columns = ("easy", "middle", "hard", "average")
    rows = [
        (f"{method} (paper, 50 tasks)", [f"{r[c]:.3f}" for c in columns])
        for method, r in PAPER_TABLE2.items()
    ]
    rows.append((f"{name} ({tasks_evaluated} tasks)", [cell(scores[c]) for c in columns]))
    width = max(len(label) for label, _ in rows)
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(["method".ljust(width), *(c.ljust(w) for c, w in zip(columns, widths))]) + " |",
        "|" + "|".join(["-" * (width + 2), *("-" * (w + 2) for w in widths)]) + "|",
    ]
    for label, values in rows:
        lines.append(
            "| " + " | ".join([label.ljust(width), *(v.ljust(w) for v, w in zip(values, widths))]) + " |"
        )
    return "\n".join(lines)


def format_task_table(per_task: dict[str, dict]) -> str:
    lines = ["| task | success | 95% CI | episodes |", "|---|---|---|---|"]
    for task, r in per_task.items():
        lines.append(
            f"| {task} | {r['success']:.3f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['episodes']} |"
        )
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
    policy: ActionPolicy | str,
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
        chunk = (
            env.oracle_action()[None] if policy == "oracle" else np.asarray(policy.act(obs, env.instruction))
        )
        for action in chunk[: execute or len(chunk)]:
            result = env.step(action)
            obs = result.observation
            if frames is not None:
                frames.append(obs[camera])
            if result.done or (max_steps is not None and env.steps >= max_steps):
                return EpisodeResult(
                    env.task, index, result.success, env.steps, time.perf_counter() - start, rand_vec
                )


def evaluate_metaworld(
    policy: ActionPolicy | str,
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
    blind_cameras: Sequence[str] = (),
    blind_mode: str = "first",
) -> dict:
    """Runs episodes 0..episodes-1 of ``split`` per task. With ``output``: results.json, results.md
    (Table 2 layout and a per-task table), episodes.jsonl and rollout videos of each task's first
    ``videos_per_task`` episodes (``videos/<task>.mp4``, then ``videos/<task>-<i>.mp4``).
    ``policy="oracle"`` runs MetaWorld's scripted policies (the upper bound demonstrations come
    from); ``max_steps`` shortens episodes below MetaWorld's 500. ``blind_cameras`` runs the
    control of :class:`~vpp.robots.policies.BlindedPolicy` (recorded in the settings, so a blinded
    run never resumes into an unblinded one's folder)."""
    if isinstance(policy, str) and policy != "oracle":
        raise ValueError(f"policy {policy!r}: expected an object with act() or 'oracle'")
    if episodes < 1:
        raise ValueError(f"episodes={episodes}; expected a positive number per task")
    tasks = [check_task(t) for t in tasks]
    split = check_split(split)
    output = Path(output) if output is not None else None
    settings = {
        "name": name,
        "split": split,
        "cameras": list(cameras),
        "image_size": image_size,
        "execute": execute,
        "max_steps": max_steps,
    }
    if blind_cameras:
        if policy == "oracle":
            raise ValueError(
                "the oracle reads the simulator's state, not the cameras: there is nothing to blind"
            )
        policy = BlindedPolicy(policy, blind_cameras, blind_mode)
        settings["blinded"] = {"cameras": list(blind_cameras), "mode": blind_mode}
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
        logger.info(
            "%s: %d/%d successes", task, sum(finished[(task, i)].success for i in range(episodes)), episodes
        )
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


@dataclass(frozen=True)
class GraspEvalConfig:
    robot: str = "sim-panda"
    episodes: int = 10
    seed: int = EVAL_SEED
    max_seconds: float = 15.0
    rate_hz: float = 10.0
    servo_rate_hz: float = 100.0
    execute_steps: int | None = 8
    image_size: int = 32
    object_jitter_m: float = 0.1
    lift_m: float = GRASP_LIFT_M
    # the control of vpp.robots.policies.BlindedPolicy: these cameras show a fixed image
    blind_cameras: tuple[str, ...] = ()
    blind_mode: str = "first"

    def __post_init__(self) -> None:
        if self.episodes < 1 or not self.max_seconds > 0 or not self.lift_m > 0:
            raise ValueError(
                f"episodes={self.episodes}, max_seconds={self.max_seconds}, lift_m={self.lift_m}; "
                "expected positive values"
            )


@dataclass
class GraspRollout:
    seed: int
    cube_start: list[float]
    grasped: bool
    ticks: int
    simulated_s: float
    wall_s: float
    final_cube_lift_m: float
    final_tcp_to_cube_m: float


@dataclass
class GraspEvalResult:
    config: GraspEvalConfig
    rollouts: list[GraspRollout] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def grasped(self) -> int:
        return sum(rollout.grasped for rollout in self.rollouts)

    def summary(self) -> str:
        return f"grasped {self.grasped}/{len(self.rollouts)}"

    def to_dict(self) -> dict:
        return {"grasped": self.grasped, "episodes": len(self.rollouts), **asdict(self)}


def demonstration_starts(demos: str | Path) -> tuple[dict, list[int], np.ndarray]:
    """(collection settings, seeds its attempts used, their cube starts (N, 3)) of a demo folder
    written by `collect_sim_demos`."""
    from vpp.robots.collect import GRASP_TASK, CollectionState, GraspExpert

    state = CollectionState.read(demos)
    if state.source != GraspExpert.name:
        raise ValueError(f"{demos} holds {state.source} demonstrations; expected {GraspExpert.name}'s")
    attempts = state.tasks[GRASP_TASK].attempts if GRASP_TASK in state.tasks else []
    starts = np.asarray([a.start for a in attempts], dtype=np.float64).reshape(-1, 3)
    return state.settings, [a.seed for a in attempts], starts


def check_disjoint_from_demos(config: GraspEvalConfig, demos: str | Path) -> np.ndarray:
    """Raises SeedOverlapError if an evaluation seed was a collection attempt's, or ValueError if
    the cube spawn range differs from the demonstrations'; returns the demonstrations' cube starts."""
    settings, seeds, starts = demonstration_starts(demos)
    evaluation = range(config.seed, config.seed + config.episodes)
    shared = sorted(set(seeds) & set(evaluation))
    if shared:
        raise SeedOverlapError(
            f"evaluation seeds {config.seed}..{config.seed + config.episodes - 1} include {shared[:5]} "
            f"(of {len(shared)}), which {demos} was collected from; expected seeds outside {min(seeds)}..{max(seeds)}"
        )
    if settings["object_jitter_m"] != config.object_jitter_m:
        raise ValueError(
            f"object_jitter_m={config.object_jitter_m}, but {demos} was collected with {settings['object_jitter_m']}; "
            "expected the demonstrations' cube spawn range"
        )
    return starts


def evaluate_grasps(
    policy: ActionPolicy,
    instruction: str,
    config: GraspEvalConfig = GraspEvalConfig(),
    demos: str | Path | None = None,
    out: str | Path | None = None,
) -> GraspEvalResult:
    """``config.episodes`` rollouts of ``policy`` on the simulated arm from evaluation seeds; with
    ``demos``, refuses any start a demonstration attempt used. With ``out``: grasp_eval.json and
    grasps.mp4 (the live cameras, also when ``config.blind_cameras`` hides them from the policy)."""
    if config.blind_cameras:
        policy = BlindedPolicy(policy, config.blind_cameras, config.blind_mode)
    demo_starts = check_disjoint_from_demos(config, demos) if demos is not None else np.zeros((0, 3))
    sim_config = SimConfig(
        image_height=config.image_size,
        image_width=config.image_size,
        realtime=False,
        start_tcp_position="ready",
        object_jitter_m=config.object_jitter_m,
        seed=config.seed,
    )
    loop_config = SimulatedTimeConfig(
        policy_rate_hz=config.rate_hz, servo_rate_hz=config.servo_rate_hz, execute_steps=config.execute_steps
    )
    max_ticks = round(config.max_seconds * config.rate_hz)
    result = GraspEvalResult(config)
    videos: list[np.ndarray] = []
    started = time.monotonic()
    arm = build_sim_arm(config.robot, sim_config, config.servo_rate_hz)
    with arm:
        cameras = arm.cameras()
        for index in range(config.episodes):
            seed = config.seed + index
            arm.reset(seed)
            cube_start = arm.object_position()
            if len(demo_starts) and np.any(
                np.all(np.isclose(demo_starts, cube_start, rtol=0.0, atol=1e-9), axis=1)
            ):
                raise SeedOverlapError(
                    f"seed {seed} spawns the cube at {cube_start.tolist()}, where a demonstration started"
                )
            recorder = RolloutRecorder([camera.name for camera in cameras]) if out is not None else None
            report = SimulatedTimeLoop(arm, cameras, policy, loop_config, recorder=recorder).run(
                instruction, max_ticks=max_ticks, until=lambda _state: arm.object_grasped(config.lift_m)
            )
            rollout = GraspRollout(
                seed=seed,
                cube_start=cube_start.tolist(),
                grasped=report.finished,
                ticks=report.ticks,
                simulated_s=report.simulated_s,
                wall_s=report.wall_s,
                final_cube_lift_m=arm.object_lift_m(),
                final_tcp_to_cube_m=float(np.linalg.norm(arm.observe().ee_position - arm.object_position())),
            )
            result.rollouts.append(rollout)
            logger.info(
                "rollout %d (seed %d, cube at %s): %s after %d ticks (%.1f s simulated, %.1f s wall)",
                index,
                seed,
                np.round(cube_start[:2], 3).tolist(),
                "grasped" if rollout.grasped else "not grasped",
                rollout.ticks,
                rollout.simulated_s,
                rollout.wall_s,
            )
            if recorder is not None and len(recorder):
                videos.append(
                    np.concatenate(
                        [np.stack(recorder.images[name]) for name in recorder.camera_names], axis=2
                    )
                )
    result.wall_s = time.monotonic() - started
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "grasp_eval.json").write_text(json.dumps(result.to_dict(), indent=2))
        if videos:
            from vpp.data.video_io import write_video

            write_video(out / "grasps.mp4", np.concatenate(videos), fps=round(config.rate_hz))
    return result

"""MetaWorld (v3) tasks with rendered cameras, and their scripted oracle policies.

Rendering dominates the cost on a CPU: MuJoCo's default scene (4096 shadow map, 4x
multisampling) renders a frame in 50-75 ms under Mesa, while with shadows and multisampling off
it takes ~10 ms at 64-128 px, so both are switched off here. The ``corner`` cameras render upside
down and are flipped back.

Episode configurations (object and goal positions: MetaWorld's ``rand_vec``) come from MetaWorld's
own randomisation, its reset-time rejection sampling from the task's random reset space, driven by
a seed that names a split and an index. ``train`` (demonstrations) and ``eval`` (evaluation) are
disjoint seed streams, so evaluation never starts from a demonstrated state, and any number of
episodes can be drawn: MT1's 50 fixed ``train_tasks`` are not used for configurations at all.
(MetaWorld v3's ``reset(seed=...)`` ignores its seed: the seed has to go through ``env.seed``.)
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vpp.data.offscreen_gl import ensure_offscreen_gl
from vpp.robots.envs.metaworld_tasks import ALL_TASKS, INSTRUCTIONS

logger = logging.getLogger(__name__)

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
FLIPPED_CAMERAS = {"corner", "corner2", "corner3", "corner4"}
STATE_DIM = 4  # hand position (3) + gripper opening (1), the first entries of MetaWorld's observation
ACTION_DIM = 4
# Seed streams of episode configurations; the code sits above the task and index bits of the
# seed, so two splits never share a seed (see configuration_seed).
SPLITS = {"train": 1, "eval": 2}


def check_task(task: str) -> str:
    task = task.removesuffix("-v3")
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown MetaWorld task {task!r}; expected one of {', '.join(ALL_TASKS)}")
    return task


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def configuration_seed(task: str, split: str, index: int) -> int:
    """The seed that draws episode ``index`` of ``split`` for ``task``: split, task and index in
    separate bit fields, so distinct (split, task, index) give distinct seeds."""
    if not 0 <= index < 2**32:
        raise ValueError(f"episode index {index}; expected 0 <= index < 2**32")
    return (SPLITS[check_split(split)] << 64) | (zlib.crc32(check_task(task).encode()) << 32) | index


@dataclass
class StepResult:
    observation: dict[str, np.ndarray]
    success: bool
    done: bool


class MetaWorldTask:
    """One MetaWorld task rendered from the given cameras; observations are
    {camera: uint8 (H, W, 3), "state": float32 (4,)}. ``rand_vec`` is the current episode's
    configuration (object/goal positions), as MetaWorld stores it."""

    def __init__(self, task: str, cameras: Sequence[str] = ("corner",), image_size: int = 64) -> None:
        ensure_offscreen_gl()
        import metaworld

        self.task = check_task(task)
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras:
            raise ValueError(f"cameras {list(cameras)}; expected a non-empty subset of {CAMERAS}")
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.instruction = INSTRUCTIONS[self.task]
        name = f"{self.task}-v3"
        benchmark = metaworld.MT1(name, seed=0)
        self.env = benchmark.train_classes[name](
            render_mode="rgb_array", camera_name=self.cameras[0], width=image_size, height=image_size
        )
        # An MT1 task carries the task's fixed settings and makes the goal observable, as in
        # training; its own rand_vec is replaced at every reset.
        self.env.set_task(benchmark.train_tasks[0])
        self.env.model.light_castshadow[:] = 0
        self.env.model.vis.quality.offsamples = 0
        self.max_steps = int(self.env.max_path_length)
        self.rand_vec: np.ndarray | None = None
        self._last_obs: np.ndarray | None = None
        self.steps = 0

    def _render(self) -> dict[str, np.ndarray]:
        renderer = self.env.mujoco_renderer
        frames = {}
        for camera in self.cameras:
            renderer.camera_id = self.env.model.camera(camera).id
            image = np.asarray(renderer.render("rgb_array"))
            frames[camera] = np.ascontiguousarray(image[::-1, ::-1] if camera in FLIPPED_CAMERAS else image)
        return frames

    def _observation(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self._last_obs = raw
        return {**self._render(), "state": np.asarray(raw[:STATE_DIM], dtype=np.float32)}

    def reset(self, index: int, split: str) -> dict[str, np.ndarray]:
        """Starts episode ``index`` of ``split``: MetaWorld draws its configuration from the
        task's random reset space (resampling what the task rejects) with the episode's seed."""
        self.env.seed(configuration_seed(self.task, split, index))
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        raw = self._reset()
        self.rand_vec = np.array(self.env._last_rand_vec, dtype=np.float64)
        return self._observation(raw)

    def reset_to(self, rand_vec: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
        """Starts an episode from a recorded configuration: a ``rand_vec`` that ``reset`` drew
        (an arbitrary one that the task's rejection sampling would redraw makes MetaWorld's
        reset loop forever)."""
        rand_vec = np.array(rand_vec, dtype=np.float64)
        expected = self.env._random_reset_space.low.shape
        if rand_vec.shape != expected or not np.isfinite(rand_vec).all():
            raise ValueError(
                f"{self.task} configuration {rand_vec.tolist()}; expected {expected[0]} finite values"
            )
        self.env._freeze_rand_vec = True
        self.env._last_rand_vec = rand_vec
        raw = self._reset()
        self.rand_vec = rand_vec
        return self._observation(raw)

    def _reset(self) -> np.ndarray:
        import mujoco

        raw, _ = self.env.reset()
        # MetaWorld moves the goal site after its last forward pass, so without this the first
        # frame shows the goal where the reset's first (discarded) draw put it
        mujoco.mj_forward(self.env.model, self.env.data)
        self.steps = 0
        return raw

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"MetaWorld action {action!r}; expected 4 finite values")
        raw, _reward, terminated, truncated, info = self.env.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(info.get("success", 0.0))
        done = success or terminated or truncated or self.steps >= self.max_steps
        return StepResult(self._observation(raw), success, done)

    def oracle_action(self) -> np.ndarray:
        from metaworld.policies import ENV_POLICY_MAP

        if not hasattr(self, "_oracle"):
            self._oracle = ENV_POLICY_MAP[f"{self.task}-v3"]()
        return np.asarray(self._oracle.get_action(self._last_obs), dtype=np.float32)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> MetaWorldTask:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

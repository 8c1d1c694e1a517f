"""MetaWorld (v3) tasks with rendered cameras, and their scripted oracle policies.

Rendering dominates the cost on a CPU: MuJoCo's default scene (4096 shadow map, 4x
multisampling) renders a frame in 50-75 ms under Mesa, while with shadows and multisampling off
it takes ~10 ms at 64-128 px, so both are switched off here. The ``corner`` cameras render upside
down and are flipped back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vpp.data.offscreen_gl import ensure_offscreen_gl
from vpp.policy.envs.metaworld_tasks import ALL_TASKS, INSTRUCTIONS

logger = logging.getLogger(__name__)

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
FLIPPED_CAMERAS = {"corner", "corner2", "corner3", "corner4"}
STATE_DIM = 4  # hand position (3) + gripper opening (1), the first entries of MetaWorld's observation
ACTION_DIM = 4


def check_task(task: str) -> str:
    task = task.removesuffix("-v3")
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown MetaWorld task {task!r}; expected one of {', '.join(ALL_TASKS)}")
    return task


@dataclass
class StepResult:
    observation: dict[str, np.ndarray]
    success: bool
    done: bool


class MetaWorldTask:
    """One MetaWorld task rendered from the given cameras; observations are
    {camera: uint8 (H, W, 3), "state": float32 (4,)}."""

    def __init__(self, task: str, cameras: Sequence[str] = ("corner",), image_size: int = 64, seed: int = 0) -> None:
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
        self._benchmark = metaworld.MT1(name, seed=seed)
        self.env = self._benchmark.train_classes[name](
            render_mode="rgb_array", camera_name=self.cameras[0], width=image_size, height=image_size
        )
        self.env.model.light_castshadow[:] = 0
        self.env.model.vis.quality.offsamples = 0
        self.max_steps = int(self.env.max_path_length)
        self.num_variations = len(self._benchmark.train_tasks)
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

    def reset(self, episode_seed: int) -> dict[str, np.ndarray]:
        """Episode ``episode_seed`` picks the object/goal variation and seeds the reset."""
        self.env.set_task(self._benchmark.train_tasks[episode_seed % self.num_variations])
        raw, _ = self.env.reset(seed=episode_seed)
        self.steps = 0
        return self._observation(raw)

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

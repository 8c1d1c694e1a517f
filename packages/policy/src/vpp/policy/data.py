"""Episodes with actions, and the (observation, future action chunk) windows the policy learns from.

An episode has, per camera, one frame per timestep, the action taken at each timestep, optionally
the robot state, and one instruction. A training sample at timestep t is the current frame of
every camera (the TVP predicts the future from it), the state at t, and the actions t..t+chunk-1.
Episodes that cannot be learned from (NaN or inf actions, frames and actions of different
lengths, shorter than one chunk, no instruction) are rejected once, up front, with the reason.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vpp.tvp.data.mixture import resize_frames

logger = logging.getLogger(__name__)


class BadEpisode(ValueError):
    """An episode the policy cannot learn from."""


class NoValidEpisodes(RuntimeError):
    """Every episode was rejected."""


@dataclass(frozen=True)
class PolicyEpisode:
    key: str
    instruction: str
    actions: np.ndarray  # (T, A) float32
    state: np.ndarray | None  # (T, S) float32
    frame_counts: dict[str, int]
    reader: Callable[[str, np.ndarray], np.ndarray]  # (camera, frame indices) -> uint8 (N, H, W, 3)

    @property
    def length(self) -> int:
        return len(self.actions)

    def read_frames(self, camera: str, indices: np.ndarray) -> np.ndarray:
        return self.reader(camera, np.asarray(indices, dtype=np.int64))


def validate_episode(episode: PolicyEpisode, cameras: Sequence[str], chunk: int, state_dim: int | None) -> None:
    """Raises BadEpisode with the offending value and what was expected."""
    actions = episode.actions
    if actions.ndim != 2:
        raise BadEpisode(f"{episode.key}: actions have shape {actions.shape}, expected (T, action_dim)")
    if not np.isfinite(actions).all():
        step = int(np.argwhere(~np.isfinite(actions))[0][0])
        raise BadEpisode(f"{episode.key}: actions contain NaN/inf (first at timestep {step})")
    for camera in cameras:
        if camera not in episode.frame_counts:
            raise BadEpisode(f"{episode.key}: no camera {camera!r}; it has {sorted(episode.frame_counts)}")
        if episode.frame_counts[camera] != len(actions):
            raise BadEpisode(
                f"{episode.key}: camera {camera!r} has {episode.frame_counts[camera]} frames but there are "
                f"{len(actions)} actions; expected one frame per action"
            )
    if episode.state is not None:
        if len(episode.state) != len(actions):
            raise BadEpisode(f"{episode.key}: {len(episode.state)} states but {len(actions)} actions")
        if not np.isfinite(episode.state).all():
            raise BadEpisode(f"{episode.key}: state contains NaN/inf")
        if state_dim is not None and episode.state.shape[1] != state_dim:
            raise BadEpisode(f"{episode.key}: state dim {episode.state.shape[1]}, expected {state_dim}")
    elif state_dim is not None:
        raise BadEpisode(f"{episode.key}: no state, but the policy uses a {state_dim}-dim proprioception input")
    if len(actions) < chunk:
        raise BadEpisode(f"{episode.key}: {len(actions)} steps, shorter than one action chunk ({chunk})")
    if not episode.instruction.strip():
        raise BadEpisode(f"{episode.key}: no instruction")


class EpisodeSource(ABC):
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def episode(self, index: int) -> PolicyEpisode: ...


class ArrayEpisodeSource(EpisodeSource):
    """Episodes in memory: dicts with ``frames`` {camera: uint8 (T, H, W, 3)}, ``actions`` (T, A),
    optional ``state`` (T, S), and ``instruction``."""

    def __init__(self, episodes: Sequence[dict], name: str = "arrays") -> None:
        self.episodes = list(episodes)
        self.name = name

    def __len__(self) -> int:
        return len(self.episodes)

    def episode(self, index: int) -> PolicyEpisode:
        data = self.episodes[index]
        frames = data["frames"]
        state = data.get("state")
        return PolicyEpisode(
            key=f"{self.name}/{index}",
            instruction=data["instruction"],
            actions=np.asarray(data["actions"], dtype=np.float32),
            state=None if state is None else np.asarray(state, dtype=np.float32),
            frame_counts={camera: len(video) for camera, video in frames.items()},
            reader=lambda camera, idx, frames=frames: np.ascontiguousarray(frames[camera][idx]),
        )


class LeRobotEpisodeSource(EpisodeSource):
    """Episodes of a LeRobotDataset v3 folder; cameras are video keys (or their last component)."""

    def __init__(self, root: str | Path, action_key: str = "action", state_key: str | None = "observation.state") -> None:
        from vpp.data.lerobot import LeRobotDataset

        self.dataset = LeRobotDataset(root)
        self.name = Path(root).name
        self.action_key = action_key
        self.state_key = state_key if state_key in self.dataset.features else None
        if action_key not in self.dataset.features:
            raise KeyError(f"{root} has no {action_key!r} feature; features are {sorted(self.dataset.features)}")

    def camera_key(self, camera: str) -> str:
        if camera in self.dataset.video_keys:
            return camera
        matches = [k for k in self.dataset.video_keys if k.split(".")[-1] == camera]
        if len(matches) != 1:
            raise KeyError(f"camera {camera!r} not in {self.name}; video keys are {list(self.dataset.video_keys)}")
        return matches[0]

    def __len__(self) -> int:
        return self.dataset.num_episodes

    def episode(self, index: int) -> PolicyEpisode:
        episode = self.dataset.episode(index)
        actions = np.asarray(episode.column(self.action_key), dtype=np.float32)
        state = None if self.state_key is None else np.asarray(episode.column(self.state_key), dtype=np.float32)
        cameras = {key.split(".")[-1]: key for key in self.dataset.video_keys}
        counts = {**{short: episode.length for short in cameras}, **{key: episode.length for key in self.dataset.video_keys}}
        return PolicyEpisode(
            key=f"{self.name}/{index}",
            instruction=episode.task or "",
            actions=actions,
            state=state,
            frame_counts=counts,
            reader=lambda camera, idx, episode=episode: episode.read_frames(self.camera_key(camera), idx),
        )


@dataclass
class EpisodeReport:
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.accepted} episodes accepted, {len(self.rejected)} rejected"]
        return "\n".join(lines + [f"  rejected: {reason}" for reason in self.rejected])


class PolicyWindowDataset(torch.utils.data.Dataset):
    """Every (episode, t) with a full action chunk ahead: {"images": (V, 3, S, S) in [-1, 1],
    "instruction", "actions": (chunk, A) raw, "state": (S,) raw or absent, "key": (episode, t)}."""

    def __init__(
        self,
        sources: Sequence[EpisodeSource],
        cameras: Sequence[str],
        chunk: int,
        image_size: int,
        state_dim: int | None = None,
    ) -> None:
        if not cameras:
            raise ValueError("the policy needs at least one camera")
        self.cameras = list(cameras)
        self.chunk = chunk
        self.image_size = image_size
        self.report = EpisodeReport()
        self.episodes: list[PolicyEpisode] = []
        for source in sources:
            for index in range(len(source)):
                try:
                    episode = source.episode(index)
                    validate_episode(episode, self.cameras, chunk, state_dim)
                except BadEpisode as error:
                    logger.warning("rejecting episode: %s", error)
                    self.report.rejected.append(str(error))
                    continue
                self.report.accepted += 1
                self.episodes.append(episode)
        if not self.episodes:
            raise NoValidEpisodes("no usable episode:\n" + self.report.summary())
        self.windows = [(e, t) for e, episode in enumerate(self.episodes) for t in range(episode.length - chunk + 1)]

    def __len__(self) -> int:
        return len(self.windows)

    def all_actions(self) -> np.ndarray:
        return np.concatenate([e.actions for e in self.episodes])

    def all_states(self) -> np.ndarray | None:
        if self.episodes[0].state is None:
            return None
        return np.concatenate([e.state for e in self.episodes])

    def observation(self, index: int) -> torch.Tensor:
        e, t = self.windows[index]
        episode = self.episodes[e]
        frames = [episode.read_frames(camera, np.array([t]))[0] for camera in self.cameras]
        return resize_frames(np.stack(frames), self.image_size)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, with_images: bool = True) -> dict:
        """The window's sample; without images when its features come from a cache."""
        e, t = self.windows[index]
        episode = self.episodes[e]
        item = {
            "instruction": episode.instruction,
            "actions": torch.from_numpy(episode.actions[t : t + self.chunk]),
            "key": (e, t),
        }
        if with_images:
            item["images"] = self.observation(index)
        if episode.state is not None:
            item["state"] = torch.from_numpy(episode.state[t])
        return item


def collate_windows(items: Sequence[dict]) -> dict:
    batch: dict = {"instruction": [i["instruction"] for i in items], "key": [i["key"] for i in items]}
    for name in ("images", "actions", "state", "features"):
        if name in items[0]:
            batch[name] = torch.stack([i[name] for i in items])
    return batch

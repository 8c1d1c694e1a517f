"""Episodes with actions, and the (observation, future action chunk) windows the policy learns from.

An episode has, per camera, one frame per timestep, the action taken at each timestep, optionally
the robot state, and one instruction. A training sample at timestep t is the current frame of
every camera (the TVP predicts the future from it), the state at t, and the actions t..t+chunk-1.
Episodes that cannot be learned from (NaN or inf actions, frames and actions of different
lengths, shorter than one chunk, no instruction, a video file that does not open or ends before
the episode does) are rejected once, up front, with the reason. A video that opens but fails to
decode is found only when read: the dataset then marks the episode unreadable, logs the file, and
training draws other windows (``train.SampledWindows``, ``FeatureCache.build``).
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


class BadEpisodeError(ValueError):
    """An episode the policy cannot learn from."""


class UnreadableEpisodeError(BadEpisodeError):
    """An episode whose frames cannot be decoded."""


class NoValidEpisodesError(RuntimeError):
    """Every episode was rejected."""


@dataclass(frozen=True)
class PolicyEpisode:
    key: str
    instruction: str
    actions: np.ndarray  # (T, A) float32
    state: np.ndarray | None  # (T, S) float32
    frame_counts: dict[str, int]
    reader: Callable[[str, np.ndarray], np.ndarray]  # (camera, frame indices) -> uint8 (N, H, W, 3)
    # Which task the episode demonstrates, unique across sources (LeRobot: dataset + task_index);
    # two tasks may share an instruction text.
    task: str
    # camera -> raises UnreadableEpisodeError when the camera's video cannot serve this episode; a
    # cheap check (no decoding) run once when the dataset is indexed.
    check_video: Callable[[str], None] | None = None

    @property
    def length(self) -> int:
        return len(self.actions)

    def read_frames(self, camera: str, indices: np.ndarray) -> np.ndarray:
        return self.reader(camera, np.asarray(indices, dtype=np.int64))


def validate_episode(
    episode: PolicyEpisode, cameras: Sequence[str], chunk: int, state_dim: int | None
) -> None:
    """Raises BadEpisodeError with the offending value and what was expected."""
    actions = episode.actions
    if actions.ndim != 2:
        raise BadEpisodeError(f"{episode.key}: actions have shape {actions.shape}, expected (T, action_dim)")
    if not np.isfinite(actions).all():
        step = int(np.argwhere(~np.isfinite(actions))[0][0])
        raise BadEpisodeError(f"{episode.key}: actions contain NaN/inf (first at timestep {step})")
    for camera in cameras:
        if camera not in episode.frame_counts:
            raise BadEpisodeError(
                f"{episode.key}: no camera {camera!r}; it has {sorted(episode.frame_counts)}"
            )
        if episode.frame_counts[camera] != len(actions):
            raise BadEpisodeError(
                f"{episode.key}: camera {camera!r} has {episode.frame_counts[camera]} frames but there are "
                f"{len(actions)} actions; expected one frame per action"
            )
    if episode.state is not None:
        if len(episode.state) != len(actions):
            raise BadEpisodeError(f"{episode.key}: {len(episode.state)} states but {len(actions)} actions")
        if not np.isfinite(episode.state).all():
            raise BadEpisodeError(f"{episode.key}: state contains NaN/inf")
        if state_dim is not None and episode.state.shape[1] != state_dim:
            raise BadEpisodeError(f"{episode.key}: state dim {episode.state.shape[1]}, expected {state_dim}")
    elif state_dim is not None:
        raise BadEpisodeError(
            f"{episode.key}: no state, but the policy uses a {state_dim}-dim proprioception input"
        )
    if len(actions) < chunk:
        raise BadEpisodeError(f"{episode.key}: {len(actions)} steps, shorter than one action chunk ({chunk})")
    if not episode.instruction.strip():
        raise BadEpisodeError(f"{episode.key}: no instruction")


class EpisodeSource(ABC):
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def episode(self, index: int) -> PolicyEpisode: ...


class ArrayEpisodeSource(EpisodeSource):
    """Episodes in memory: dicts with ``frames`` {camera: uint8 (T, H, W, 3)}, ``actions`` (T, A),
    optional ``state`` (T, S), ``instruction``, and optional ``task`` (default: the instruction)."""

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
            task=f"{self.name}#{data.get('task', data['instruction'])}",
            instruction=data["instruction"],
            actions=np.asarray(data["actions"], dtype=np.float32),
            state=None if state is None else np.asarray(state, dtype=np.float32),
            frame_counts={camera: len(video) for camera, video in frames.items()},
            reader=lambda camera, idx, frames=frames: np.ascontiguousarray(frames[camera][idx]),
        )


class LeRobotEpisodeSource(EpisodeSource):
    """Episodes of a LeRobotDataset v3 folder; cameras are video keys (or their last component)."""

    def __init__(
        self, root: str | Path, action_key: str = "action", state_key: str | None = "observation.state"
    ) -> None:
        from vpp.data.lerobot import LeRobotDataset

        self.dataset = LeRobotDataset(root)
        self.name = Path(root).name
        # video file -> its end time in seconds, or why it cannot be read
        self._video_ends: dict[Path, float | str] = {}
        self.action_key = action_key
        self.state_key = state_key if state_key in self.dataset.features else None
        if action_key not in self.dataset.features:
            raise KeyError(
                f"{root} has no {action_key!r} feature; features are {sorted(self.dataset.features)}"
            )

    def camera_key(self, camera: str) -> str:
        if camera in self.dataset.video_keys:
            return camera
        matches = [k for k in self.dataset.video_keys if k.split(".")[-1] == camera]
        if len(matches) != 1:
            raise KeyError(
                f"camera {camera!r} not in {self.name}; video keys are {list(self.dataset.video_keys)}"
            )
        return matches[0]

    def __len__(self) -> int:
        return self.dataset.num_episodes

    def episode(self, index: int) -> PolicyEpisode:
        episode = self.dataset.episode(index)
        actions = np.asarray(episode.column(self.action_key), dtype=np.float32)
        state = (
            None if self.state_key is None else np.asarray(episode.column(self.state_key), dtype=np.float32)
        )
        cameras = {key.split(".")[-1]: key for key in self.dataset.video_keys}
        counts = {
            **dict.fromkeys(cameras, episode.length),
            **dict.fromkeys(self.dataset.video_keys, episode.length),
        }
        if episode.task and episode.task not in self.dataset.tasks:
            raise BadEpisodeError(
                f"{self.name}/{index}: task {episode.task!r} is not in meta/tasks.parquet {self.dataset.tasks}"
            )
        task_index = self.dataset.tasks.index(episode.task) if episode.task else None
        return PolicyEpisode(
            key=f"{self.name}/{index}",
            task=f"{self.dataset.root}#task_index={task_index}",
            instruction=episode.task or "",
            actions=actions,
            state=state,
            frame_counts=counts,
            reader=lambda camera, idx, episode=episode: self._read(episode, camera, idx),
            check_video=lambda camera, episode=episode: self._check_video(episode, camera),
        )

    def _video_end(self, path: Path) -> float | str:
        from vpp.data import video_io

        if path not in self._video_ends:
            try:
                self._video_ends[path] = video_io.duration_s(path)
            except Exception as error:  # any container or demuxer failure makes the file unusable
                self._video_ends[path] = f"{type(error).__name__}: {error}"
        return self._video_ends[path]

    def _check_video(self, episode, camera: str) -> None:
        key = self.camera_key(camera)
        path = episode.video_path(key)
        end = self._video_end(path)
        where = f"{self.name}/{episode.index}: camera {camera!r}: video {path}"
        if isinstance(end, str):
            raise UnreadableEpisodeError(f"{where} does not open ({end})")
        last_frame = episode.from_timestamp(key) + (episode.length - 1) / self.dataset.fps
        # a frame shown at t lasts until t + 1/fps; half a frame of slack absorbs timestamp rounding
        if last_frame > end - 0.5 / self.dataset.fps:
            raise UnreadableEpisodeError(
                f"{where} ends at {end:.3f} s, before the episode's last frame at {last_frame:.3f} s"
            )

    def _read(self, episode, camera: str, indices: np.ndarray) -> np.ndarray:
        key = self.camera_key(camera)
        try:
            return episode.read_frames(key, indices)
        except Exception as error:  # a decoder error names the codec call, not the file: add it
            raise UnreadableEpisodeError(
                f"{self.name}/{episode.index}: camera {camera!r}: video {episode.video_path(key)}: "
                f"{type(error).__name__}: {error}"
            ) from error


@dataclass
class EpisodeReport:
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    # accepted episodes whose frames failed to decode during training or feature caching
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.accepted} episodes accepted, {len(self.rejected)} rejected"]
        if self.unreadable:
            lines[0] += f", {len(self.unreadable)} skipped as unreadable when read"
        lines += [f"  rejected: {reason}" for reason in self.rejected]
        return "\n".join(lines + [f"  unreadable: {reason}" for reason in self.unreadable])


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
                    if episode.check_video is not None:
                        for camera in self.cameras:
                            episode.check_video(camera)
                except BadEpisodeError as error:
                    logger.warning("rejecting episode: %s", error)
                    self.report.rejected.append(str(error))
                    continue
                self.report.accepted += 1
                self.episodes.append(episode)
        if not self.episodes:
            raise NoValidEpisodesError("no usable episode:\n" + self.report.summary())
        self.windows = [
            (e, t) for e, episode in enumerate(self.episodes) for t in range(episode.length - chunk + 1)
        ]
        self.unreadable: set[int] = set()

    def mark_unreadable(self, e: int, error: Exception) -> None:
        """Leaves episode ``e`` out from now on; raises NoValidEpisodesError when no window is left."""
        if e in self.unreadable:
            return
        self.unreadable.add(e)
        self.report.unreadable.append(str(error))
        logger.warning("skipping unreadable episode (%d so far): %s", len(self.unreadable), error)
        if all(w in self.unreadable for w, _ in self.windows):
            raise NoValidEpisodesError(
                "no episode with training windows is readable:\n" + self.report.summary()
            )

    def __len__(self) -> int:
        return len(self.windows)

    def all_actions(self) -> np.ndarray:
        return np.concatenate([e.actions for e in self.episodes])

    def all_states(self) -> np.ndarray | None:
        if self.episodes[0].state is None:
            return None
        return np.concatenate([e.state for e in self.episodes])

    def observation(self, index: int) -> torch.Tensor:
        """(V, 3, S, S); raises UnreadableEpisodeError (naming episode and camera) when decoding fails."""
        e, t = self.windows[index]
        episode = self.episodes[e]
        frames = []
        for camera in self.cameras:
            try:
                frames.append(episode.read_frames(camera, np.array([t]))[0])
            except UnreadableEpisodeError:
                raise
            except (
                Exception
            ) as error:  # whatever the source's decoder raises, the run needs the episode named
                raise UnreadableEpisodeError(
                    f"{episode.key}: camera {camera!r}, timestep {t}: {type(error).__name__}: {error}"
                ) from error
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

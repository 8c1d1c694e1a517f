"""Clip sources: where training videos and their instructions come from.

A source is a list of episodes (one video + one instruction each). Episodes expose their length
and read only the frames asked for, so a 16-frame clip from a long robot episode decodes 16
frames, not the whole video. How a clip is cut from an episode is the source's ``sampling``:
``"stride"`` (robot data: consecutive frames at a fixed stride) or ``"linspace"`` (internet
clips: frames spread evenly over the whole clip).
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Sampling = Literal["stride", "linspace"]
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")


def file_identity(path: Path) -> str:
    """A file's resolved path, size and modification time: changes when the file is written again."""
    try:
        stat = path.stat()
    except OSError as error:
        raise BadClipError("unreadable", f"{path}: {error}") from error
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class BadClipError(Exception):
    """An episode that cannot serve as a training clip; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Episode:
    source: str
    index: int
    length: int
    instruction: str
    key: str
    reader: Callable[[np.ndarray], np.ndarray]
    # What the frames are, as cheaply as it can be known without decoding them: a hash of an
    # in-memory array, or a video file's resolved path, size and modification time. Caches of
    # derived data (the VAE latents) are named by it, so a folder collected again, or another
    # dataset under the same source name, never reads the old episode's latents.
    content_id: str = ""

    def read_frames(self, indices: np.ndarray) -> np.ndarray:
        """uint8 frames (N, H, W, 3) at the given frame indices."""
        frames = self.reader(np.asarray(indices, dtype=np.int64))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise BadClipError(
                "unreadable", f"{self.key}: frames {frames.shape} {frames.dtype}, expected (N, H, W, 3) uint8"
            )
        if len(frames) != len(indices):
            raise BadClipError(
                "unreadable", f"{self.key}: asked for {len(indices)} frames, got {len(frames)}"
            )
        return frames


class ClipSource(ABC):
    def __init__(self, name: str, sampling: Sampling = "stride", stride: int = 2) -> None:
        if sampling not in ("stride", "linspace"):
            raise ValueError(f"sampling={sampling!r}; expected 'stride' or 'linspace'")
        if stride < 1:
            raise ValueError(f"stride={stride}; expected >= 1")
        self.name = name
        self.sampling = sampling
        self.stride = stride

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def episode(self, index: int) -> Episode:
        """The episode's metadata; raises BadClipError when even that cannot be read."""

    def clip_indices(self, length: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of one clip of ``num_frames`` from an episode of ``length`` frames."""
        if length < num_frames:
            raise BadClipError("too short", f"{length} frames, a clip needs {num_frames}")
        if self.sampling == "linspace":
            return np.linspace(0, length - 1, num_frames).round().astype(np.int64)
        # Long enough for the configured stride, or the largest stride that fits.
        stride = min(self.stride, (length - 1) // max(num_frames - 1, 1)) if num_frames > 1 else 1
        span = (num_frames - 1) * stride + 1
        start = int(rng.integers(0, length - span + 1))
        return start + stride * np.arange(num_frames, dtype=np.int64)


class ArrayClipSource(ClipSource):
    """Videos already in memory: uint8 arrays (T, H, W, 3) and one instruction each."""

    def __init__(
        self,
        videos: Sequence[np.ndarray],
        instructions: Sequence[str],
        name: str = "arrays",
        sampling: Sampling = "stride",
        stride: int = 1,
    ) -> None:
        super().__init__(name, sampling, stride)
        if len(videos) != len(instructions):
            raise ValueError(f"{len(videos)} videos but {len(instructions)} instructions")
        self.videos = list(videos)
        self.instructions = list(instructions)
        self._content_ids: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def episode(self, index: int) -> Episode:
        video = self.videos[index]
        if video.ndim != 4 or video.shape[-1] != 3:
            raise BadClipError(
                "unreadable", f"{self.name}[{index}]: array shape {video.shape}, expected (T, H, W, 3)"
            )
        return Episode(
            source=self.name,
            index=index,
            length=len(video),
            instruction=self.instructions[index],
            key=f"{self.name}/{index}",
            reader=lambda idx, video=video: np.ascontiguousarray(video[idx]).astype(np.uint8, copy=False),
            content_id=self._content_id(index, video),
        )

    def _content_id(self, index: int, video: np.ndarray) -> str:
        if index not in self._content_ids:
            digest = hashlib.sha256(f"{video.shape}{video.dtype}".encode())
            digest.update(np.ascontiguousarray(video).tobytes())
            self._content_ids[index] = "array:" + digest.hexdigest()
        return self._content_ids[index]


class VideoFolderSource(ClipSource):
    """A folder of videos with their instructions.

    Instructions come from ``instructions.json`` ({file name: text}) in the folder, or from a
    ``.txt`` file beside each video with the same stem. Defaults suit internet clips (linspace).
    """

    def __init__(
        self, folder: str | Path, name: str | None = None, sampling: Sampling = "linspace", stride: int = 2
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"video folder {self.folder} does not exist")
        super().__init__(name or self.folder.name, sampling, stride)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        index_file = self.folder / "instructions.json"
        self.instruction_table: dict[str, str] = (
            json.loads(index_file.read_text()) if index_file.is_file() else {}
        )
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _instruction(self, path: Path) -> str:
        relative = str(path.relative_to(self.folder))
        for key in (relative, path.name, path.stem):
            if key in self.instruction_table:
                return self.instruction_table[key]
        sidecar = path.with_suffix(".txt")
        return sidecar.read_text().strip() if sidecar.is_file() else ""

    def episode(self, index: int) -> Episode:
        from vpp.data import video_io

        path = self.paths[index]
        if index not in self._lengths:
            try:
                self._lengths[index] = video_io.count_frames(path)
            except Exception as error:  # any decoder failure makes the clip unusable, not the run
                raise BadClipError("unreadable", f"{path}: {error}") from error
        return Episode(
            source=self.name,
            index=index,
            length=self._lengths[index],
            instruction=self._instruction(path),
            key=f"{self.name}/{path.relative_to(self.folder)}",
            reader=lambda idx, path=path: video_io.read_video(path, idx),
            content_id=file_identity(path),
        )


class LeRobotClipSource(ClipSource):
    """One camera of a LeRobotDataset v3 folder, read as it is on disk; instruction = task."""

    def __init__(
        self,
        root: str | Path,
        camera: str | None = None,
        name: str | None = None,
        sampling: Sampling = "stride",
        stride: int = 2,
    ) -> None:
        from vpp.data.lerobot import LeRobotDataset

        self.dataset = LeRobotDataset(root)
        keys = list(self.dataset.video_keys)
        if not keys:
            raise ValueError(f"LeRobot dataset {root} has no video features")
        if camera is None:
            camera = keys[0]
        elif camera not in keys:
            matches = [k for k in keys if k.endswith("." + camera)]
            if len(matches) != 1:
                raise ValueError(f"camera {camera!r} not in {root}; video keys are {keys}")
            camera = matches[0]
        self.camera = camera
        super().__init__(name or Path(root).name, sampling, stride)

    def __len__(self) -> int:
        return self.dataset.num_episodes

    def episode(self, index: int) -> Episode:
        episode = self.dataset.episode(index)
        return Episode(
            source=self.name,
            index=index,
            length=episode.length,
            instruction=episode.task or "",
            key=f"{self.name}/{self.camera}/{index}",
            reader=lambda idx, episode=episode: episode.read_frames(self.camera, idx),
            content_id=(
                f"{file_identity(episode.video_path(self.camera))}:"
                f"from{episode.metadata.get(f'videos/{self.camera}/from_timestamp')}:length{episode.length}"
            ),
        )

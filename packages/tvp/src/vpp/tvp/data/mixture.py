"""A weighted mixture of clip sources, indexable by sample number.

Sample ``j`` is a pure function of (seed, j): the source is drawn by weight, then an episode and
a clip window uniformly. Training asks for samples ``step * batch * world + ...``, so a run that
resumes at step k sees exactly the batches it would have seen, on any number of processes.

Episodes are checked once up front (metadata readable, long enough, has an instruction); a clip
that still fails to decode later is counted and replaced by another draw, never a crash mid-epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vpp.tvp.data.sources import BadClipError, ClipSource, Episode

logger = logging.getLogger(__name__)

# Paper Table 8 (trajectories, sampling ratio). Sources are the user's to provide; names are keys.
PAPER_TABLE8_MIXTURE: dict[str, float] = {
    "ssv2": 0.30,
    "rt1": 0.15,
    "bridge": 0.15,
    "bc_z": 0.08,
    "taco_play": 0.01,
    "jaco_play": 0.01,
    "calvin_abc": 0.10,
    "metaworld": 0.05,
    "panda": 0.05,
    "dexterous_hand": 0.10,
}

MAX_REDRAWS = 32


class NoValidClipsError(RuntimeError):
    """Every episode of every source was rejected."""


@dataclass
class DataReport:
    """Episodes accepted and rejected, by source and by reason."""

    accepted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def reject(self, source: str, error: BadClipError) -> None:
        self.rejected[(source, error.reason)] += 1
        self.examples.setdefault((source, error.reason), str(error))

    def summary(self) -> str:
        lines = [f"{source}: {count} episodes accepted" for source, count in sorted(self.accepted.items())]
        lines += [
            f"{source}: {count} rejected ({reason}; e.g. {self.examples[(source, reason)]})"
            for (source, reason), count in sorted(self.rejected.items())
        ]
        return "\n".join(lines)


def resize_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [-1, 1], centre-cropped to a square."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = video.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    video = video[..., top : top + side, left : left + side]
    if side != size:
        video = F.interpolate(video, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (video / 127.5 - 1.0).clamp(-1, 1)


class MixtureClipDataset(torch.utils.data.Dataset):
    """Item j -> {"video": (T, 3, S, S) in [-1, 1] or "latents": (T, C, h, w), "instruction", "source"}."""

    def __init__(
        self,
        sources: Sequence[ClipSource],
        num_frames: int,
        image_size: int,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        latent_cache=None,
    ) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        weights = dict(weights) if weights is not None else dict.fromkeys(names, 1.0)
        unknown = sorted(set(weights) - set(names))
        missing = sorted(set(names) - set(weights))
        if unknown or missing:
            raise ValueError(
                f"weights name unknown sources {unknown} / omit sources {missing}; sources are {names}"
            )
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self.num_frames = num_frames
        self.image_size = image_size
        self.seed = seed
        self.latent_cache = latent_cache
        self.report = DataReport()
        self.sources: list[ClipSource] = []
        self.episodes: list[list[Episode]] = []
        for source in sources:
            valid = self._scan(source)
            if valid and weights[source.name] > 0:
                self.sources.append(source)
                self.episodes.append(valid)
        if not self.sources:
            raise NoValidClipsError(
                "no valid clip in any source with a positive weight:\n" + self.report.summary()
            )
        raw = np.array([weights[s.name] for s in self.sources], dtype=np.float64)
        self.probabilities = raw / raw.sum()
        logger.info("clip mixture:\n%s", self.report.summary())

    def _scan(self, source: ClipSource) -> list[Episode]:
        valid = []
        for index in range(len(source)):
            try:
                episode = source.episode(index)
                if not episode.instruction.strip():
                    raise BadClipError("no instruction", episode.key)
                if episode.length < self.num_frames:
                    raise BadClipError(
                        "too short", f"{episode.key}: {episode.length} frames < {self.num_frames}"
                    )
            except BadClipError as error:
                self.report.reject(source.name, error)
                continue
            self.report.accepted[source.name] += 1
            valid.append(episode)
        return valid

    def __len__(self) -> int:
        """One nominal epoch: every valid episode once. Items exist for any j >= 0."""
        return sum(len(e) for e in self.episodes)

    def draw(self, rng: np.random.Generator) -> tuple[int, Episode, np.ndarray]:
        source_index = int(rng.choice(len(self.sources), p=self.probabilities))
        episodes = self.episodes[source_index]
        episode = episodes[int(rng.integers(len(episodes)))]
        indices = self.sources[source_index].clip_indices(episode.length, self.num_frames, rng)
        return source_index, episode, indices

    def __getitem__(self, j: int) -> dict:
        rng = np.random.default_rng([self.seed, int(j)])
        for _ in range(MAX_REDRAWS):
            _, episode, indices = self.draw(rng)
            try:
                item = self._load(episode, indices)
            except BadClipError as error:
                self.report.reject(episode.source, error)
                logger.warning("skipping clip: %s", error)
                continue
            item.update(instruction=episode.instruction, source=episode.source)
            return item
        raise NoValidClipsError(f"{MAX_REDRAWS} draws in a row failed to decode:\n{self.report.summary()}")

    def _load(self, episode: Episode, indices: np.ndarray) -> dict:
        if self.latent_cache is not None:
            return {"latents": self.latent_cache.read(episode, indices)}
        try:
            frames = episode.read_frames(indices)
        except BadClipError:
            raise
        except Exception as error:  # a decoder error in one file must not end the run
            raise BadClipError("unreadable", f"{episode.key}: {error}") from error
        return {"video": resize_frames(frames, self.image_size)}

    def all_episodes(self) -> list[Episode]:
        return [episode for episodes in self.episodes for episode in episodes]


def collate_clips(items: Sequence[dict]) -> dict:
    batch: dict = {key: [item[key] for item in items] for key in ("instruction", "source")}
    for key in ("video", "latents"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch

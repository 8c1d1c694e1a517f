"""Pre-encoded VAE latents, so training does not run the frozen VAE on every step.

Every frame of an episode is encoded once (as the official code does) and stored as one
safetensors file per episode under a folder named by the VAE's fingerprint, so a cache made with
another VAE or image size is never read by mistake. Each file is named by the episode's key and
its content (``Episode.content_id``: the video file's identity, or a hash of an in-memory array),
so changed data is encoded again instead of being served another episode's latents. Building is
resumable: finished episodes are skipped, and each file is written under a temporary name and
renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vpp.tvp.data.mixture import MixtureClipDataset, resize_frames
from vpp.tvp.data.sources import BadClipError, Episode

logger = logging.getLogger(__name__)


def vae_fingerprint(model) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"image_size": model.config.image_size, "vae": dict(model.vae.config)},
            sort_keys=True,
            default=str,
        ).encode()
    )
    for name, tensor in sorted(model.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.folder = Path(root) / fingerprint

    @classmethod
    def for_model(cls, root: str | Path, model) -> LatentCache:
        return cls(root, vae_fingerprint(model))

    def path(self, episode: Episode) -> Path:
        digest = hashlib.sha256(episode.key.encode())
        digest.update(f"|{episode.length}|{episode.content_id}".encode())
        return self.folder / (digest.hexdigest()[:24] + ".safetensors")

    def __contains__(self, episode: Episode) -> bool:
        return self.path(episode).is_file()

    def read(self, episode: Episode, indices: np.ndarray) -> torch.Tensor:
        path = self.path(episode)
        if not path.is_file():
            raise BadClipError(
                "not cached",
                f"{episode.key} (as it is now: {episode.content_id or 'no content id'}) has no latents in "
                f"{self.folder}; build the cache first",
            )
        return load_file(path)["latents"][torch.as_tensor(indices)].float()

    @torch.no_grad()
    def build(
        self, dataset: MixtureClipDataset, model, frames_per_batch: int = 32, progress: bool = True
    ) -> int:
        """Encodes every valid episode of ``dataset`` not yet cached; returns how many it encoded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        todo = [e for e in dataset.all_episodes() if e not in self]
        for episode in tqdm(todo, desc="encoding latents", disable=not progress):
            try:
                frames = episode.read_frames(np.arange(episode.length))
            except Exception as error:  # one broken file is reported, the rest still get cached
                dataset.report.reject(episode.source, BadClipError("unreadable", f"{episode.key}: {error}"))
                continue
            video = resize_frames(frames, model.config.image_size)
            latents = torch.cat(
                [model.encode_video(part.unsqueeze(0))[0] for part in video.split(frames_per_batch)]
            )
            target = self.path(episode)
            tmp = target.with_suffix(".tmp")
            save_file({"latents": latents.to(torch.float16).contiguous()}, tmp, metadata={"key": episode.key})
            os.replace(tmp, target)
        return len(todo)

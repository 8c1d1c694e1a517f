"""Predictive features computed once by the frozen TVP, so policy epochs do not re-run it.

The TVP forward starts from random noise, so a cached feature is one draw: each window's noise
comes from a generator seeded with (seed, episode key, t), and the seed is recorded in the cache's
``cache.json`` together with the TVP's fingerprint and the feature shape. One safetensors file per
episode holds the features of the dataset's windows of that episode, (N, V, frames, C, S, S) in
float16, and their timesteps (N,): a dataset that keeps only some windows (``--window-stride``)
caches only those. Building is resumable: finished episodes are skipped, and each file is written
under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vpp.policy.data import PolicyWindowDataset, UnreadableEpisode
from vpp.tvp.features import predictive_features
from vpp.tvp.model import TextGuidedVideoPredictor

logger = logging.getLogger(__name__)


def tvp_fingerprint(tvp: TextGuidedVideoPredictor) -> str:
    digest = hashlib.sha256(json.dumps(tvp.config.to_dict(), sort_keys=True).encode())
    for module in (tvp.unet, tvp.vae, tvp.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def window_seed(seed: int, episode_key: str, t: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{episode_key}/{t}".encode()).digest()[:8], "little") & (2**63 - 1)


class FeatureCache:
    def __init__(self, root: str | Path, tvp: TextGuidedVideoPredictor, cameras: list[str], seed: int = 0) -> None:
        self.seed = seed
        fingerprint = tvp_fingerprint(tvp)
        self.folder = Path(root) / f"{fingerprint}-{'+'.join(cameras)}-seed{seed}"
        self.meta = {"tvp_fingerprint": fingerprint, "cameras": cameras, "seed": seed, "dtype": "float16"}

    def path(self, episode_key: str) -> Path:
        return self.folder / (hashlib.sha256(episode_key.encode()).hexdigest()[:24] + ".safetensors")

    def build(self, dataset: PolicyWindowDataset, tvp: TextGuidedVideoPredictor, batch_size: int = 8, progress: bool = True) -> int:
        """Computes the features of every episode not cached yet; returns how many it computed.
        An episode whose frames fail to decode is marked unreadable in ``dataset`` and skipped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "cache.json").write_text(json.dumps(self.meta, indent=2))
        windows_of: dict[int, list[int]] = {}
        for index, (e, _) in enumerate(dataset.windows):
            windows_of.setdefault(e, []).append(index)
        # episodes the dataset keeps no window of (--episodes-per-task) get no file
        todo = [e for e in windows_of if not self.path(dataset.episodes[e].key).is_file()]
        noise_shape = (len(dataset.cameras), tvp.config.num_frames, tvp.config.latent_channels, tvp.config.latent_size, tvp.config.latent_size)
        written = 0
        for e in tqdm(todo, desc="caching TVP features", disable=not progress):
            episode = dataset.episodes[e]
            hidden = tvp.encode_text([episode.instruction])[0]
            parts = []
            indices = windows_of[e]
            try:
                for start in range(0, len(indices), batch_size):
                    batch = indices[start : start + batch_size]
                    images = torch.stack([dataset.observation(i) for i in batch])
                    noise = torch.stack([
                        torch.randn(noise_shape, generator=torch.Generator().manual_seed(window_seed(self.seed, episode.key, dataset.windows[i][1])))
                        for i in batch
                    ])
                    text = hidden.expand(len(batch), -1, -1)
                    parts.append(predictive_features(tvp, images, text_hidden=text, noise=noise))
            except UnreadableEpisode as error:
                dataset.mark_unreadable(e, error)
                continue
            target = self.path(episode.key)
            tmp = target.with_suffix(".tmp")
            timesteps = torch.tensor([dataset.windows[i][1] for i in indices], dtype=torch.int64)
            tensors = {"features": torch.cat(parts).to(torch.float16).contiguous(), "timesteps": timesteps}
            save_file(tensors, tmp, metadata={"key": episode.key})
            os.replace(tmp, target)
            written += 1
        return written

    def read(self, episode_key: str, t: int) -> torch.Tensor:
        path = self.path(episode_key)
        if not path.is_file():
            raise KeyError(f"episode {episode_key} has no cached features in {self.folder}; build the cache first")
        with safe_open(path, framework="pt") as f:
            rows = (f.get_tensor("timesteps") == t).nonzero()
            if len(rows) != 1:
                raise KeyError(f"episode {episode_key}: no cached window at timestep {t} in {path}; it was built for other windows")
            row = int(rows[0])
            return f.get_slice("features")[row : row + 1][0].float()

    def features_for(self, dataset: PolicyWindowDataset, index: int) -> torch.Tensor:
        e, t = dataset.windows[index]
        return self.read(dataset.episodes[e].key, t)


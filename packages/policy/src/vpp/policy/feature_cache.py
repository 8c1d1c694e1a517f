"""Encoder features computed once by the frozen TVP, so policy epochs do not re-run it.

``encoder="tvp"`` caches the predictive features (one UNet pass); ``encoder="vae"`` caches the
static-encoder ablation's VAE latents, which are deterministic, so its ``seed`` plays no part.

The TVP forward starts from noise. Every window is computed from the same draw, the one seeded by
``seed`` (:func:`vpp.tvp.features.fixed_noise`), which is the draw a policy with fixed feature noise
and ``feature_seed == seed`` uses when it acts: the head trains on exactly the features it will be
given. (This cache drew fresh noise per window before: the head then trained on features that vary
with the draw as well as the image, and acted on yet another draw.) The seed is recorded in the
cache's ``cache.json`` together with the TVP's fingerprint. One safetensors file per episode
holds the features of the dataset's windows of that episode, (N, V, frames, C, S, S) in float16,
and their timesteps (N,): a dataset that keeps only some windows (``--window-stride``)
caches only those. Building is resumable: finished episodes are skipped, and each file is written
under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vpp.policy.data import PolicyEpisode, PolicyWindowDataset, UnreadableEpisodeError
from vpp.tvp.features import fixed_noise, predictive_features, static_features
from vpp.tvp.model import TextGuidedVideoPredictor

logger = logging.getLogger(__name__)


def tvp_fingerprint(tvp: TextGuidedVideoPredictor) -> str:
    digest = hashlib.sha256(json.dumps(tvp.config.to_dict(), sort_keys=True).encode())
    for module in (tvp.unet, tvp.vae, tvp.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    def __init__(
        self,
        root: str | Path,
        tvp: TextGuidedVideoPredictor,
        cameras: list[str],
        seed: int = 0,
        encoder: str = "tvp",
    ) -> None:
        if encoder not in ("tvp", "vae"):
            raise ValueError(f"encoder {encoder!r}: expected 'tvp' or 'vae'")
        self.seed, self.encoder = seed, encoder
        fingerprint = tvp_fingerprint(tvp)
        name = (
            f"{fingerprint}-{'+'.join(cameras)}-fixed{seed}"
            if encoder == "tvp"
            else f"{fingerprint}-{'+'.join(cameras)}-vae"
        )
        self.folder = Path(root) / name
        self.meta = {
            "tvp_fingerprint": fingerprint,
            "cameras": cameras,
            "encoder": encoder,
            "dtype": "float16",
        }
        if encoder == "tvp":
            self.meta.update(noise="fixed", seed=seed)

    def path(self, episode: PolicyEpisode) -> Path:
        """The episode's file. It is named by the episode's key (dataset folder name and index) and
        its content (instruction, actions, state): two datasets in folders of one name, or a folder
        collected again, get files of their own instead of each other's features."""
        digest = hashlib.sha256(episode.key.encode())
        digest.update(episode.instruction.encode())
        for array in (episode.actions, episode.state):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return self.folder / (digest.hexdigest()[:24] + ".safetensors")

    def build(
        self,
        dataset: PolicyWindowDataset,
        tvp: TextGuidedVideoPredictor,
        batch_size: int = 8,
        progress: bool = True,
    ) -> int:
        """Computes the features of every episode not cached yet; returns how many it computed.
        An episode whose frames fail to decode is marked unreadable in ``dataset`` and skipped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "cache.json").write_text(json.dumps(self.meta, indent=2))
        windows_of: dict[int, list[int]] = {}
        for index, (e, _) in enumerate(dataset.windows):
            windows_of.setdefault(e, []).append(index)
        # episodes the dataset keeps no window of (--episodes-per-task) get no file
        todo = [e for e in windows_of if not self.path(dataset.episodes[e]).is_file()]
        noise = fixed_noise(tvp, len(dataset.cameras), self.seed)
        written = 0
        for e in tqdm(todo, desc=f"caching {self.encoder.upper()} features", disable=not progress):
            episode = dataset.episodes[e]
            hidden = tvp.encode_text([episode.instruction])[0]
            parts = []
            indices = windows_of[e]
            try:
                for start in range(0, len(indices), batch_size):
                    batch = indices[start : start + batch_size]
                    images = torch.stack([dataset.observation(i) for i in batch])
                    if self.encoder == "vae":
                        parts.append(static_features(tvp, images))
                        continue
                    text = hidden.expand(len(batch), -1, -1)
                    parts.append(
                        predictive_features(
                            tvp, images, text_hidden=text, noise=noise.expand(len(batch), *noise.shape)
                        )
                    )
            except UnreadableEpisodeError as error:
                dataset.mark_unreadable(e, error)
                continue
            target = self.path(episode)
            tmp = target.with_suffix(".tmp")
            timesteps = torch.tensor([dataset.windows[i][1] for i in indices], dtype=torch.int64)
            tensors = {"features": torch.cat(parts).to(torch.float16).contiguous(), "timesteps": timesteps}
            save_file(tensors, tmp, metadata={"key": episode.key})
            os.replace(tmp, target)
            written += 1
        return written

    def read(self, episode: PolicyEpisode, t: int) -> torch.Tensor:
        path = self.path(episode)
        episode_key = episode.key
        if not path.is_file():
            raise KeyError(
                f"episode {episode_key} has no cached features in {self.folder}; build the cache first"
            )
        with safe_open(path, framework="pt") as f:
            rows = (f.get_tensor("timesteps") == t).nonzero()
            if len(rows) != 1:
                raise KeyError(
                    f"episode {episode_key}: no cached window at timestep {t} in {path}; it was built for other windows"
                )
            row = int(rows[0])
            return f.get_slice("features")[row : row + 1][0].float()

    def features_for(self, dataset: PolicyWindowDataset, index: int) -> torch.Tensor:
        e, t = dataset.windows[index]
        return self.read(dataset.episodes[e], t)

"""The Video Prediction Policy: a frozen TVP as vision encoder + the trainable policy head.

``encoder="tvp"`` (the paper) turns each observation into predictive features: one TVP forward
from noise per camera, batched over views. ``encoder="vae"`` is the paper's Stable-VAE ablation
(Table 3): the same TVP's VAE latents of the current frame, resampled by the Video Former to the
same number of tokens. The language token is the TVP text encoder's projected CLIP embedding.
Actions (and the optional proprioception) are normalised to [-1, 1] with bounds from the
training data, saved with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vpp.data.config import Config, ConfigError, config_field
from vpp.data.errors import ObservationError
from vpp.policy.config import PolicyHeadConfig, VPPConfig
from vpp.policy.data import UnreadableEpisodeError
from vpp.policy.normalization import ActionNormalizer
from vpp.policy.policy_head import PolicyHead
from vpp.tvp.config import TVPConfig
from vpp.tvp.data.mixture import resize_frames
from vpp.tvp.features import fixed_noise, predictive_features, static_features
from vpp.tvp.model import TextGuidedVideoPredictor

logger = logging.getLogger(__name__)

POLICY_CONFIG = "config.json"
POLICY_WEIGHTS = "model.safetensors"
POLICY_FORMAT_VERSION = 2
# The layout before version 2: five JSON files, head weights and a TVP model folder.
LEGACY_POLICY_CONFIG = "vpp_policy.json"


@dataclass
class SavedPolicyConfig(Config):
    """``config.json`` of a saved policy: every component's config and the normalisation bounds.
    The weights (TVP, head, feature statistics) are ``model.safetensors`` beside it."""

    policy: VPPConfig = config_field(help="cameras, actions and feature options of the policy")
    head: PolicyHeadConfig = config_field(help="the Video Former, DiT head and action diffusion")
    tvp: TVPConfig = config_field(help="the frozen TVP that encodes observations")
    action_normalizer: dict[str, Any] = config_field(
        help="ActionNormalizer.to_dict() of the training actions"
    )
    state_normalizer: dict[str, Any] | None = config_field(
        None, help="ActionNormalizer.to_dict() of the training states; None for a policy without state"
    )
    format_version: int = config_field(POLICY_FORMAT_VERSION, help="layout of the saved folder")

    def validate(self) -> None:
        if self.format_version != POLICY_FORMAT_VERSION:
            raise ConfigError(f"format_version={self.format_version}; expected {POLICY_FORMAT_VERSION}")
        if (self.policy.state_dim is None) != (self.state_normalizer is None):
            raise ConfigError(
                f"policy.state_dim={self.policy.state_dim} with state_normalizer "
                f"{'absent' if self.state_normalizer is None else 'present'}; expected one exactly "
                "when state_dim is set"
            )


def convert_legacy_policy(old: str | Path, new: str | Path) -> Path:
    """Rewrites a policy folder of the old five-file layout (``vpp_policy.json``,
    ``policy_head.json``, ``head.safetensors``, normalizer JSON files and a ``tvp/`` model folder)
    as ``config.json`` + ``model.safetensors``; the weights and bounds are copied exactly."""
    old = Path(old)
    if not (old / LEGACY_POLICY_CONFIG).is_file():
        raise FileNotFoundError(f"no {LEGACY_POLICY_CONFIG} in {old}: not a policy folder in the old layout")
    return VideoPredictionPolicy._from_legacy_folder(old).save_pretrained(new)


class VideoPredictionPolicy(nn.Module):
    def __init__(
        self,
        config: VPPConfig,
        tvp: TextGuidedVideoPredictor,
        head: PolicyHead,
        action_normalizer: ActionNormalizer,
        state_normalizer: ActionNormalizer | None = None,
    ) -> None:
        super().__init__()
        if (config.state_dim is None) != (state_normalizer is None):
            raise ValueError("a state normalizer is needed exactly when state_dim is set")
        self.config = config
        self.tvp = tvp.eval().requires_grad_(False)
        self.head = head
        self.action_normalizer = action_normalizer
        self.state_normalizer = state_normalizer
        self._text_embeddings: dict[str, torch.Tensor] = {}

    # -- construction -----------------------------------------------------------------------

    @staticmethod
    def head_config(
        tvp: TextGuidedVideoPredictor, config: VPPConfig, preset: str = "small"
    ) -> PolicyHeadConfig:
        """A head preset fitted to the TVP's feature shape, its text embedding and the task."""
        tvp_cfg = tvp.config
        video_former: dict[str, Any] = {"feature_position_embedding": config.feature_position_embedding}
        views = len(config.cameras)
        if config.encoder == "tvp":
            video_former.update(input_channels=tvp_cfg.feature_channels, num_frames=tvp_cfg.feature_frames)
            shape = [
                views,
                tvp_cfg.feature_frames,
                tvp_cfg.feature_channels,
                tvp_cfg.feature_size,
                tvp_cfg.feature_size,
            ]
        else:
            # one frame of VAE latents, with as many queries as the TVP variant has tokens
            tokens = PolicyHeadConfig.preset(preset).video_former.num_tokens
            video_former.update(
                input_channels=tvp_cfg.latent_channels, num_frames=1, queries_per_frame=tokens
            )
            shape = [views, 1, tvp_cfg.latent_channels, tvp_cfg.latent_size, tvp_cfg.latent_size]
        return PolicyHeadConfig.preset(
            preset,
            video_former=video_former,
            dit={"action_dim": config.action_dim, "chunk": config.chunk},
            lang_dim=int(tvp_cfg.text_encoder.get("projection_dim", tvp_cfg.text_hidden_size)),
            state_dim=config.state_dim,
            state_dropout=config.state_dropout,
            feature_shape=shape if config.standardize_features else None,
        )

    @classmethod
    def build(
        cls,
        tvp: TextGuidedVideoPredictor,
        config: VPPConfig,
        actions: np.ndarray,
        states: np.ndarray | None = None,
        head_preset: str = "small",
        seed: int | None = None,
    ) -> VideoPredictionPolicy:
        """A new policy with a fresh head; normalisation bounds from the training ``actions``.
        With ``seed`` the head's initial weights depend on it alone, not on the global RNG."""
        head_config = cls.head_config(tvp, config, head_preset)
        if seed is None:
            head = PolicyHead(head_config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                head = PolicyHead(head_config)
        state_normalizer = (
            ActionNormalizer.from_actions(states, config.normalization)
            if config.state_dim is not None
            else None
        )
        return cls(
            config, tvp, head, ActionNormalizer.from_actions(actions, config.normalization), state_normalizer
        )

    @torch.no_grad()
    def fit_feature_statistics(
        self,
        windows: Any,
        cache: Any = None,
        max_windows: int = 2048,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = True,
    ) -> int:
        """Sets the head's per-element feature mean and spread from (at most ``max_windows``, drawn
        with ``seed``) training windows, read from ``cache`` (a FeatureCache) or encoded from their
        images; windows of an unreadable episode are marked so in ``windows`` and skipped. A spread
        below ``config.feature_spread_floor`` times the median spread is raised to it, so that an
        element that barely moves in training cannot blow up at test time. Returns the windows used."""
        from tqdm.auto import tqdm

        if not self.config.standardize_features:
            raise ValueError("this policy was built with standardize_features=False")
        # windows of episodes already found unreadable (by the cache's build, say) are left out
        readable = np.array(
            [i for i, (e, _) in enumerate(windows.windows) if e not in windows.unreadable], dtype=np.int64
        )
        if len(readable) == 0:
            raise ValueError("no readable training windows to measure feature statistics on")
        indices = (
            readable
            if len(readable) <= max_windows
            else np.sort(np.random.default_rng(seed).choice(readable, max_windows, replace=False))
        )
        total = total_sq = None
        used = 0
        generator = torch.Generator().manual_seed(seed)
        for start in tqdm(
            range(0, len(indices), batch_size), desc="feature statistics", disable=not progress
        ):
            batch = [int(i) for i in indices[start : start + batch_size]]
            if cache is not None:
                features = torch.stack([cache.features_for(windows, i) for i in batch])
            else:
                items = []
                for i in batch:
                    try:
                        items.append(windows[i])
                    except UnreadableEpisodeError as error:  # logged and skipped, as training does
                        windows.mark_unreadable(windows.windows[i][0], error)
                if not items:
                    continue
                images = torch.stack([item["images"] for item in items])
                features = self.encode(images, [item["instruction"] for item in items], generator)[0]
            features = features.double()
            used += len(features)
            total = features.sum(0) if total is None else total + features.sum(0)
            total_sq = (features**2).sum(0) if total_sq is None else total_sq + (features**2).sum(0)
        if used == 0:
            raise ValueError("no readable training window to measure feature statistics on")
        n = used
        mean = total / n
        std = (total_sq / n - mean**2).clamp_min(0).sqrt()
        floor = max(float(std.median()) * self.config.feature_spread_floor, 1e-6)
        self.head.set_feature_statistics(mean.float(), std.clamp_min(floor).float())
        logger.info(
            "feature statistics from %d windows: median spread %.4g, %d elements raised to the floor %.4g",
            n,
            float(std.median()),
            int((std < floor).sum()),
            floor,
        )
        return n

    def save_pretrained(self, folder: str | Path) -> Path:
        """Writes ``model.safetensors`` (TVP and head weights, feature statistics included) and
        ``config.json`` (:class:`SavedPolicyConfig`), the latter last: its presence marks a complete
        folder. A TVP with a tokenizer other than the built-in one keeps its files in ``tokenizer/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tvp.save_tokenizer(folder)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / POLICY_WEIGHTS
        )
        SavedPolicyConfig(
            policy=self.config,
            head=self.head.config,
            tvp=self.tvp.config,
            action_normalizer=self.action_normalizer.to_dict(),
            state_normalizer=None if self.state_normalizer is None else self.state_normalizer.to_dict(),
        ).save(folder / POLICY_CONFIG)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VideoPredictionPolicy:
        """Loads a folder written by :meth:`save_pretrained`, or (with a warning) one in the
        five-file layout written before it, which :func:`convert_legacy_policy` rewrites."""
        folder = Path(folder)
        if not (folder / POLICY_CONFIG).is_file() and (folder / LEGACY_POLICY_CONFIG).is_file():
            logger.warning(
                "%s is a policy folder in the old layout (vpp_policy.json, policy_head.json, normalizer JSON, tvp/); "
                "`vpp-policy convert %s NEW` rewrites it as config.json + model.safetensors",
                folder,
                folder,
            )
            return cls._from_legacy_folder(folder)
        if not (folder / POLICY_CONFIG).is_file():
            raise FileNotFoundError(f"no {POLICY_CONFIG} in {folder}: not a saved VideoPredictionPolicy")
        saved = SavedPolicyConfig.load(folder / POLICY_CONFIG)
        # Every weight is in the file: the TVP is built without initial weights, the small head
        # with them under a forked RNG, so that loading leaves the global RNG as it was.
        tvp = TextGuidedVideoPredictor.without_weights(saved.tvp, folder)
        with torch.random.fork_rng(devices=[]):
            head = PolicyHead(saved.head)
        state = saved.state_normalizer
        policy = cls(
            saved.policy,
            tvp,
            head,
            ActionNormalizer.from_dict(saved.action_normalizer),
            None if state is None else ActionNormalizer.from_dict(state),
        )
        policy.load_state_dict(load_file(folder / POLICY_WEIGHTS), strict=True, assign=True)
        return policy

    @classmethod
    def _from_legacy_folder(cls, folder: Path) -> VideoPredictionPolicy:
        config = VPPConfig.load(folder / LEGACY_POLICY_CONFIG)
        head = PolicyHead(PolicyHeadConfig.load(folder / "policy_head.json"))
        head.load_state_dict(load_file(folder / "head.safetensors"))
        state_path = folder / "state_normalizer.json"
        return cls(
            config,
            TextGuidedVideoPredictor.from_pretrained(folder / "tvp"),
            head,
            ActionNormalizer.load(folder / "action_normalizer.json"),
            ActionNormalizer.load(state_path) if state_path.is_file() else None,
        )

    # -- observations -> conditioning -------------------------------------------------------

    def feature_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if self.config.feature_noise == "random":
            if generator is None:
                return None
            c = self.tvp.config
            shape = (
                batch,
                len(self.config.cameras),
                c.feature_frames,
                c.latent_channels,
                c.latent_size,
                c.latent_size,
            )
            return torch.randn(shape, generator=generator)
        noise = fixed_noise(self.tvp, len(self.config.cameras), self.config.feature_seed)
        return noise.expand(batch, *noise.shape)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, instructions: Sequence[str], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, V, 3, H, W) in [-1, 1] -> (visual features, language embedding (B, D))."""
        hidden, pooled = self.tvp.encode_text(instructions)
        if self.config.encoder == "vae":
            features = static_features(self.tvp, images)
        else:
            noise = self.feature_noise(images.shape[0], generator)
            features = predictive_features(
                self.tvp, images, text_hidden=hidden, generator=generator, noise=noise
            )
        return features, pooled

    def language(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, D) text embeddings. The text encoder is frozen, so each instruction is encoded once
        and reused: training on cached features would otherwise spend a fifth of every step here."""
        missing = [text for text in dict.fromkeys(instructions) if text not in self._text_embeddings]
        if missing:
            for text, pooled in zip(missing, self.tvp.encode_text(missing)[1], strict=True):
                self._text_embeddings[text] = pooled
        device = next(self.head.parameters()).device
        return torch.stack([self._text_embeddings[text] for text in instructions]).to(device)

    def _state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        if self.state_normalizer is None:
            return None
        if state is None:
            raise ObservationError(f"this policy needs a {self.config.state_dim}-dim state")
        # normalised in float64 (the statistics are float64), then handed over in the head's own
        # device and dtype: a bf16 or GPU head would otherwise get a float32 CPU state
        head = next(self.head.parameters())
        return self.state_normalizer.normalize(state.double()).to(head.device, head.dtype)

    # -- training -----------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The EDM loss of a batch from PolicyWindowDataset (``features`` cached, or ``images``)."""
        if "features" in batch:
            features, lang = batch["features"], self.language(batch["instruction"])
        else:
            features, lang = self.encode(batch["images"], batch["instruction"], generator)
        actions = self.action_normalizer.normalize(batch["actions"].double()).float()
        return self.head.loss(features, lang, actions, self._state(batch.get("state")), generator)

    # -- acting -------------------------------------------------------------------------------

    def observation_tensors(self, observation: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = []
        for camera in self.config.cameras:
            if camera not in observation:
                raise ObservationError(f"observation has no camera {camera!r}; it has {sorted(observation)}")
            frame = np.asarray(observation[camera])
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ObservationError(
                    f"camera {camera!r}: image {frame.shape} {frame.dtype}; expected (H, W, 3) uint8"
                )
            images.append(frame)
        sizes = {im.shape for im in images}
        stacked = np.stack(images) if len(sizes) == 1 else None
        pixels = (
            resize_frames(stacked, self.tvp.config.image_size)
            if stacked is not None
            else torch.stack([resize_frames(im[None], self.tvp.config.image_size)[0] for im in images])
        )
        state = None
        if self.config.state_dim is not None:
            if "state" not in observation:
                raise ObservationError(
                    f"observation has no 'state'; this policy needs {self.config.state_dim} values"
                )
            raw = np.asarray(observation["state"], dtype=np.float64)
            if raw.shape != (self.config.state_dim,) or not np.isfinite(raw).all():
                raise ObservationError(f"state {raw!r}; expected {self.config.state_dim} finite values")
            state = torch.from_numpy(raw)[None]
        return pixels[None], state

    @torch.no_grad()
    def predict_action_chunk(
        self, observation: Mapping[str, Any], instruction: str, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """{camera: uint8 (H, W, 3), "state": (S,)} + instruction -> actions (chunk, action_dim)."""
        images, state = self.observation_tensors(observation)
        features, lang = self.encode(images, [instruction], generator)
        normalized = self.head.sample(features, lang, self._state(state), generator=generator)
        return self.action_normalizer.denormalize(normalized[0].double()).float().cpu().numpy()

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        return self.predict_action_chunk(observation, instruction)

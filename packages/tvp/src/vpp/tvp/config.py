"""Configuration of the text-guided video predictor (TVP) and its presets.

One dataclass tree per model, saved as ``tvp_config.json`` beside the safetensors weights. The
``unet``, ``vae`` and ``text_encoder`` dicts are passed verbatim to diffusers'
``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder`` and transformers'
``CLIPTextConfig``, so a preset can describe any size those classes accept.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONFIG_NAME = "tvp_config.json"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent."""


@dataclass
class EDMConfig:
    """EDM v-parameterised training noise and sampling (as Stable Video Diffusion)."""

    p_mean: float = 0.7
    p_std: float = 1.6
    text_dropout: float = 0.05
    num_sampling_steps: int = 30
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    cfg_min: float = 1.0
    cfg_max: float = 7.5


@dataclass
class FeatureConfig:
    """Which up-sampling blocks form the predictive representation, and at what noise level.

    ``blocks=None`` aggregates every up-block (the paper); the official code keeps ``(0, 1)``.
    ``size`` is the common spatial size each block is interpolated to; ``None`` picks half the
    latent size (16x16 for 32x32 latents, the official token count).
    The noise level is step ``schedule_index`` of a ``schedule_steps``-step Karras schedule
    (the official code: index 0 of 20, sigma = sigma_max).
    ``fps_id=None`` reuses the training value; the official code uses 4 here and 7 in training.
    """

    blocks: tuple[int, ...] | None = None
    size: int | None = None
    schedule_steps: int = 20
    schedule_index: int = 0
    fps_id: int | None = None
    interpolation: Literal["bilinear", "nearest"] = "bilinear"


@dataclass
class TVPConfig:
    image_size: int
    num_frames: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    tokenizer: str = "bytes"
    text_max_tokens: int = 20
    text_to_unet: Literal["tile", "linear"] = "tile"
    fps_id: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.0
    edm: EDMConfig = field(default_factory=EDMConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    preset: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.edm, dict):
            self.edm = EDMConfig(**self.edm)
        if isinstance(self.features, dict):
            feats = dict(self.features)
            if feats.get("blocks") is not None:
                feats["blocks"] = tuple(feats["blocks"])
            self.features = FeatureConfig(**feats)
        if self.text_to_unet not in ("tile", "linear"):
            raise ConfigError(f"text_to_unet={self.text_to_unet!r}; expected 'tile' or 'linear'")
        if self.text_to_unet == "tile":
            hidden = self.text_hidden_size
            cross = self.cross_attention_dim
            if cross % hidden:
                raise ConfigError(
                    f"text_to_unet='tile' needs the UNet cross_attention_dim ({cross}) to be a "
                    f"multiple of the text hidden size ({hidden}); use text_to_unet='linear'"
                )
        if self.image_size % self.vae_downsample:
            raise ConfigError(
                f"image_size={self.image_size} is not divisible by the VAE's downsampling "
                f"factor {self.vae_downsample}"
            )
        unet_downsample = 2 ** (self.num_up_blocks - 1)
        if self.latent_size % unet_downsample:
            raise ConfigError(
                f"image_size={self.image_size} gives {self.latent_size}x{self.latent_size} latents, which the UNet "
                f"cannot halve {self.num_up_blocks - 1} times; use a multiple of "
                f"{self.vae_downsample * unet_downsample}"
            )
        positions = int(self.text_encoder.get("max_position_embeddings", 77))
        if not 2 < self.text_max_tokens <= positions:
            raise ConfigError(
                f"text_max_tokens={self.text_max_tokens}; expected 3..{positions} (the text encoder's positions)"
            )
        if self.num_frames < 1:
            raise ConfigError(f"num_frames={self.num_frames}; expected at least 1")
        blocks = self.features.blocks
        if blocks is not None:
            bad = [b for b in blocks if not 0 <= b < self.num_up_blocks]
            if bad or not blocks:
                raise ConfigError(
                    f"features.blocks={blocks}; expected a non-empty subset of "
                    f"0..{self.num_up_blocks - 1}"
                )
        if not 0 <= self.features.schedule_index < self.features.schedule_steps:
            raise ConfigError(
                f"features.schedule_index={self.features.schedule_index} outside "
                f"0..{self.features.schedule_steps - 1}"
            )

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.get("hidden_size", 512))

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.get("cross_attention_dim", 1024))

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.get("block_out_channels", (64,))) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_downsample

    @property
    def latent_channels(self) -> int:
        return int(self.vae.get("latent_channels", 4))

    @property
    def num_up_blocks(self) -> int:
        return len(self.unet.get("block_out_channels", (320, 640, 1280, 1280)))

    @property
    def feature_blocks(self) -> tuple[int, ...]:
        if self.features.blocks is None:
            return tuple(range(self.num_up_blocks))
        return tuple(self.features.blocks)

    @property
    def feature_size(self) -> int:
        return self.features.size or max(1, self.latent_size // 2)

    @property
    def feature_channels(self) -> int:
        """Channels of the stacked up-block features (up-block i outputs reversed(block_out)[i])."""
        up_channels = list(reversed(self.unet.get("block_out_channels", (320, 640, 1280, 1280))))
        return sum(up_channels[i] for i in self.feature_blocks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TVPConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TVP config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, folder: str | Path) -> TVPConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
        return cls.from_dict(json.loads(path.read_text()))


def _svd_unet(**overrides: Any) -> dict[str, Any]:
    unet: dict[str, Any] = dict(
        in_channels=8,
        out_channels=4,
        down_block_types=[
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ],
        up_block_types=[
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ],
        block_out_channels=[320, 640, 1280, 1280],
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=[5, 10, 20, 20],
        num_frames=16,
    )
    unet.update(overrides)
    return unet


def _clip_text(**overrides: Any) -> dict[str, Any]:
    text: dict[str, Any] = dict(
        vocab_size=49408,
        hidden_size=512,
        intermediate_size=2048,
        projection_dim=512,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    text.update(overrides)
    return text


# The byte-level tokenizer (see text.py) has 256 byte symbols x 2 (word-final or not) + 2 specials.
BYTES_VOCAB_SIZE = 514
# One token a letter: at CLIP's 20, 50 MetaWorld instructions truncate to 43 distinct sequences
# (door-lock / door-unlock...). The longest of them is 48 tokens; 64 keeps them whole with room to
# spare, and costs the small preset's feature pass ~25% over 20 tokens where 77 cost ~35%
# (the UNet's cross-attention keys grow with it).
BYTES_TEXT_TOKENS = 64


def _byte_level_clip_text(hidden_size: int, intermediate_size: int, num_attention_heads: int) -> dict[str, Any]:
    """A small 2-layer CLIP text encoder over the built-in byte-level vocabulary."""
    return _clip_text(
        vocab_size=BYTES_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=BYTES_TEXT_TOKENS,
        bos_token_id=BYTES_VOCAB_SIZE - 2,
        eos_token_id=BYTES_VOCAB_SIZE - 1,
        pad_token_id=BYTES_VOCAB_SIZE - 1,
    )


def preset(name: str) -> TVPConfig:
    """Built-in sizes. ``tiny`` for unit tests, ``small`` for CPU training, ``paper`` for SVD."""
    if name == "tiny":
        return TVPConfig(
            preset="tiny",
            image_size=32,
            num_frames=8,
            unet=_svd_unet(
                down_block_types=["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
                up_block_types=["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
                block_out_channels=[32, 64],
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=24,
                layers_per_block=1,
                cross_attention_dim=32,
                num_attention_heads=[2, 4],
                num_frames=8,
            ),
            vae=dict(
                block_out_channels=[32, 32],
                down_block_types=["DownEncoderBlock2D"] * 2,
                layers_per_block=1,
                latent_channels=4,
                sample_size=32,
            ),
            text_encoder=_byte_level_clip_text(hidden_size=32, intermediate_size=64, num_attention_heads=2),
            text_max_tokens=BYTES_TEXT_TOKENS,
            features=FeatureConfig(schedule_steps=20),
        )
    if name == "small":
        return TVPConfig(
            preset="small",
            image_size=64,
            num_frames=8,
            unet=_svd_unet(
                down_block_types=[
                    "CrossAttnDownBlockSpatioTemporal",
                    "CrossAttnDownBlockSpatioTemporal",
                    "DownBlockSpatioTemporal",
                ],
                up_block_types=[
                    "UpBlockSpatioTemporal",
                    "CrossAttnUpBlockSpatioTemporal",
                    "CrossAttnUpBlockSpatioTemporal",
                ],
                block_out_channels=[64, 128, 128],
                addition_time_embed_dim=32,
                projection_class_embeddings_input_dim=96,
                layers_per_block=1,
                cross_attention_dim=128,
                num_attention_heads=[2, 4, 4],
                num_frames=8,
            ),
            vae=dict(
                block_out_channels=[32, 64, 64],
                down_block_types=["DownEncoderBlock2D"] * 3,
                layers_per_block=1,
                latent_channels=4,
                sample_size=64,
            ),
            text_encoder=_byte_level_clip_text(hidden_size=64, intermediate_size=256, num_attention_heads=4),
            text_max_tokens=BYTES_TEXT_TOKENS,
        )
    if name == "paper":
        return TVPConfig(
            preset="paper",
            image_size=256,
            num_frames=16,
            unet=_svd_unet(),
            vae=dict(
                block_out_channels=[128, 256, 512, 512],
                down_block_types=["DownEncoderBlock2D"] * 4,
                layers_per_block=2,
                latent_channels=4,
                sample_size=768,
                scaling_factor=0.18215,
            ),
            text_encoder=_clip_text(),
        )
    raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")


PRESETS = ("tiny", "small", "paper")

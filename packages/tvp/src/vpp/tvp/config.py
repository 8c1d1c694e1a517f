"""Configuration of the text-guided video predictor (TVP) and its presets.

One :class:`vpp.data.config.Config` tree per model, saved as ``config.json`` beside the model's
``model.safetensors``. The ``unet``, ``vae`` and ``text_encoder`` dicts are passed verbatim to
diffusers' ``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder`` and
transformers' ``CLIPTextConfig``, so a preset can describe any size those classes accept.
Presets: ``TVPConfig.preset("tiny" | "small" | "paper")``; the training run's options are
:class:`TrainConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vpp.data.config import Config, ConfigError, config_field

__all__ = [
    "CONFIG_NAME",
    "ConfigError",
    "EDMConfig",
    "FeatureConfig",
    "TVPConfig",
    "TrainConfig",
    "TrainingLoopConfig",
]

CONFIG_NAME = "config.json"


@dataclass
class EDMConfig(Config):
    """EDM v-parameterised training noise and sampling (as Stable Video Diffusion)."""

    p_mean: float = config_field(
        0.7, help="mean of log sigma of the training noise (sigma = exp(p_mean + p_std N))"
    )
    p_std: float = config_field(1.6, help="spread of log sigma of the training noise")
    text_dropout: float = config_field(
        0.05, help="probability of training a video without its text (for CFG)"
    )
    num_sampling_steps: int = config_field(30, help="Euler steps of video generation")
    sigma_min: float = config_field(0.002, help="smallest noise level of the sampling schedule")
    sigma_max: float = config_field(700.0, help="largest noise level of the sampling schedule")
    rho: float = config_field(7.0, help="Karras schedule exponent")
    cfg_min: float = config_field(1.0, help="classifier-free guidance scale at the first frame")
    cfg_max: float = config_field(
        7.5, help="classifier-free guidance scale at the last frame (ramped linearly)"
    )

    def validate(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"edm sigma range [{self.sigma_min}, {self.sigma_max}]; expected 0 < sigma_min < sigma_max"
            )
        if self.p_std <= 0 or self.rho <= 0:
            raise ConfigError(f"edm.p_std={self.p_std}, edm.rho={self.rho}; expected both > 0")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ConfigError(f"edm.text_dropout={self.text_dropout}; expected a probability in [0, 1)")
        if self.num_sampling_steps < 1:
            raise ConfigError(f"edm.num_sampling_steps={self.num_sampling_steps}; expected >= 1")


@dataclass
class FeatureConfig(Config):
    """Which up-sampling blocks form the predictive representation, and at what noise level.

    The noise level is step ``schedule_index`` of a ``schedule_steps``-step Karras schedule
    (the official code: index 0 of 20, sigma = sigma_max).
    """

    blocks: tuple[int, ...] | None = config_field(
        None,
        help="up-blocks whose outputs are stacked; None: every up-block (the paper), the official code keeps (0, 1)",
    )
    size: int | None = config_field(
        None,
        help="common spatial size each block is interpolated to; None: half the latent size (the official token "
        "count)",
    )
    schedule_steps: int = config_field(
        20, help="steps of the Karras schedule the feature noise level is taken from"
    )
    schedule_index: int = config_field(0, help="step of that schedule whose sigma the feature pass uses")
    fps_id: int | None = config_field(
        None,
        help="fps conditioning of the feature pass; None reuses the training value (the official code uses 4)",
    )
    interpolation: Literal["bilinear", "nearest"] = config_field(
        "bilinear", help="how blocks are resized to one size"
    )
    frames: int | None = config_field(
        None,
        help="frames the feature pass runs (the first conditioned on the current frame, as in training); None: the "
        "TVP's num_frames. The UNet's work is linear in it: fewer frames, a cheaper pass and a shorter predicted "
        "horizon",
    )

    def validate(self) -> None:
        if self.blocks is not None and not self.blocks:
            raise ConfigError("features.blocks=(); expected None (every up-block) or a non-empty tuple")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"features.size={self.size}; expected None or >= 1")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"features.frames={self.frames}; expected None or >= 1")
        if not 0 <= self.schedule_index < self.schedule_steps:
            raise ConfigError(
                f"features.schedule_index={self.schedule_index} outside 0..{self.schedule_steps - 1}"
            )


@dataclass
class TVPConfig(Config):
    """Sizes, conditioning and noise of one text-guided video predictor (see the module docstring)."""

    image_size: int = config_field(help="frame side in pixels (a multiple of the VAE and UNet downsampling)")
    num_frames: int = config_field(help="frames per predicted clip, the first one given")
    unet: dict[str, Any] = config_field(
        help="keyword arguments of diffusers' UNetSpatioTemporalConditionModel"
    )
    vae: dict[str, Any] = config_field(help="keyword arguments of diffusers' AutoencoderKLTemporalDecoder")
    text_encoder: dict[str, Any] = config_field(help="keyword arguments of transformers' CLIPTextConfig")
    tokenizer: str = config_field(
        "bytes", help="'bytes' (the built-in byte-level tokenizer) or a CLIP tokenizer folder"
    )
    text_max_tokens: int = config_field(20, help="tokens per instruction (CLIP's 20 in the paper)")
    text_to_unet: Literal["tile", "linear"] = config_field(
        "tile",
        help="how text hidden states reach the UNet's cross-attention width: tiled, or a trained projection",
    )
    fps_id: int = config_field(7, help="SVD's fps conditioning in training")
    motion_bucket_id: int = config_field(127, help="SVD's motion bucket conditioning")
    noise_aug_strength: float = config_field(0.0, help="SVD's noise augmentation of the first-frame latent")
    edm: EDMConfig = config_field(default_factory=EDMConfig, help="training noise and sampling")
    features: FeatureConfig = config_field(
        default_factory=FeatureConfig, help="the predictive representation"
    )
    preset_name: str | None = config_field(
        None, help="the preset this config was built from, if any (a record only)"
    )

    # ``preset`` names the constructor of a built-in config
    renamed_keys: ClassVar[Mapping[str, str]] = {"preset": "preset_name"}

    def validate(self) -> None:
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
        if self.features.frames is not None and self.features.frames > self.num_frames:
            raise ConfigError(
                f"features.frames={self.features.frames}; expected at most num_frames={self.num_frames} (the clip "
                "length the TVP was trained on)"
            )
        blocks = self.features.blocks
        if blocks is not None:
            bad = [b for b in blocks if not 0 <= b < self.num_up_blocks]
            if bad:
                raise ConfigError(
                    f"features.blocks={blocks}; expected a non-empty subset of 0..{self.num_up_blocks - 1}"
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
    def feature_frames(self) -> int:
        """Frames of the predictive features (and of the feature pass's noise)."""
        return self.features.frames or self.num_frames

    @property
    def feature_size(self) -> int:
        return self.features.size or max(1, self.latent_size // 2)

    @property
    def feature_channels(self) -> int:
        """Channels of the stacked up-block features (up-block i outputs reversed(block_out)[i])."""
        up_channels = list(reversed(self.unet.get("block_out_channels", (320, 640, 1280, 1280))))
        return sum(up_channels[i] for i in self.feature_blocks)


@dataclass
class TrainingLoopConfig(Config):
    """What the training loop of :mod:`vpp.tvp.trainer` reads, for the TVP's run and the policy's:
    each run's config adds its optimiser's fields and may change a default here."""

    output_dir: str = config_field(help="run folder: checkpoints, metrics, loss curve and the trained model/")
    max_steps: int = config_field(1000, help="optimizer steps")
    batch_size: int = config_field(6, help="samples per step and process")
    max_grad_norm: float = config_field(1.0, help="gradient clipping norm")
    mixed_precision: Literal["no", "fp16", "bf16"] = config_field("no", help="accelerate's mixed precision")
    gradient_accumulation_steps: int = config_field(1, help="micro-batches per optimizer step")
    checkpoint_every: int = config_field(500, help="steps between resumable checkpoints")
    keep_checkpoints: int = config_field(2, help="newest checkpoints kept")
    log_every: int = config_field(10, help="steps between metrics lines")
    seed: int = config_field(0, help="seed of a new model's initial weights, the data sampling and the noise")
    num_workers: int = config_field(0, help="data loader worker processes")

    def validate(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm}; expected > 0")
        if self.keep_checkpoints < 0 or self.num_workers < 0:
            raise ConfigError(
                f"keep_checkpoints={self.keep_checkpoints}, num_workers={self.num_workers}; expected >= 0"
            )


@dataclass
class TrainConfig(TrainingLoopConfig):
    """The TVP run: the loop's options and the UNet's optimiser (the model's own config is TVPConfig)."""

    learning_rate: float = config_field(5e-6, help="AdamW learning rate")
    weight_decay: float = config_field(0.0, help="AdamW weight decay")
    adam_betas: tuple[float, float] = config_field((0.9, 0.999), help="AdamW betas")
    lr_schedule: Literal["constant", "constant_with_warmup", "cosine"] = config_field(
        "constant", help="diffusers' learning-rate schedule"
    )
    warmup_steps: int = config_field(0, help="warm-up steps of the schedule")
    gradient_checkpointing: bool = config_field(False, help="recompute UNet activations in the backward pass")

    def validate(self) -> None:
        super().validate()
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError(
                f"learning_rate={self.learning_rate}, weight_decay={self.weight_decay}, warmup_steps="
                f"{self.warmup_steps}; expected learning_rate > 0 and the others >= 0"
            )


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


def _byte_level_clip_text(
    hidden_size: int, intermediate_size: int, num_attention_heads: int
) -> dict[str, Any]:
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


@TVPConfig.register_preset("tiny")
def _tiny() -> TVPConfig:
    """Unit tests: a forward pass in well under a second on 2 cores."""
    return TVPConfig(
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


@TVPConfig.register_preset("small")
def _small() -> TVPConfig:
    """CPU-trainable end to end on MetaWorld."""
    return TVPConfig(
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


@TVPConfig.register_preset("paper")
def _paper() -> TVPConfig:
    """Stable Video Diffusion's sizes (1.5 B UNet, 16 x 256 x 256) with CLIP's text encoder."""
    return TVPConfig(
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

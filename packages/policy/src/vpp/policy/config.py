"""Configs of the policy's neural core: Video Former, DiT action head, action diffusion.

One :class:`vpp.data.config.Config` per component, gathered in :class:`PolicyHeadConfig`, which
is saved as JSON beside the safetensors weights. Presets (``PolicyHeadConfig.preset(name)``):

- ``tiny``: unit tests; sized to the ``tiny`` TVP preset's features (8 frames, 96 channels,
  32-d text embedding).
- ``small``: CPU-trainable; sized to the ``small`` TVP preset (8 frames, 320 channels, 64-d text).
- ``paper``: the published sizes (d 384, Video Former 6 layers with 16 x 14 queries, DiT 4 + 4,
  8 heads, dropouts 0.3 / 0.1 / 0.05, CLIP 512-d text). The default input channels are the
  ``paper`` TVP preset's 3520 (all up-blocks aggregated, as the paper describes); the official code
  keeps only the first two up-blocks and feeds 2560 channels:
  ``PolicyHeadConfig.preset("paper", video_former={"input_channels": 2560})`` for it.

Where the official code differs from the paper the difference is a named option whose default is
the paper's reading: ``DiTHeadConfig.decoder_causal_cross_attention`` and
``decoder_causal_self_attention`` (both ``True`` in the official code) and
``DiffusionConfig.eval_sigma_min`` (1.0 in the official evaluation, 0.001 in training).

Options this project adds, off by default: ``VideoFormerConfig.feature_position_embedding``
(position of each feature token; the official Video Former has none) and
``PolicyHeadConfig.state_dropout`` (drops the proprioception token in training so the head
must use the image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vpp.data.config import Config, ConfigError, config_field
from vpp.tvp.config import TrainingLoopConfig

__all__ = [
    "ConfigError",
    "DiTHeadConfig",
    "DiffusionConfig",
    "InputShapeError",
    "PolicyHeadConfig",
    "PolicyTrainConfig",
    "VPPConfig",
    "VideoFormerConfig",
]


class InputShapeError(ValueError):
    """A tensor given to the policy head does not have the shape its config expects."""


@dataclass
class VideoFormerConfig(Config):
    """Compresses (V views x h x w) tokens per frame into ``queries_per_frame`` tokens per frame."""

    input_channels: int = config_field(
        3520, help="channels of the visual features (the TVP's stacked up-blocks)"
    )
    num_frames: int = config_field(16, help="frames of the visual features")
    queries_per_frame: int = config_field(14, help="learnable query tokens per frame")
    dim: int = config_field(384, help="token width")
    depth: int = config_field(6, help="layers of [spatial cross-attention, temporal self-attention, FFN]")
    heads: int = config_field(8, help="attention heads")
    head_dim: int = config_field(64, help="width of each cross-attention head")
    ffn_mult: int = config_field(4, help="FFN hidden width as a multiple of dim")
    # The official Video Former gives feature tokens a time embedding only, so its spatial
    # attention is blind to where a token sits unless the features themselves encode it.
    feature_position_embedding: bool = config_field(
        False,
        help="add a fixed sin-cos embedding of each feature token's (view, y, x) before spatial attention",
    )

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.queries_per_frame

    def validate(self) -> None:
        for name in (
            "input_channels",
            "num_frames",
            "queries_per_frame",
            "dim",
            "depth",
            "heads",
            "head_dim",
            "ffn_mult",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"video_former.{name}={getattr(self, name)}; expected >= 1")
        if self.dim % self.heads:
            # Temporal self-attention splits the model width over the heads.
            raise ConfigError(f"video_former.dim={self.dim} is not divisible by heads={self.heads}")
        if self.feature_position_embedding and self.dim < 6:
            # sin-cos pairs for each of the three axes (view, y, x)
            raise ConfigError(f"video_former.dim={self.dim} with feature_position_embedding; expected >= 6")


@dataclass
class DiTHeadConfig(Config):
    """MDT-style encoder-decoder transformer that denoises an action chunk."""

    dim: int = config_field(384, help="token width (equal to the Video Former's)")
    heads: int = config_field(8, help="attention heads")
    encoder_layers: int = config_field(4, help="encoder layers over the condition tokens")
    decoder_layers: int = config_field(4, help="decoder layers over the action tokens")
    mlp_mult: int = config_field(4, help="MLP hidden width as a multiple of dim")
    attn_dropout: float = config_field(0.3, help="dropout of attention weights in training")
    resid_dropout: float = config_field(0.1, help="dropout of residual branches in training")
    mlp_dropout: float = config_field(0.05, help="dropout inside the MLPs in training")
    action_dim: int = config_field(7, help="values per action (e.g. 6-DoF + gripper)")
    chunk: int = config_field(10, help="actions per predicted chunk")
    # The official decoder passes is_causal=True to both attentions; with SDPA's top-left aligned
    # mask, action token i then sees only context tokens 0..i in cross-attention.
    decoder_causal_cross_attention: bool = config_field(
        False, help="causal decoder cross-attention (the official code; the paper describes none)"
    )
    decoder_causal_self_attention: bool = config_field(
        False, help="causal decoder self-attention (the official code; the paper describes none)"
    )

    def validate(self) -> None:
        for name in ("dim", "heads", "encoder_layers", "decoder_layers", "mlp_mult", "action_dim", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dit.{name}={getattr(self, name)}; expected >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"dit.dim={self.dim} is not divisible by heads={self.heads}")
        for name in ("attn_dropout", "resid_dropout", "mlp_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"dit.{name}={getattr(self, name)}; expected a probability in [0, 1)")


@dataclass
class DiffusionConfig(Config):
    """EDM (Karras) action diffusion: preconditioning, training sigmas, DDIM sampling."""

    sigma_data: float = config_field(0.5, help="EDM's data standard deviation (preconditioning)")
    sigma_min: float = config_field(0.001, help="smallest training noise level")
    sigma_max: float = config_field(80.0, help="largest noise level, where sampling starts")
    train_sigma_loc: float = config_field(
        math.log(0.5),
        help="location of the log-logistic training sigmas (truncated to [sigma_min, sigma_max])",
    )
    train_sigma_scale: float = config_field(0.5, help="scale of the log-logistic training sigmas")
    num_steps: int = config_field(10, help="DDIM steps at inference")
    eval_sigma_min: float = config_field(
        0.001, help="last noise level of the sampling schedule (the official evaluation uses 1.0)"
    )

    def validate(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"diffusion sigma range [{self.sigma_min}, {self.sigma_max}]; expected 0 < sigma_min < sigma_max"
            )
        if not 0.0 < self.eval_sigma_min < self.sigma_max:
            raise ConfigError(
                f"diffusion.eval_sigma_min={self.eval_sigma_min}; expected in (0, sigma_max={self.sigma_max})"
            )
        if self.sigma_data <= 0 or self.train_sigma_scale <= 0:
            raise ConfigError(
                f"sigma_data={self.sigma_data}, train_sigma_scale={self.train_sigma_scale}; expected both > 0"
            )
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps={self.num_steps}; expected >= 1")


@dataclass
class PolicyHeadConfig(Config):
    """Everything between the TVP's predictive features and a denoised action chunk."""

    video_former: VideoFormerConfig = config_field(default_factory=VideoFormerConfig, help="the Video Former")
    dit: DiTHeadConfig = config_field(default_factory=DiTHeadConfig, help="the DiT action head")
    diffusion: DiffusionConfig = config_field(default_factory=DiffusionConfig, help="the action diffusion")
    lang_dim: int = config_field(
        512, help="width of the language embedding (the TVP text encoder's projection)"
    )
    state_dim: int | None = config_field(None, help="proprioception values; None leaves the state token out")
    state_dropout: float = config_field(
        0.0,
        help="training only: probability that a sample's state token is replaced by a learned null token, so the "
        "head must read the image (0: no null token)",
    )
    feature_shape: list[int] | None = config_field(
        None,
        help="(V, T, C, h, w) of the features the head standardises element by element with its training mean and "
        "spread (buffers saved with the weights, so the exported graph applies them too); None: features as they are",
    )
    preset_name: str = config_field("custom", help="the preset this config was built from (a record only)")

    # ``preset`` names the constructor of a built-in config
    renamed_keys: ClassVar[Mapping[str, str]] = {"preset": "preset_name"}

    def validate(self) -> None:
        if self.lang_dim < 1:
            raise ConfigError(f"lang_dim={self.lang_dim}; expected >= 1")
        if self.state_dim is not None and self.state_dim < 1:
            raise ConfigError(f"state_dim={self.state_dim}; expected None or >= 1")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ConfigError(f"state_dropout={self.state_dropout}; expected a probability in [0, 1)")
        if self.state_dropout > 0 and self.state_dim is None:
            raise ConfigError(
                f"state_dropout={self.state_dropout} but state_dim=None: there is no state token to drop"
            )
        if self.feature_shape is not None:
            vf = self.video_former
            if (
                len(self.feature_shape) != 5
                or min(self.feature_shape) < 1
                or list(self.feature_shape[1:3]) != [vf.num_frames, vf.input_channels]
            ):
                raise ConfigError(
                    f"feature_shape={self.feature_shape}; expected (V, {vf.num_frames}, {vf.input_channels}, h, w) "
                    "with every size >= 1"
                )
        if self.video_former.dim != self.dit.dim:
            # The DiT encoder reads the Video Former tokens without a width change.
            raise ConfigError(f"video_former.dim={self.video_former.dim} != dit.dim={self.dit.dim}")

    @property
    def num_condition_tokens(self) -> int:
        return 1 + self.video_former.num_tokens + (self.state_dim is not None)


@dataclass
class PolicyTrainConfig(TrainingLoopConfig):
    """The policy run: the loop's options and the head's optimiser (the model's own configs are
    VPPConfig and PolicyHeadConfig)."""

    max_steps: int = config_field(10000, help="optimizer steps")
    batch_size: int = config_field(32, help="windows per step and process")
    checkpoint_every: int = config_field(1000, help="steps between resumable checkpoints")
    learning_rate: float = config_field(1e-4, help="peak AdamW learning rate")
    adam_betas: tuple[float, float] = config_field((0.9, 0.9), help="AdamW betas (the official code's)")
    weight_decay: float = config_field(0.05, help="AdamW decay of linear layers' weight matrices only")
    lr_schedule: Literal["tristage", "cosine", "constant"] = config_field(
        "tristage", help="tristage: warm-up, hold, cosine decay; cosine: decay from the first step"
    )
    warmup_fraction: float = config_field(0.02, help="of max_steps, the tristage warm-up")
    hold_fraction: float = config_field(0.08, help="of max_steps, the tristage hold at the peak")
    initial_lr_scale: float = config_field(0.1, help="tristage warm-up start, as a fraction of the peak")
    final_lr: float = config_field(1e-10, help="learning rate the cosine decay ends at")
    ema_decay: float = config_field(0.9999, help="EMA of the head's weights, saved as the model; 0: none")

    def validate(self) -> None:
        super().validate()
        if self.learning_rate <= 0 or self.final_lr < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"learning_rate={self.learning_rate}, final_lr={self.final_lr}, weight_decay={self.weight_decay}; "
                "expected learning_rate > 0 and the others >= 0"
            )
        if min(self.warmup_fraction, self.hold_fraction) < 0 or self.warmup_fraction + self.hold_fraction > 1:
            raise ConfigError(
                f"warmup_fraction={self.warmup_fraction}, hold_fraction={self.hold_fraction}; expected both >= 0 "
                "with a sum of at most 1"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay}; expected in [0, 1) (0: no EMA)")


@dataclass
class VPPConfig(Config):
    """The task side of a policy: its cameras, actions and how observations become features."""

    cameras: list[str] = config_field(help="camera names, in the order the views are stacked")
    action_dim: int = config_field(help="values per action")
    chunk: int = config_field(help="actions per predicted chunk")
    state_dim: int | None = config_field(None, help="proprioception values; None: the policy reads no state")
    encoder: Literal["tvp", "vae"] = config_field(
        "tvp",
        help="tvp: predictive features (the paper); vae: the TVP's VAE latents of the current frame (ablation)",
    )
    normalization: Literal["min_max", "percentile"] = config_field(
        "min_max", help="action and state bounds: the data's min/max, or its 1st/99th percentiles"
    )
    feature_noise: Literal["random", "fixed"] = config_field(
        "random",
        help="random: fresh noise for every TVP forward (the official code); fixed: the same noise every call "
        "(seeded by feature_seed), which makes the features deterministic",
    )
    feature_seed: int = config_field(0, help="seed of the fixed feature noise")
    # Measured on a synthetic reach task (goal seen in the frame, hand given as state; tiny head with
    # feature positions, 600 steps): P = 0 / 0.25 / 0.5 / 0.75 gave held-out MSE 0.0030 / 0.0041 /
    # 0.0137 / 0.0445 with 128 demonstrations and 0.0086 / 0.0185 / 0.0269 / 0.0354 with 32, while how
    # far a swapped frame moved the actions stayed 0.76-0.99x of the truth at every P: a head that
    # can see uses the image without dropout, and dropout only took accuracy.
    state_dropout: float = config_field(
        0.0,
        help="training only: probability of replacing a sample's state token by a learned null token, so the head "
        "must use the image (PolicyHeadConfig.state_dropout; 0 without state)",
    )
    feature_position_embedding: bool = config_field(
        False,
        help="add a fixed (view, y, x) sin-cos position to the Video Former's feature tokens (the official code "
        "has none)",
    )
    # Predictive features are dominated by what every frame of a scene shares (the static
    # background); standardised, what varies with the image is what is left.
    standardize_features: bool = config_field(
        False, help="the head standardises each feature element with its training windows' mean and spread"
    )
    # Elements that barely move in training are divided by a tiny spread: any small disturbance of
    # them at test time (int8 arithmetic, sensor noise) becomes a large input to the head. At 0.1
    # (the floor before 2026-12-03), the quarter of the grasp policy's elements with the least
    # spread carried 79% of its int8 feature error and nearly all of its action error, and the
    # int8 artifact grasped 92/100 against 98/100; at 1.0, 96/100 in fp32 and 99/100 in int8
    # (docs/quantization.md).
    feature_spread_floor: float = config_field(
        1.0,
        help="with standardize_features: spreads below this fraction of the median spread are raised to it, so that "
        "no element is amplified more than 1/(fraction) times the typical one (0.1 before 2026-12-03)",
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VPPConfig:
        # a policy saved before the floor was a field was standardised with 0.1: say so on load
        if isinstance(data, Mapping) and "feature_spread_floor" not in data:
            data = {**data, "feature_spread_floor": 0.1}
        return super().from_dict(data)

    def validate(self) -> None:
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras={self.cameras}; expected one or more distinct names")
        if self.action_dim < 1 or self.chunk < 1:
            raise ConfigError(f"action_dim={self.action_dim}, chunk={self.chunk}; expected both >= 1")
        if self.state_dim is not None and self.state_dim < 1:
            raise ConfigError(f"state_dim={self.state_dim}; expected None or >= 1")
        if not 0 < self.feature_spread_floor <= 10:
            raise ConfigError(
                f"feature_spread_floor={self.feature_spread_floor}; expected a fraction in (0, 10]"
            )


# Presets describe the sizes only; fit one to a task or a TVP with overrides, e.g.
# PolicyHeadConfig.preset("small", dit={"action_dim": 4, "chunk": 4}, state_dim=3).


@PolicyHeadConfig.register_preset("tiny")
def _tiny() -> PolicyHeadConfig:
    return PolicyHeadConfig(
        video_former=VideoFormerConfig(
            input_channels=96, num_frames=8, queries_per_frame=2, dim=32, depth=1, heads=2, head_dim=16
        ),
        dit=DiTHeadConfig(
            dim=32,
            heads=2,
            encoder_layers=1,
            decoder_layers=1,
            attn_dropout=0.0,
            resid_dropout=0.0,
            mlp_dropout=0.0,
        ),
        lang_dim=32,
    )


@PolicyHeadConfig.register_preset("small")
def _small() -> PolicyHeadConfig:
    return PolicyHeadConfig(
        video_former=VideoFormerConfig(
            input_channels=320, num_frames=8, queries_per_frame=4, dim=128, depth=2, heads=4, head_dim=32
        ),
        dit=DiTHeadConfig(
            dim=128,
            heads=4,
            encoder_layers=2,
            decoder_layers=2,
            attn_dropout=0.1,
            resid_dropout=0.1,
            mlp_dropout=0.05,
        ),
        lang_dim=64,
    )


@PolicyHeadConfig.register_preset("paper")
def _paper() -> PolicyHeadConfig:
    return PolicyHeadConfig()

"""Configs of the policy's neural core: Video Former, DiT action head, action diffusion.

One dataclass per component, gathered in :class:`PolicyHeadConfig`, which is saved as JSON beside
the safetensors weights. Presets (:func:`policy_head_preset`):

- ``tiny``: unit tests; sized to the ``tiny`` TVP preset's features (8 frames, 96 channels,
  32-d text embedding).
- ``small``: CPU-trainable; sized to the ``small`` TVP preset (8 frames, 320 channels, 64-d text).
- ``paper``: the published sizes (d 384, Video Former 6 layers with 16 x 14 queries, DiT 4 + 4,
  8 heads, dropouts 0.3 / 0.1 / 0.05, CLIP 512-d text). The default input channels are the
  ``paper`` TVP preset's 3520 (all up-blocks aggregated, as the paper describes); the official code
  keeps only the first two up-blocks and feeds 2560 channels: pass ``input_channels=2560`` for it.

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

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "policy_head.json"
PRESETS = ("tiny", "small", "paper")


class ConfigError(ValueError):
    """A config value is out of range or inconsistent with another one."""


class InputShapeError(ValueError):
    """A tensor given to the policy head does not have the shape its config expects."""


@dataclass
class VideoFormerConfig:
    """Compresses (V views x h x w) tokens per frame into ``queries_per_frame`` tokens per frame."""

    input_channels: int = 3520
    num_frames: int = 16
    queries_per_frame: int = 14
    dim: int = 384
    depth: int = 6
    heads: int = 8
    head_dim: int = 64
    ffn_mult: int = 4
    # The official Video Former gives feature tokens a time embedding only, so its spatial
    # attention is blind to where a token sits unless the features themselves encode it. True adds
    # a fixed sin-cos embedding of each token's (view, y, x) before spatial attention.
    feature_position_embedding: bool = False

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.queries_per_frame

    def validate(self) -> None:
        for name in ("input_channels", "num_frames", "queries_per_frame", "dim", "depth", "heads", "head_dim", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"video_former.{name}={getattr(self, name)}; expected >= 1")
        if self.dim % self.heads:
            # Temporal self-attention splits the model width over the heads.
            raise ConfigError(f"video_former.dim={self.dim} is not divisible by heads={self.heads}")
        if self.feature_position_embedding and self.dim < 6:
            # sin-cos pairs for each of the three axes (view, y, x)
            raise ConfigError(f"video_former.dim={self.dim} with feature_position_embedding; expected >= 6")


@dataclass
class DiTHeadConfig:
    """MDT-style encoder-decoder transformer that denoises an action chunk."""

    dim: int = 384
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_mult: int = 4
    attn_dropout: float = 0.3
    resid_dropout: float = 0.1
    mlp_dropout: float = 0.05
    action_dim: int = 7
    chunk: int = 10
    # The official decoder passes is_causal=True to both attentions; with SDPA's top-left aligned
    # mask, action token i then sees only context tokens 0..i in cross-attention.
    decoder_causal_cross_attention: bool = False
    decoder_causal_self_attention: bool = False

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
class DiffusionConfig:
    """EDM (Karras) action diffusion: preconditioning, training sigmas, DDIM sampling."""

    sigma_data: float = 0.5
    sigma_min: float = 0.001
    sigma_max: float = 80.0
    # Log-logistic training sigmas, truncated to [sigma_min, sigma_max].
    train_sigma_loc: float = math.log(0.5)
    train_sigma_scale: float = 0.5
    num_steps: int = 10
    # Last noise level of the sampling schedule; the official evaluation overrides it to 1.0.
    eval_sigma_min: float = 0.001

    def validate(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"diffusion sigma range [{self.sigma_min}, {self.sigma_max}]; expected 0 < sigma_min < sigma_max")
        if not 0.0 < self.eval_sigma_min < self.sigma_max:
            raise ConfigError(f"diffusion.eval_sigma_min={self.eval_sigma_min}; expected in (0, sigma_max={self.sigma_max})")
        if self.sigma_data <= 0 or self.train_sigma_scale <= 0:
            raise ConfigError(
                f"sigma_data={self.sigma_data}, train_sigma_scale={self.train_sigma_scale}; expected both > 0"
            )
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps={self.num_steps}; expected >= 1")


@dataclass
class PolicyHeadConfig:
    """Everything between the TVP's predictive features and a denoised action chunk."""

    video_former: VideoFormerConfig = field(default_factory=VideoFormerConfig)
    dit: DiTHeadConfig = field(default_factory=DiTHeadConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lang_dim: int = 512
    # Proprioception dimension; None leaves the state token out.
    state_dim: int | None = None
    # Training only: the probability that a sample's whole state token is replaced by a learned
    # null token, so the head cannot solve the task from proprioception alone and must read the
    # image. 0 keeps the state token always (and creates no null token).
    state_dropout: float = 0.0
    # (V, T, C, h, w) of the features the head standardises element by element, with the mean and
    # spread of its training features (buffers saved with the weights, so the exported graph applies
    # them too); None: the features enter the Video Former as they are.
    feature_shape: list[int] | None = None
    preset: str = "custom"

    def __post_init__(self) -> None:
        for name, cls in (("video_former", VideoFormerConfig), ("dit", DiTHeadConfig), ("diffusion", DiffusionConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, name))
        self.validate()

    def validate(self) -> None:
        self.video_former.validate()
        self.dit.validate()
        self.diffusion.validate()
        if self.lang_dim < 1:
            raise ConfigError(f"lang_dim={self.lang_dim}; expected >= 1")
        if self.state_dim is not None and self.state_dim < 1:
            raise ConfigError(f"state_dim={self.state_dim}; expected None or >= 1")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ConfigError(f"state_dropout={self.state_dropout}; expected a probability in [0, 1)")
        if self.state_dropout > 0 and self.state_dim is None:
            raise ConfigError(f"state_dropout={self.state_dropout} but state_dim=None: there is no state token to drop")
        if self.feature_shape is not None:
            vf = self.video_former
            if len(self.feature_shape) != 5 or min(self.feature_shape) < 1 or list(self.feature_shape[1:3]) != [vf.num_frames, vf.input_channels]:
                raise ConfigError(
                    f"feature_shape={self.feature_shape}; expected (V, {vf.num_frames}, {vf.input_channels}, h, w) with every size >= 1"
                )
        if self.video_former.dim != self.dit.dim:
            # The DiT encoder reads the Video Former tokens without a width change.
            raise ConfigError(f"video_former.dim={self.video_former.dim} != dit.dim={self.dit.dim}")

    @property
    def num_condition_tokens(self) -> int:
        return 1 + self.video_former.num_tokens + (self.state_dim is not None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyHeadConfig:
        return _from_dict(cls, data, "policy head")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PolicyHeadConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
        return cls.from_dict(json.loads(path.read_text()))


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} config keys {unknown}; known keys: {sorted(known)}")
    return cls(**data)


def policy_head_preset(
    name: str,
    *,
    action_dim: int = 7,
    chunk: int = 10,
    state_dim: int | None = None,
    input_channels: int | None = None,
    num_frames: int | None = None,
    queries_per_frame: int | None = None,
    lang_dim: int | None = None,
    state_dropout: float = 0.0,
    feature_position_embedding: bool = False,
    feature_shape: list[int] | None = None,
) -> PolicyHeadConfig:
    """Built-in sizes; the keyword arguments fit a preset to a task (e.g. MetaWorld: 4 x 4 actions)
    or to the TVP that produces its features."""
    if name == "tiny":
        video_former = VideoFormerConfig(input_channels=96, num_frames=8, queries_per_frame=2, dim=32, depth=1, heads=2, head_dim=16)
        dit = DiTHeadConfig(dim=32, heads=2, encoder_layers=1, decoder_layers=1, attn_dropout=0.0, resid_dropout=0.0, mlp_dropout=0.0)
        default_lang = 32
    elif name == "small":
        video_former = VideoFormerConfig(input_channels=320, num_frames=8, queries_per_frame=4, dim=128, depth=2, heads=4, head_dim=32)
        dit = DiTHeadConfig(dim=128, heads=4, encoder_layers=2, decoder_layers=2, attn_dropout=0.1, resid_dropout=0.1, mlp_dropout=0.05)
        default_lang = 64
    elif name == "paper":
        video_former = VideoFormerConfig()
        dit = DiTHeadConfig()
        default_lang = 512
    else:
        raise ConfigError(f"unknown policy head preset {name!r}; expected one of {PRESETS}")
    dit.action_dim, dit.chunk = action_dim, chunk
    if input_channels is not None:
        video_former.input_channels = input_channels
    if num_frames is not None:
        video_former.num_frames = num_frames
    if queries_per_frame is not None:
        video_former.queries_per_frame = queries_per_frame
    video_former.feature_position_embedding = feature_position_embedding
    return PolicyHeadConfig(
        video_former=video_former,
        dit=dit,
        diffusion=DiffusionConfig(),
        lang_dim=default_lang if lang_dim is None else lang_dim,
        state_dim=state_dim,
        state_dropout=state_dropout,
        feature_shape=None if feature_shape is None else list(feature_shape),
        preset=name,
    )

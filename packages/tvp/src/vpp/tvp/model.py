"""The text-guided video predictor: SVD's spatio-temporal UNet with CLIP text cross-attention."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from vpp.tvp import edm
from vpp.tvp.config import CONFIG_NAME, TVPConfig
from vpp.tvp.text import load_tokenizer

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FOLDER = "tokenizer"
# The layout before config.json + model.safetensors: diffusers / transformers sub-folders.
LEGACY_CONFIG_NAME = "tvp_config.json"

logger = logging.getLogger(__name__)


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A loaded model's config as the JSON that ``config.json`` stores: without the loader's
    private keys (``_name_or_path`` is a Path; ``_class_name`` and versions are not architecture),
    tuples as lists, so that a saved config reads back equal."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


@torch.no_grad()
def start_temporal_decoder_per_frame(vae: AutoencoderKLTemporalDecoder) -> None:
    """Makes a from-scratch temporal decoder start as a per-frame image decoder: its output
    convolution over time passes each frame through and every temporal residual branch adds zero.
    Left random, they mix each frame with its neighbours (zero-padded at the clip's ends), which
    gave fitted VAEs frames tinted frame by frame, first and last ones most (issue 12)."""
    time_conv = vae.decoder.time_conv_out
    time_conv.weight.zero_()
    time_conv.bias.zero_()
    middle = time_conv.kernel_size[0] // 2
    for channel in range(time_conv.out_channels):
        time_conv.weight[channel, channel, middle, 0, 0] = 1.0
    for name, module in vae.decoder.named_modules():
        if name.endswith("temporal_res_block"):
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()


class TextGuidedVideoPredictor(nn.Module):
    """Predicts a video from its first frame and an instruction.

    Videos are (B, T, 3, H, W) in [-1, 1]; latents are (B, T, C, h, w), scaled by the VAE's
    scaling factor. The UNet input per frame is ``c_in * noisy latent ++ first-frame latent``
    (the latter unscaled, as SVD). Only the UNet (and the optional text projection) train; the
    VAE and the CLIP text encoder stay frozen.
    """

    def __init__(
        self,
        config: TVPConfig,
        unet: UNetSpatioTemporalConditionModel | None = None,
        vae: AutoencoderKLTemporalDecoder | None = None,
        text_encoder: CLIPTextModelWithProjection | None = None,
        tokenizer: CLIPTokenizer | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else UNetSpatioTemporalConditionModel(**config.unet)
        if vae is None:
            vae = AutoencoderKLTemporalDecoder(**config.vae)
            start_temporal_decoder_per_frame(vae)
        self.vae = vae
        self.text_encoder = (
            text_encoder
            if text_encoder is not None
            else CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder))
        )
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer)
        if config.text_to_unet == "linear":
            self.text_projection: nn.Linear | None = nn.Linear(
                config.text_hidden_size, config.cross_attention_dim
            )
        else:
            self.text_projection = None
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TextGuidedVideoPredictor:
        return cls(TVPConfig.preset(name, **overrides))

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype | None = None
    ) -> TextGuidedVideoPredictor:
        """Loads a folder written by :meth:`save_pretrained`, or (with a warning) one in the layout
        written before it, which :func:`convert_legacy_tvp` rewrites."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() and (folder / LEGACY_CONFIG_NAME).is_file():
            logger.warning(
                "%s is a TVP folder in the old layout (tvp_config.json, unet/, vae/, text_encoder/, tokenizer/); "
                "`vpp-tvp convert %s NEW` rewrites it as config.json + model.safetensors",
                folder,
                folder,
            )
            return cls._from_legacy_folder(folder, torch_dtype)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not a saved TextGuidedVideoPredictor")
        model = cls.without_weights(TVPConfig.load(folder / CONFIG_NAME), folder)
        model.load_state_dict(load_file(folder / WEIGHTS_NAME), strict=True, assign=True)
        return model if torch_dtype is None else model.to(torch_dtype)

    @classmethod
    def without_weights(cls, config: TVPConfig, folder: Path) -> TextGuidedVideoPredictor:
        """The model of ``config`` with unallocated weights, to be filled by
        ``load_state_dict(..., assign=True)`` from a saved folder (whose ``tokenizer/`` holds a
        tokenizer other than the built-in one). Initialising weights that are then overwritten
        costs time (a minute for SVD's UNet) and would draw from the global RNG."""
        tokenizer = load_tokenizer(str(folder / TOKENIZER_FOLDER)) if config.tokenizer != "bytes" else None
        with init_empty_weights():
            return cls(config, tokenizer=tokenizer)

    @classmethod
    def _from_legacy_folder(cls, folder: Path, torch_dtype: torch.dtype | None) -> TextGuidedVideoPredictor:
        model = cls(
            TVPConfig.load(folder / LEGACY_CONFIG_NAME),
            unet=UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet", torch_dtype=torch_dtype),
            vae=AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae", torch_dtype=torch_dtype),
            text_encoder=CLIPTextModelWithProjection.from_pretrained(
                folder / "text_encoder", local_files_only=True, dtype=torch_dtype
            ),
            tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
        )
        if model.text_projection is not None:
            model.text_projection.load_state_dict(load_file(folder / "text_projection.safetensors"))
        return model

    @classmethod
    def from_svd(
        cls,
        svd_folder: str | Path,
        clip_folder: str | Path,
        image_size: int = 256,
        num_frames: int = 16,
        torch_dtype: torch.dtype = torch.float32,
        variant: str | None = None,
        **config_overrides,
    ) -> TextGuidedVideoPredictor:
        """Builds a TVP from a local Stable Video Diffusion pipeline folder (``unet/``, ``vae/``)
        and a local CLIP folder (``text_encoder/`` + ``tokenizer/`` subfolders, or a flat
        transformers CLIP checkpoint with its tokenizer files).

        ``variant`` picks the weight files of that name (``"fp16"``: the half-precision files
        released SVD folders ship); they are loaded as ``torch_dtype``, float32 by default, which
        is what training keeps its weights in. The CLIP folder's files of that variant are used
        when it has them."""
        svd_folder, clip_folder = Path(svd_folder), Path(clip_folder)
        for sub in ("unet", "vae"):
            if not (svd_folder / sub / "config.json").is_file():
                raise FileNotFoundError(f"{svd_folder / sub} has no config.json: not a diffusers SVD folder")
        text_folder = clip_folder / "text_encoder" if (clip_folder / "text_encoder").is_dir() else clip_folder
        if not (text_folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{clip_folder} is not a local CLIP folder: no config.json in it or in its text_encoder/"
            )
        for sub in ("unet", "vae"):
            if variant is not None and not any((svd_folder / sub).glob(f"*.{variant}.*")):
                raise FileNotFoundError(f"{svd_folder / sub} has no weight files of variant {variant!r}")
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            svd_folder / "unet", variant=variant, torch_dtype=torch_dtype
        )
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            svd_folder / "vae", variant=variant, torch_dtype=torch_dtype
        )
        text_variant = variant if variant is not None and any(text_folder.glob(f"*.{variant}.*")) else None
        text_encoder = CLIPTextModelWithProjection.from_pretrained(
            text_folder, local_files_only=True, dtype=torch_dtype, variant=text_variant
        )
        tokenizer = load_tokenizer(str(clip_folder))
        # the weights hold their dtype; the config records the architecture alone
        text_config = {
            k: v for k, v in text_encoder.config.to_diff_dict().items() if k not in ("dtype", "torch_dtype")
        }
        config = TVPConfig.from_dict(
            dict(
                image_size=image_size,
                num_frames=num_frames,
                unet=_json_config(unet.config),
                vae=_json_config(vae.config),
                text_encoder=_json_config(text_config),
                tokenizer=str(clip_folder),
                preset_name=None,
                **config_overrides,
            )
        )
        return cls(
            config,
            unet=unet.to(torch_dtype),
            vae=vae.to(torch_dtype),
            text_encoder=text_encoder.to(torch_dtype),
            tokenizer=tokenizer,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """Writes ``model.safetensors`` (UNet, VAE, text encoder and projection) and ``config.json``
        (:class:`TVPConfig`), the latter last: its presence marks a complete folder. A tokenizer
        other than the built-in one is kept in ``tokenizer/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_tokenizer(folder)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME
        )
        return self.config.save(folder / CONFIG_NAME)

    def save_tokenizer(self, folder: Path) -> None:
        """Keeps a tokenizer other than the built-in one in ``folder/tokenizer``, where
        :meth:`without_weights` reads it."""
        if self.config.tokenizer != "bytes":
            self.tokenizer.save_pretrained(str(folder / TOKENIZER_FOLDER))

    # -- conditioning ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def tokenize(self, instructions: Sequence[str]) -> torch.Tensor:
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings, got a single str")
        return self.tokenizer(
            list(instructions),
            padding="max_length",
            max_length=self.config.text_max_tokens,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (CLIP hidden states (B, L, D_text), projected text embedding (B, D_proj))."""
        out = self.text_encoder(input_ids=self.tokenize(instructions))
        return out.last_hidden_state, out.text_embeds

    def text_conditioning(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """Maps CLIP hidden states to the UNet's cross-attention width (tile, as the official
        code does, or a trained linear projection)."""
        if self.text_projection is not None:
            return self.text_projection(text_hidden)
        repeats = self.config.cross_attention_dim // text_hidden.shape[-1]
        return text_hidden.repeat(1, 1, repeats)

    def added_time_ids(self, batch: int, fps_id: int | None = None) -> torch.Tensor:
        ids = [
            self.config.fps_id if fps_id is None else fps_id,
            self.config.motion_bucket_id,
            self.config.noise_aug_strength,
        ]
        return torch.tensor([ids], dtype=self.dtype, device=self.device).repeat(batch, 1)

    # -- VAE ---------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor, name: str) -> None:
        size = self.config.image_size
        if video.ndim != 5 or video.shape[2] != 3 or video.shape[-2:] != (size, size):
            raise ValueError(f"{name} has shape {tuple(video.shape)}; expected (B, T, 3, {size}, {size})")

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> scaled latents (B, T, C, h, w), using the posterior mode."""
        self._check_video(video, "video")
        b, t = video.shape[:2]
        latents = self.vae.encode(video.flatten(0, 1).to(self.device, self.dtype)).latent_dist.mode()
        return (latents * self.scaling_factor).unflatten(0, (b, t))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Scaled latents (B, T, C, h, w) -> video (B, T, 3, H, W) in [-1, 1]."""
        b, t = latents.shape[:2]
        flat = latents.flatten(0, 1) / self.scaling_factor
        frames = [self.vae.decode(part, num_frames=part.shape[0]).sample for part in flat.split(chunk)]
        return torch.cat(frames).unflatten(0, (b, t)).clamp(-1, 1)

    def condition_latent(
        self, first_latent: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The first-frame latent as SVD conditions on it: unscaled, optionally noise-augmented."""
        cond = first_latent / self.scaling_factor
        if self.config.noise_aug_strength > 0:
            noise = torch.randn(cond.shape, generator=generator, dtype=cond.dtype).to(cond.device)
            cond = cond + self.config.noise_aug_strength * noise
        return cond

    # -- the denoiser ------------------------------------------------------------------------

    def denoise(
        self,
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        cond_latent: torch.Tensor,
        fps_id: int | None = None,
    ) -> torch.Tensor:
        """EDM denoiser D(x; sigma): ``text`` already mapped to cross_attention_dim (B, L, D)."""
        c_in, c_out, c_skip, c_noise = edm.preconditioning(sigma.to(noisy.dtype))
        unet_in = self.unet_input(noisy, c_in, cond_latent)
        out = self.unet(
            unet_in,
            c_noise,
            encoder_hidden_states=text,
            added_time_ids=self.added_time_ids(noisy.shape[0], fps_id),
        ).sample
        return edm.expand_like(c_skip, noisy) * noisy + edm.expand_like(c_out, noisy) * out

    @staticmethod
    def unet_input(noisy: torch.Tensor, c_in: torch.Tensor, cond_latent: torch.Tensor) -> torch.Tensor:
        frames = noisy.shape[1]
        cond = cond_latent.unsqueeze(1).expand(-1, frames, -1, -1, -1)
        return torch.cat([edm.expand_like(c_in, noisy) * noisy, cond], dim=2)

    def forward(
        self,
        latents: torch.Tensor,
        text_hidden: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training loss; ``forward`` so that DDP/FSDP wrappers see the call."""
        return self.training_loss(latents, text_hidden, generator)

    def training_loss(
        self,
        latents: torch.Tensor,
        text_hidden: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """EDM loss on scaled latents (B, T, C, h, w) given CLIP hidden states (B, L, D_text).

        Text is zeroed for a random ``edm.text_dropout`` share of videos so that the same model
        serves as the unconditional branch of classifier-free guidance.
        """
        cfg = self.config.edm
        batch = latents.shape[0]
        sigma = edm.sample_training_sigmas(batch, cfg.p_mean, cfg.p_std, generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        keep_text = edm.text_keep_mask(batch, cfg.text_dropout, generator).to(latents.device)
        text = self.text_conditioning(text_hidden) * edm.expand_like(keep_text, text_hidden)
        noisy = latents + edm.expand_like(sigma, latents) * noise
        cond = self.condition_latent(latents[:, 0], generator)
        denoised = self.denoise(noisy, sigma, text, cond)
        weight = edm.expand_like(edm.loss_weight(sigma), latents)
        return (weight * (denoised.float() - latents.float()) ** 2).mean()


def convert_legacy_tvp(old: str | Path, new: str | Path) -> Path:
    """Rewrites a TVP folder of the old layout (``tvp_config.json`` with diffusers ``unet/``,
    ``vae/``, transformers ``text_encoder/`` and ``tokenizer/`` sub-folders) as ``config.json`` +
    ``model.safetensors``; the weights are copied exactly."""
    old = Path(old)
    if not (old / LEGACY_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {LEGACY_CONFIG_NAME} in {old}: not a TVP folder in the old layout")
    model = TextGuidedVideoPredictor._from_legacy_folder(old, None)
    model.save_pretrained(new)
    return Path(new)

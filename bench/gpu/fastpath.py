"""The policy's act path as one static-shaped module without forward hooks, for timing on a GPU.

``VideoPredictionPolicy.predict_action_chunk`` reads the TVP's up-block outputs through forward
hooks that :func:`vpp.tvp.features.predictive_features` registers and removes on every call, and
draws the DDIM schedule from a CPU tensor in the sampler loop. Both are fine in eager mode but
defeat ``torch.compile``: dynamo does not guard on hooks added after compilation, and a CUDA graph
cannot hold per-call Python bookkeeping. :class:`ActCore` computes the same function from the
same modules with neither: uint8 pixels of every view + token ids + normalised state + the two
noise draws -> the normalised action chunk, with the UNet run block by block up to the last
up-block the features need (:func:`unet_up_block_outputs`) and the schedule kept as Python floats.
:func:`reference_actions` is the project's own path on the same inputs; the benchmark records
the largest difference between the two for every variant.

:func:`fused_kernels` swaps in vpp-kernels' Triton kernels where they apply: GroupNorm+SiLU of
every ResNet block (spatial and temporal, UNet and VAE encoder), the GEGLU activation of every
transformer feed-forward (computed from two half-width projections, so that the kernel gets two
contiguous halves) and the DDIM step of the action sampler. The Triton kernels take float32
tensors only, so that variant runs in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.resnet import ResnetBlock2D, TemporalResnetBlock
from torch import nn

from vpp.policy.policy import VideoPredictionPolicy
from vpp.tvp import edm
from vpp.tvp.features import feature_sigma, predictive_features


class FastPathError(RuntimeError):
    """The policy cannot be run through the fast path (a shape or module it does not handle)."""


def unet_up_block_outputs(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    blocks: Sequence[int],
) -> list[torch.Tensor]:
    """The outputs of up-blocks ``blocks`` of diffusers' ``UNetSpatioTemporalConditionModel`` for
    a (B, T, C, h, w) sample: its forward, stopped after the last block asked for.

    ``timestep`` holds one value per video (B,). The latent side must be a multiple of
    2 ** (number of upsamplers), which every preset's is: the UNet's forced upsample sizes are
    not handled."""
    batch, frames = sample.shape[:2]
    factor = 2**unet.num_upsamplers
    if any(side % factor for side in sample.shape[-2:]):
        raise FastPathError(
            f"latent size {tuple(sample.shape[-2:])} is not a multiple of {factor}; "
            "use an image size that is a multiple of 8 * that"
        )
    if timestep.shape != (batch,):
        raise FastPathError(f"timestep has shape {tuple(timestep.shape)}; expected ({batch},)")
    emb = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
    added = unet.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = (emb + unet.add_embedding(added)).repeat_interleave(frames, dim=0)
    text = encoder_hidden_states.repeat_interleave(frames, dim=0)
    hidden = unet.conv_in(sample.flatten(0, 1))
    indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)

    skips: list[torch.Tensor] = [hidden]
    for block in unet.down_blocks:
        kwargs: dict[str, Any] = {"hidden_states": hidden, "temb": emb, "image_only_indicator": indicator}
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = text
        hidden, residuals = block(**kwargs)
        skips.extend(residuals)
    hidden = unet.mid_block(
        hidden_states=hidden, temb=emb, encoder_hidden_states=text, image_only_indicator=indicator
    )

    wanted = set(blocks)
    outputs: dict[int, torch.Tensor] = {}
    for index, block in enumerate(unet.up_blocks[: max(blocks) + 1]):
        count = len(block.resnets)
        residuals, skips = tuple(skips[-count:]), skips[:-count]
        kwargs = {
            "hidden_states": hidden,
            "temb": emb,
            "res_hidden_states_tuple": residuals,
            "image_only_indicator": indicator,
            "upsample_size": None,
        }
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = text
        hidden = block(**kwargs)
        if index in wanted:
            outputs[index] = hidden
    return [outputs[index] for index in blocks]


DdimStep = Callable[[torch.Tensor, torch.Tensor, float, float, float], torch.Tensor]


class ActCore(nn.Module):
    """pixels (1, V, H, W, 3) uint8 + token ids (1, L) + normalised state (1, S) or None + unit
    feature noise (1, V, T, C, h, w) + unit action noise (1, chunk, A) -> normalised actions
    (1, chunk, A), on the policy's device and in its dtype.

    The frames must already have the TVP's image size (square): a robot's cameras are set to it,
    and resizing is host-side work outside what this times. ``ddim_step``, when given, replaces
    the sampler's update ``x_next = r x + (1 - r) D`` by a fused kernel with the signature of
    ``vpp.kernels.triton_kernels.ddim_step``."""

    def __init__(self, policy: VideoPredictionPolicy, ddim_step: DdimStep | None = None) -> None:
        super().__init__()
        if policy.config.encoder != "tvp":
            raise FastPathError(f"encoder={policy.config.encoder!r}; the fast path runs the TVP encoder only")
        self.policy = policy
        self.tvp = policy.tvp
        self.head = policy.head
        config = self.tvp.config
        self.views = len(policy.config.cameras)
        self.image_size = config.image_size
        self.blocks = tuple(config.feature_blocks)
        self.feature_sigma = feature_sigma(self.tvp)
        self.sigmas = [float(s) for s in self.head.diffusion.sigmas().tolist()]
        self.sigma_data = float(self.head.diffusion.config.sigma_data)
        self.ddim_step = ddim_step

    # -- pieces -------------------------------------------------------------------------------

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (1, V, S, S, 3) -> float (1, V, 3, S, S) in [-1, 1], as vpp.tvp.data.mixture.resize_frames."""
        expected = (self.views, self.image_size, self.image_size, 3)
        if pixels.dtype != torch.uint8 or pixels.ndim != 5 or tuple(pixels.shape[1:]) != expected:
            raise FastPathError(
                f"pixels {tuple(pixels.shape)} {pixels.dtype}; expected (1, {', '.join(map(str, expected))}) uint8"
            )
        return (pixels.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0).clamp(-1, 1)

    def features(self, images: torch.Tensor, text_hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What predictive_features(tvp, images, text_hidden=..., noise=...) returns, hook-free."""
        tvp, config = self.tvp, self.tvp.config
        dtype = tvp.dtype
        batch, views = images.shape[:2]
        text = tvp.text_conditioning(text_hidden.to(dtype)).repeat_interleave(views, dim=0)
        first_latent = tvp.encode_video(images.flatten(0, 1).unsqueeze(1))[:, 0]
        cond = tvp.condition_latent(first_latent)
        shape = (batch * views, config.num_frames, *first_latent.shape[1:])
        noisy = noise.reshape(shape).to(dtype) * self.feature_sigma
        sigma = torch.full((batch * views,), self.feature_sigma, device=noisy.device, dtype=dtype)
        c_in, _, _, c_noise = edm.preconditioning(sigma)
        outputs = unet_up_block_outputs(
            tvp.unet,
            tvp.unet_input(noisy, c_in, cond),
            c_noise,
            text,
            tvp.added_time_ids(batch * views, config.features.fps_id),
            self.blocks,
        )
        size = (config.feature_size, config.feature_size)
        interpolation: dict[str, Any] = {"mode": config.features.interpolation}
        if config.features.interpolation == "bilinear":
            interpolation["align_corners"] = False
        stacked = torch.cat(
            [
                out if out.shape[-2:] == size else F.interpolate(out, size=size, **interpolation)
                for out in outputs
            ],
            dim=1,
        )
        return stacked.reshape(batch, views, config.num_frames, *stacked.shape[1:])

    def sample(
        self, features: torch.Tensor, lang: torch.Tensor, state: torch.Tensor | None, noise: torch.Tensor
    ) -> torch.Tensor:
        """What head.sample(features, lang, state, noise=noise) returns, with the schedule as floats."""
        head = self.head
        context = head.dit.encode(head.condition_tokens(features, lang, state))

        def network(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return head.dit.decode(context, x, c_noise)

        x = noise.to(context.dtype) * self.sigmas[0]
        batch = x.shape[0]
        for sigma, sigma_next in zip(self.sigmas[:-1], self.sigmas[1:], strict=True):
            level = torch.full((batch,), sigma, device=x.device, dtype=x.dtype)
            if self.ddim_step is None:
                denoised = head.diffusion.denoise(network, x, level)
                ratio = sigma_next / sigma
                x = ratio * x + (1.0 - ratio) * denoised
            else:
                _, _, c_in, c_noise = head.diffusion.scalings(level)
                output = network(x * c_in.view(-1, 1, 1).to(x.dtype), c_noise.to(x.dtype))
                x = self.ddim_step(x.contiguous(), output.contiguous(), sigma, sigma_next, self.sigma_data)
        return x

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        state: torch.Tensor | None,
        feature_noise: torch.Tensor,
        action_noise: torch.Tensor,
    ) -> torch.Tensor:
        text = self.tvp.text_encoder(input_ids=input_ids)
        features = self.features(self.images(pixels), text.last_hidden_state, feature_noise)
        return self.sample(features, text.text_embeds, state, action_noise)


@torch.no_grad()
def reference_actions(
    core: ActCore,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    state: torch.Tensor | None,
    feature_noise: torch.Tensor,
    action_noise: torch.Tensor,
) -> torch.Tensor:
    """The project's own path on the same inputs: CLIP, predictive_features (with its hooks) and
    PolicyHead.sample (its DDIM loop), as predict_action_chunk chains them."""
    tvp, head = core.tvp, core.head
    text = tvp.text_encoder(input_ids=input_ids)
    features = predictive_features(
        tvp, core.images(pixels), text_hidden=text.last_hidden_state, noise=feature_noise
    )
    return head.sample(features, text.text_embeds, state, noise=action_noise)


# -- the Triton kernels -------------------------------------------------------------------------


def _group_norm_silu(kernels: Any, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return kernels.group_norm_silu(
        x.contiguous(), norm.weight, norm.bias, norm.num_groups, norm.eps, silu=True
    )


def _fused_resnet2d_forward(kernels: Any, block: ResnetBlock2D, input_tensor, temb, *args, **kwargs):
    # ResnetBlock2D.forward for the configurations _resnet2d_fusable accepts, with each
    # GroupNorm and the SiLU after it as one kernel.
    hidden = block.conv1(_group_norm_silu(kernels, block.norm1, input_tensor))
    if block.time_emb_proj is not None:
        temb = block.time_emb_proj(temb if block.skip_time_act else F.silu(temb))[:, :, None, None]
    if temb is not None:
        hidden = hidden + temb
    hidden = block.conv2(block.dropout(_group_norm_silu(kernels, block.norm2, hidden)))
    shortcut = input_tensor if block.conv_shortcut is None else block.conv_shortcut(input_tensor)
    return (shortcut + hidden) / block.output_scale_factor


def _fused_temporal_resnet_forward(kernels: Any, block: TemporalResnetBlock, input_tensor, temb):
    hidden = block.conv1(_group_norm_silu(kernels, block.norm1, input_tensor))
    if block.time_emb_proj is not None:
        temb = block.time_emb_proj(F.silu(temb))[:, :, :, None, None].permute(0, 2, 1, 3, 4)
        hidden = hidden + temb
    hidden = block.conv2(block.dropout(_group_norm_silu(kernels, block.norm2, hidden)))
    shortcut = input_tensor if block.conv_shortcut is None else block.conv_shortcut(input_tensor)
    return shortcut + hidden


def _fused_geglu_forward(kernels: Any, module: GEGLU, hidden_states, *args, **kwargs):
    weight, bias = module.proj.weight, module.proj.bias
    half = weight.shape[0] // 2
    value = F.linear(hidden_states, weight[:half], None if bias is None else bias[:half])
    gate = F.linear(hidden_states, weight[half:], None if bias is None else bias[half:])
    return kernels.geglu(value, gate)


def _silu_group_norms(block: nn.Module) -> bool:
    return (
        isinstance(block.norm1, nn.GroupNorm)
        and isinstance(block.norm2, nn.GroupNorm)
        and block.norm1.affine
        and block.norm2.affine
        and isinstance(block.nonlinearity, nn.SiLU)
    )


def _resnet2d_fusable(block: ResnetBlock2D) -> bool:
    return (
        _silu_group_norms(block)
        and block.upsample is None
        and block.downsample is None
        and block.time_embedding_norm == "default"
    )


def act_path_modules(core: ActCore) -> list[nn.Module]:
    """The TVP modules an act runs through that hold ResNet blocks or GEGLUs: the UNet and the
    VAE's encoder (the decoder is not on the path)."""
    return [core.tvp.unet, core.tvp.vae.encoder]


@contextlib.contextmanager
def fused_kernels(modules: Sequence[nn.Module], kernels: Any) -> Iterator[dict[str, int]]:
    """While open, every ResNet block and GEGLU under ``modules`` that the Triton kernels fit runs
    through ``kernels`` (``vpp.kernels.triton_kernels``); yields the counts of patched and
    unpatched sites, and restores every module on exit."""
    replacements: list[tuple[nn.Module, Callable[..., Any]]] = []
    counts = {
        "group_norm_silu_sites": 0,
        "geglu_sites": 0,
        "resnet_blocks_left_unfused": 0,
        "group_norms_total": 0,
        "geglu_total": 0,
    }
    for sub in (sub for module in modules for sub in module.modules()):
        if type(sub) is ResnetBlock2D:
            if _resnet2d_fusable(sub):
                replacements.append((sub, _bind(_fused_resnet2d_forward, kernels, sub)))
                counts["group_norm_silu_sites"] += 2
            else:
                counts["resnet_blocks_left_unfused"] += 1
        elif type(sub) is TemporalResnetBlock:
            if _silu_group_norms(sub):
                replacements.append((sub, _bind(_fused_temporal_resnet_forward, kernels, sub)))
                counts["group_norm_silu_sites"] += 2
            else:
                counts["resnet_blocks_left_unfused"] += 1
        elif type(sub) is GEGLU:
            counts["geglu_total"] += 1
            if sub.proj.weight.shape[0] % 2 == 0:
                replacements.append((sub, _bind(_fused_geglu_forward, kernels, sub)))
                counts["geglu_sites"] += 1
        elif isinstance(sub, nn.GroupNorm):
            counts["group_norms_total"] += 1
    for sub, forward in replacements:
        sub.forward = forward
    try:
        yield counts
    finally:
        for sub, _ in replacements:
            del sub.forward


def _bind(function: Callable[..., Any], kernels: Any, module: nn.Module) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return function(kernels, module, *args, **kwargs)

    return forward


class TorchStandInKernels:
    """The three kernels of ``vpp.kernels.triton_kernels`` this module uses, in plain torch, with
    the same signatures and the same input checks (float32, contiguous, one device).

    The dry run patches these in instead of the Triton kernels: under ``TRITON_INTERPRET=1`` a
    single act of the ``tiny`` preset took 105 s on the 2-core CI machine. The patching, shapes and
    contiguity are what the dry run checks; the kernels' own parity with numpy is
    packages/kernels/tests/test_kernels_triton.py's (interpreter in CI, the GPU in run.sh)."""

    name = "torch stand-ins"

    @staticmethod
    def _check(name: str, value: torch.Tensor, device: torch.device | None = None) -> None:
        if value.dtype != torch.float32 or not value.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous float32 tensor, got {value.dtype}, strides {value.stride()}"
            )
        if device is not None and value.device != device:
            raise ValueError(f"{name} is on {value.device}, expected {device}")

    def group_norm_silu(self, x, weight, bias, num_groups=32, eps=1e-5, *, silu=True):
        self._check("x", x)
        for name, param in (("weight", weight), ("bias", bias)):
            if param is not None:
                self._check(name, param, x.device)
        y = F.group_norm(x, num_groups, weight, bias, eps)
        return F.silu(y) if silu else y

    def geglu(self, value, gate):
        self._check("value", value)
        self._check("gate", gate, value.device)
        return value * F.gelu(gate)

    def ddim_step(self, x, f, sigma, sigma_next, *, sigma_data, parameterisation="edm", out=None):
        self._check("x", x)
        self._check("f", f, x.device)
        total = sigma * sigma + sigma_data * sigma_data
        c_skip, c_out = sigma_data * sigma_data / total, sigma * sigma_data / total**0.5
        ratio = sigma_next / sigma
        return (ratio + (1.0 - ratio) * c_skip) * x + ((1.0 - ratio) * c_out) * f


def triton_ddim_step(kernels: Any) -> DdimStep:
    def step(x: torch.Tensor, output: torch.Tensor, sigma: float, sigma_next: float, sigma_data: float):
        return kernels.ddim_step(x, output, sigma, sigma_next, sigma_data=sigma_data)

    return step


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def to_numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().double().cpu().numpy()

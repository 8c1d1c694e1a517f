"""The policy's trainable core: Video Former + condition embeddings + DiT action head + EDM.

Condition tokens for the DiT encoder are [language token; Video Former tokens; state token]:
the language token is the (CLIP) text embedding through an MLP lang_dim -> 2d -> d, the Video
Former tokens pass a d -> d projection (the official head's token embedding), and the optional
proprioception gets its own MLP state_dim -> 2d -> d. With ``state_dropout`` p > 0, training
replaces each sample's state token by a learned null token with probability p (the mask drawn
from the loss's generator, so a seeded step repeats exactly); sampling always uses the state.
"""

from __future__ import annotations

import torch
from torch import nn

from vpp.policy.action_diffusion import ActionDiffusion
from vpp.policy.attention import init_transformer_weights
from vpp.policy.config import InputShapeError, PolicyHeadConfig
from vpp.policy.dit_head import DiTActionHead
from vpp.policy.video_former import VideoFormer


class PolicyHead(nn.Module):
    def __init__(self, config: PolicyHeadConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.dit.dim
        self.video_former = VideoFormer(config.video_former)
        self.video_token_projection = nn.Linear(config.video_former.dim, d)
        self.language_projection = nn.Sequential(
            nn.Linear(config.lang_dim, 2 * d), nn.GELU(), nn.Linear(2 * d, d)
        )
        self.state_projection = (
            nn.Sequential(nn.Linear(config.state_dim, 2 * d), nn.Mish(), nn.Linear(2 * d, d))
            if config.state_dim is not None
            else None
        )
        for module in (self.video_token_projection, self.language_projection, self.state_projection):
            if module is not None:
                module.apply(init_transformer_weights)
        self.null_state = nn.Parameter(torch.randn(1, d) * 0.02) if config.state_dropout > 0 else None
        self.dit = DiTActionHead(config.dit)
        self.diffusion = ActionDiffusion(config.diffusion)
        if config.feature_shape is not None:
            # identity until set_feature_statistics; loaded with the weights
            self.register_buffer("feature_mean", torch.zeros(config.feature_shape))
            self.register_buffer("feature_inv_std", torch.ones(config.feature_shape))

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-element mean and spread (V, T, C, h, w) of the training features."""
        if self.config.feature_shape is None:
            raise ValueError(
                "this head was built without feature_shape: it does not standardise its features"
            )
        shape = tuple(self.config.feature_shape)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise InputShapeError(
                f"statistics of shape {tuple(mean.shape)} / {tuple(std.shape)}; expected {shape}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("feature statistics must be finite with a positive spread")
        self.feature_mean.copy_(mean)
        self.feature_inv_std.copy_(1.0 / std)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.feature_shape is None:
            return features
        if tuple(features.shape[1:]) != tuple(self.config.feature_shape):
            raise InputShapeError(
                f"features have shape {tuple(features.shape)}; expected (B, *{tuple(self.config.feature_shape)})"
            )
        return (features - self.feature_mean.to(features.dtype)) * self.feature_inv_std.to(features.dtype)

    def condition_tokens(
        self,
        features: torch.Tensor,
        lang: torch.Tensor,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, 1 + T*L (+1), d) tokens for the DiT encoder; in training mode with state_dropout,
        some samples' state tokens are the null token."""
        batch = features.shape[0]
        if lang.shape != (batch, self.config.lang_dim):
            raise InputShapeError(
                f"lang has shape {tuple(lang.shape)}; expected ({batch}, {self.config.lang_dim})"
            )
        tokens = [
            self.language_projection(lang)[:, None],
            self.video_token_projection(self.video_former(self.standardize(features))),
        ]
        if self.state_projection is None:
            if state is not None:
                raise InputShapeError(
                    f"state of shape {tuple(state.shape)} given, but this head has state_dim=None"
                )
        else:
            if state is None or state.shape != (batch, self.config.state_dim):
                got = None if state is None else tuple(state.shape)
                raise InputShapeError(f"state has shape {got}; expected ({batch}, {self.config.state_dim})")
            state_token = self.state_projection(state)
            if self.training and self.null_state is not None:
                drop = torch.rand(
                    batch, generator=generator, device=None if generator is None else generator.device
                )
                dropped = (drop < self.config.state_dropout).to(state_token.device)[:, None]
                state_token = torch.where(dropped, self.null_state.to(state_token.dtype), state_token)
            tokens.append(state_token[:, None])
        return torch.cat(tokens, dim=1)

    def loss(
        self,
        features: torch.Tensor,
        lang: torch.Tensor,
        actions: torch.Tensor,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """EDM loss on normalised action chunks (B, chunk, action_dim)."""
        cfg = self.config.dit
        if actions.shape != (features.shape[0], cfg.chunk, cfg.action_dim):
            raise InputShapeError(
                f"actions have shape {tuple(actions.shape)}; expected ({features.shape[0]}, "
                f"{cfg.chunk}, {cfg.action_dim})"
            )
        context = self.dit.encode(self.condition_tokens(features, lang, state, generator))
        return self.diffusion.loss(
            lambda x, c_noise: self.dit.decode(context, x, c_noise), actions, generator
        )

    @torch.no_grad()
    def sample(
        self,
        features: torch.Tensor,
        lang: torch.Tensor,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        sigma_min: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, chunk, action_dim) normalised actions. Deterministic given ``generator`` (or
        ``noise``) in eval mode; in train mode dropout draws from the global RNG."""
        context = self.dit.encode(self.condition_tokens(features, lang, state))
        cfg = self.config.dit
        return self.diffusion.sample(
            lambda x, c_noise: self.dit.decode(context, x, c_noise),
            (features.shape[0], cfg.chunk, cfg.action_dim),
            generator=generator,
            num_steps=num_steps,
            sigma_min=sigma_min,
            device=context.device,
            dtype=context.dtype,
            noise=noise,
        )

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the Video Former, the condition embeddings and the DiT head."""
        embeddings = [self.video_token_projection, self.language_projection, self.state_projection]
        null_state = 0 if self.null_state is None else self.null_state.numel()
        return {
            "video_former": _count(self.video_former),
            "condition_embeddings": sum(_count(m) for m in embeddings if m is not None) + null_state,
            "dit": _count(self.dit),
            "total": _count(self),
        }


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Training the policy head on (observation, action chunk) windows, with the TVP frozen.

The loop, checkpoints and multi-process story are ``vpp.tvp.trainer``'s. Added here: AdamW with
the official betas (0.9, 0.9) and weight decay 0.05 on the weight matrices of linear layers only
(not on biases, LayerNorm gains, learnable queries or position/time/null embeddings, which decay
would pull towards zero for no regularising benefit), a tri-stage LR (2% warm-up from a tenth of
the peak, 8% hold, cosine decay over the rest) or plain cosine, and an EMA of the head's weights
that is checkpointed and used for the saved model (the official code kept one but never saved it).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vpp.policy.config import PolicyTrainConfig
from vpp.policy.data import NoValidEpisodesError, PolicyWindowDataset, UnreadableEpisodeError, collate_windows
from vpp.policy.feature_cache import FeatureCache
from vpp.policy.policy import POLICY_CONFIG, VideoPredictionPolicy
from vpp.tvp.trainer import AcceleratedTrainer

logger = logging.getLogger(__name__)

# Draws of one sample that may hit unreadable episodes before the run gives up on the data.
MAX_REDRAWS = 32


def lr_multiplier(step: int, config: PolicyTrainConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if config.lr_schedule == "constant":
        return 1.0
    total = max(config.max_steps, 1)
    final = config.final_lr / config.learning_rate
    if config.lr_schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    warmup = int(config.warmup_fraction * total)
    hold = int(config.hold_fraction * total)
    if step < warmup:
        return config.initial_lr_scale + (1 - config.initial_lr_scale) * step / warmup
    if step < warmup + hold:
        return 1.0
    progress = min((step - warmup - hold) / max(total - warmup - hold, 1), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def weight_decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: the ``weight`` of every ``nn.Linear`` (attention projections
    included) with ``weight_decay``, every other trainable parameter without."""
    decay = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear)}
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


class SampledWindows(torch.utils.data.Dataset):
    """Sample number j -> a window drawn by (seed, j): random access for the step-indexed loop.

    A window of an episode found unreadable (now or earlier) is replaced by the next draw of the
    same generator, so the stream stays a function of (seed, j) and of which files are broken."""

    def __init__(
        self, windows: PolicyWindowDataset, seed: int, feature_cache: FeatureCache | None = None
    ) -> None:
        self.windows = windows
        self.seed = seed
        self.feature_cache = feature_cache

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, j: int) -> dict:
        rng = np.random.default_rng([self.seed, int(j)])
        for _ in range(MAX_REDRAWS):
            index = int(rng.integers(len(self.windows)))
            e, _ = self.windows.windows[index]
            if e in self.windows.unreadable:
                continue
            try:
                return self._load(index)
            except UnreadableEpisodeError as error:
                self.windows.mark_unreadable(e, error)
        raise NoValidEpisodesError(
            f"{MAX_REDRAWS} draws in a row hit unreadable episodes:\n{self.windows.report.summary()}"
        )

    def _load(self, index: int) -> dict:
        if self.feature_cache is None:
            return self.windows[index]
        item = self.windows.item(index, with_images=False)
        item["features"] = self.feature_cache.features_for(self.windows, index)
        return item


class ExponentialMovingAverage:
    """Shadow weights with the usual warm-up, min(decay, (1 + t) / (10 + t)), so short runs are
    not dominated by the initial weights."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[name].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.shadow[name].copy_(value)


class PolicyTrainer(AcceleratedTrainer):
    name = "policy train"

    def __init__(
        self,
        policy: VideoPredictionPolicy,
        windows: PolicyWindowDataset,
        config: PolicyTrainConfig,
        feature_cache: FeatureCache | None = None,
    ) -> None:
        self.ema: ExponentialMovingAverage | None = None
        super().__init__(policy, SampledWindows(windows, config.seed, feature_cache), collate_windows, config)

    def prepare_model(self, policy: VideoPredictionPolicy, checkpoint: Path | None) -> VideoPredictionPolicy:
        base = self.output_dir / "base"
        if checkpoint is not None:
            # the normalisation bounds and TVP of the run are the ones saved at its start
            policy = VideoPredictionPolicy.from_pretrained(base)
        elif self.accelerator.is_main_process and not (base / POLICY_CONFIG).is_file():
            policy.save_pretrained(base)
        if self.config.ema_decay > 0:
            self.ema = ExponentialMovingAverage(policy.head, self.config.ema_decay)
            if checkpoint is not None:
                self.ema.shadow.update(load_file(checkpoint / "ema.safetensors"))
        return policy

    def make_optimizer(self, policy: VideoPredictionPolicy):
        cfg = self.config
        groups = weight_decay_groups(policy.head, cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
        return optimizer, scheduler

    def trainable_state(self, policy: VideoPredictionPolicy) -> dict[str, torch.Tensor]:
        return dict(policy.head.state_dict())

    def load_trainable(self, policy: VideoPredictionPolicy, state: dict[str, torch.Tensor]) -> None:
        policy.head.load_state_dict(state)

    def compute_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.model(batch, generator)

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.unwrapped.head, step)

    def extra_checkpoint_files(self, folder: Path) -> None:
        if self.ema is not None:
            save_file({k: v.contiguous() for k, v in self.ema.shadow.items()}, folder / "ema.safetensors")

    def finish(self) -> None:
        policy = self.unwrapped
        trained = {k: v.detach().clone() for k, v in policy.head.state_dict().items()}
        if self.ema is not None:
            policy.head.load_state_dict(self.ema.shadow)
        policy.save_pretrained(self.output_dir / "model")
        policy.head.load_state_dict(trained)
        logger.info(
            "trained policy written to %s (EMA weights: %s)", self.output_dir / "model", self.ema is not None
        )

"""Fine-tuning the TVP with the EDM objective on a clip mixture, through accelerate.

One entry point for one CPU process, several GPUs or several nodes: ``accelerate launch`` (or
torchrun) starts the processes, this code only asks accelerate for its rank and world size.
Each process draws its own deterministic share of samples for every step (see ``data.mixture``),
so a resumed run repeats exactly the batches, noise and losses it would have had.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vpp.tvp.checkpoint import latest_checkpoint, read_state, write_checkpoint
from vpp.tvp.data.mixture import MixtureClipDataset, collate_clips
from vpp.tvp.model import TextGuidedVideoPredictor

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    output_dir: str
    max_steps: int = 1000
    batch_size: int = 6
    learning_rate: float = 5e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "constant_with_warmup", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0


class StepBatchSampler(torch.utils.data.Sampler):
    """Sample numbers for steps ``start..stop-1`` of this process: pure functions of the step."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int, world: int, accumulation: int) -> None:
        self.start, self.stop = start, stop
        self.batch_size, self.rank, self.world, self.accumulation = batch_size, rank, world, accumulation

    def __iter__(self):
        for step in range(self.start, self.stop):
            for micro in range(self.accumulation):
                first = ((step * self.accumulation + micro) * self.world + self.rank) * self.batch_size
                yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accumulation


def _noise_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, micro, rank)) & 0x7FFF_FFFF_FFFF_FFFF)


class TVPTrainer:
    """Trains ``model``'s UNet (and text projection) on ``dataset``; resumes from ``output_dir``."""

    def __init__(self, model: TextGuidedVideoPredictor, dataset: MixtureClipDataset, config: TrainConfig) -> None:
        self.config = config
        self.dataset = dataset
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            # without cpu=True, accelerate ignores torchrun's process group on machines with no GPU
            cpu=not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        logger.info("process %d of %d on %s", self.accelerator.process_index, self.accelerator.num_processes, self.accelerator.device)
        self.start_step = 0
        self.base_dir = self.output_dir / "base"
        checkpoint = latest_checkpoint(self.output_dir / "checkpoints")
        if checkpoint is not None:
            # The frozen VAE/text encoder of the run are the ones saved at its start.
            model = TextGuidedVideoPredictor.from_pretrained(self.base_dir)
            self._load_trainable(model, checkpoint)
        elif self.accelerator.is_main_process and not (self.base_dir / "tvp_config.json").is_file():
            model.save_pretrained(self.base_dir)
        if config.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
        )
        if checkpoint is not None:
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
            self.start_step = read_state(checkpoint)["step"]
            logger.info("resuming from %s at step %d", checkpoint, self.start_step)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, self.optimizer, self.scheduler)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        if self.accelerator.is_main_process:
            self._truncate_metrics(self.start_step)
            (self.output_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2))

    @staticmethod
    def _trainable_state(model: TextGuidedVideoPredictor) -> dict[str, torch.Tensor]:
        state = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
        if model.text_projection is not None:
            state.update({f"text_projection.{k}": v for k, v in model.text_projection.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    @staticmethod
    def _load_trainable(model: TextGuidedVideoPredictor, checkpoint: Path) -> None:
        state = load_file(checkpoint / "trainable.safetensors", device="cpu")
        model.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        if model.text_projection is not None:
            model.text_projection.load_state_dict(
                {k[16:]: v for k, v in state.items() if k.startswith("text_projection.")}
            )

    def _truncate_metrics(self, step: int) -> None:
        if not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _save(self, step: int) -> None:
        model = self.accelerator.unwrap_model(self.model)

        def write(folder: Path) -> None:
            save_file(self._trainable_state(model), folder / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

        state = {"seed": self.config.seed, "num_processes": self.accelerator.num_processes}
        write_checkpoint(self.output_dir / "checkpoints", step, write, state, self.config.keep_checkpoints)

    def _latents(self, batch: dict) -> torch.Tensor:
        model = self.accelerator.unwrap_model(self.model)
        if "latents" in batch:
            return batch["latents"].to(model.device)
        return model.encode_video(batch["video"].to(model.device))

    def train(self, stop_after: int | None = None) -> list[float]:
        """Runs to ``max_steps`` (or ``stop_after`` steps, for tests); returns this call's losses."""
        cfg = self.config
        acc = self.accelerator
        stop = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.start_step + stop_after)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=StepBatchSampler(
                self.start_step, stop, cfg.batch_size, acc.process_index, acc.num_processes, cfg.gradient_accumulation_steps
            ),
            collate_fn=collate_clips,
            num_workers=cfg.num_workers,
        )
        model = acc.unwrap_model(self.model)
        losses: list[float] = []
        step = self.start_step
        micro = 0
        running = 0.0
        progress = tqdm(total=stop, initial=step, desc="tvp train", disable=not acc.is_local_main_process)
        self.model.train()
        for batch in loader:
            with acc.accumulate(self.model):
                text_hidden = model.encode_text(batch["instruction"])[0]
                latents = self._latents(batch)
                loss = self.model(latents, text_hidden, _noise_generator(cfg.seed, step, micro, acc.process_index))
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            running += acc.gather(loss.detach().reshape(1)).mean().item() / cfg.gradient_accumulation_steps
            micro += 1
            if micro < cfg.gradient_accumulation_steps:
                continue
            micro = 0
            step += 1
            losses.append(running)
            progress.update(1)
            progress.set_postfix(loss=f"{running:.4f}")
            if not math.isfinite(running):
                raise FloatingPointError(f"loss is {running} at step {step}; lower the learning rate or check the data")
            if acc.is_main_process and (step % cfg.log_every == 0 or step == stop):
                with self.metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, "loss": running, "lr": self.scheduler.get_last_lr()[0]}) + "\n")
            running = 0.0
            if step % cfg.checkpoint_every == 0 or step == stop:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._save(step)
        progress.close()
        self.start_step = step
        if step >= cfg.max_steps and acc.is_main_process:
            model.save_pretrained(self.output_dir / "model")
            logger.info("trained model written to %s", self.output_dir / "model")
        return losses


def fit_vae(
    model: TextGuidedVideoPredictor,
    dataset: MixtureClipDataset,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    kl_weight: float = 1e-6,
    seed: int = 0,
) -> list[float]:
    """Fits the VAE to reconstruct the dataset's frames, for presets trained without SVD's
    pretrained VAE (a random VAE makes every generated video noise). The VAE is frozen again
    afterwards, as in TVP training."""
    vae = model.vae
    vae.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in tqdm(range(steps), desc="vae fit"):
        clips = collate_clips([dataset[step * batch_size + i] for i in range(batch_size)])
        if "video" not in clips:
            raise ValueError("fit_vae needs frames; detach the latent cache first")
        frames = clips["video"].flatten(0, 1).to(model.device)
        posterior = vae.encode(frames).latent_dist
        latents = posterior.sample(generator=generator)
        recon = vae.decode(latents, num_frames=clips["video"].shape[1]).sample
        loss = torch.nn.functional.mse_loss(recon, frames) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    vae.eval()
    vae.requires_grad_(False)
    return losses

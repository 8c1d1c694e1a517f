"""The training loop both stages share: accelerate, deterministic per-step data and noise,
atomic resumable checkpoints, loss logging and a progress bar.

One entry point for one CPU process, several GPUs or several nodes: ``accelerate launch`` (or
torchrun) starts the processes, this code only asks accelerate for its rank and world size.
Each process draws its own share of sample numbers for every step, and every random draw of a
step comes from a generator seeded with (seed, step, micro-batch, rank), so a resumed run
repeats exactly the batches, noise and losses it would have had.
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vpp.tvp.checkpoint import latest_checkpoint, read_state, write_checkpoint
from vpp.tvp.config import TrainingLoopConfig
from vpp.tvp.plots import write_metrics_curve

logger = logging.getLogger(__name__)


class StepBatchSampler(torch.utils.data.Sampler):
    """Sample numbers for steps ``start..stop-1`` of this process: pure functions of the step."""

    def __init__(
        self, start: int, stop: int, batch_size: int, rank: int, world: int, accumulation: int
    ) -> None:
        self.start, self.stop = start, stop
        self.batch_size, self.rank, self.world, self.accumulation = batch_size, rank, world, accumulation

    def __iter__(self):
        for step in range(self.start, self.stop):
            for micro in range(self.accumulation):
                first = ((step * self.accumulation + micro) * self.world + self.rank) * self.batch_size
                yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accumulation


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, micro, rank)) & 0x7FFF_FFFF_FFFF_FFFF)


class AcceleratedTrainer(ABC):
    """Subclasses say what trains (``trainable_state``/``load_trainable``) and what the loss of a
    batch is (``compute_loss``); ``config`` is a :class:`TrainingLoopConfig` (the subclass of each run
    adds its optimiser's fields), saved as ``train_config.json`` in the run folder."""

    name = "train"

    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        collate: Callable[[Sequence[dict]], dict],
        config: TrainingLoopConfig,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.collate = collate
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            # without cpu=True, accelerate ignores torchrun's process group on machines with no GPU
            cpu=not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        acc = self.accelerator
        logger.info("process %d of %d on %s", acc.process_index, acc.num_processes, acc.device)
        self.start_step = 0
        self.checkpoint = latest_checkpoint(self.output_dir / "checkpoints")
        model = self.prepare_model(model, self.checkpoint)
        if self.checkpoint is not None:
            self.load_trainable(model, load_file(self.checkpoint / "trainable.safetensors", device="cpu"))
        self.optimizer, self.scheduler = self.make_optimizer(model)
        if self.checkpoint is not None:
            self.optimizer.load_state_dict(torch.load(self.checkpoint / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(self.checkpoint / "scheduler.pt", weights_only=True))
            self.start_step = read_state(self.checkpoint)["step"]
            logger.info("resuming from %s at step %d", self.checkpoint, self.start_step)
        # The scheduler is not prepared: accelerate's wrapper steps it once per process for every
        # optimizer step, so on N processes a schedule would end at max_steps / N. Here it steps
        # once per optimizer step, and max_steps counts optimizer steps on any number of processes.
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        # Clipping sees only what the optimizer steps: a frozen module's leftover .grad would
        # otherwise shrink every update by a constant that a resumed process no longer has.
        self.trained_parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.metrics_path = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_metrics(self.start_step)
            config.save(self.output_dir / "train_config.json")

    # -- what subclasses provide ------------------------------------------------------------

    def prepare_model(self, model: torch.nn.Module, checkpoint: Path | None) -> torch.nn.Module:
        """Called before the optimizer exists: the model to train (e.g. reloaded for a resume)."""
        return model

    @abstractmethod
    def make_optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, object]: ...

    @abstractmethod
    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_trainable(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def compute_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor: ...

    def after_step(self, step: int) -> None:
        """Called on every process after each optimizer step (EMA updates)."""

    def extra_checkpoint_files(self, folder: Path) -> None:
        """Called on the main process while a checkpoint is written."""

    def finish(self) -> None:
        """Called on the main process when max_steps is reached."""

    # -- the loop -----------------------------------------------------------------------------

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _truncate_metrics(self, step: int) -> None:
        if not self.metrics_path.is_file():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _save(self, step: int) -> None:
        def write(folder: Path) -> None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.trainable_state(self.unwrapped).items()},
                folder / "trainable.safetensors",
            )
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            self.extra_checkpoint_files(folder)

        state = {"seed": self.config.seed, "num_processes": self.accelerator.num_processes}
        write_checkpoint(self.output_dir / "checkpoints", step, write, state, self.config.keep_checkpoints)
        write_metrics_curve(
            self.metrics_path, self.output_dir / "loss.png", f"{self.name}: {self.output_dir.name}"
        )

    def train(self, stop_after: int | None = None) -> list[float]:
        """Runs to ``max_steps`` (or ``stop_after`` more steps, for tests); returns this call's losses."""
        cfg = self.config
        acc = self.accelerator
        stop = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.start_step + stop_after)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=StepBatchSampler(
                self.start_step,
                stop,
                cfg.batch_size,
                acc.process_index,
                acc.num_processes,
                cfg.gradient_accumulation_steps,
            ),
            collate_fn=self.collate,
            num_workers=cfg.num_workers,
        )
        losses: list[float] = []
        step, micro, running = self.start_step, 0, 0.0
        progress = tqdm(total=stop, initial=step, desc=self.name, disable=not acc.is_local_main_process)
        self.model.train()
        for batch in loader:
            with acc.accumulate(self.model):
                loss = self.compute_loss(batch, step_generator(cfg.seed, step, micro, acc.process_index))
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.trained_parameters, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            running += acc.gather(loss.detach().reshape(1)).mean().item() / cfg.gradient_accumulation_steps
            micro += 1
            if micro < cfg.gradient_accumulation_steps:
                continue
            micro = 0
            step += 1
            lr = self.scheduler.get_last_lr()[0]  # what this step trained with
            self.scheduler.step()
            self.after_step(step)
            losses.append(running)
            progress.update(1)
            progress.set_postfix(loss=f"{running:.4f}")
            if not math.isfinite(running):
                raise FloatingPointError(
                    f"loss is {running} at step {step}; lower the learning rate or check the data"
                )
            if acc.is_main_process and (step % cfg.log_every == 0 or step == stop):
                with self.metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, "loss": running, "lr": lr}) + "\n")
            running = 0.0
            if step % cfg.checkpoint_every == 0 or step == stop:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._save(step)
        progress.close()
        self.start_step = step
        if step >= cfg.max_steps and acc.is_main_process:
            self.finish()
        return losses

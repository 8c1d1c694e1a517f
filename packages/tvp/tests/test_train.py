import json
import shutil

import imageio.v3 as iio
import pytest
import torch

from vpp.tvp.checkpoint import latest_checkpoint
from vpp.tvp.model import TextGuidedVideoPredictor
from vpp.tvp.train import TrainConfig, TVPTrainer, fit_vae


def make_trainer(output, dataset, steps=6, lr=1e-3, every=3, model=None):
    torch.manual_seed(0)
    model = model if model is not None else TextGuidedVideoPredictor.from_preset("tiny")
    config = TrainConfig(
        output_dir=str(output),
        max_steps=steps,
        batch_size=2,
        learning_rate=lr,
        checkpoint_every=every,
        log_every=1,
    )
    return TVPTrainer(model, dataset, config)


def test_killed_run_resumes_with_the_same_loss_curve(tmp_path, squares_dataset):
    straight = make_trainer(tmp_path / "straight", squares_dataset).train()
    assert len(straight) == 6

    first = make_trainer(tmp_path / "resumed", squares_dataset).train(stop_after=4)  # "killed" after step 4
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-00000004"
    # a checkpoint half-written when the process died is ignored
    (tmp_path / "resumed" / "checkpoints" / ".tmp-step-00000005").mkdir()
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-00000004")  # lose the last one too
    resumed = make_trainer(tmp_path / "resumed", squares_dataset)
    assert resumed.start_step == 3
    rest = resumed.train()
    assert len(rest) == 3
    assert first[:3] + rest == pytest.approx(straight, rel=1e-5, abs=1e-7)
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in logged] == pytest.approx(straight, rel=1e-5, abs=1e-7)
    assert (tmp_path / "resumed" / "model" / "config.json").is_file()
    curve = iio.imread(tmp_path / "resumed" / "loss.png")
    assert curve.shape[:2] == (400, 700) and curve.std() > 0


def train_unet(output, model, dataset, steps=3):
    config = TrainConfig(
        output_dir=str(output),
        max_steps=steps,
        batch_size=2,
        learning_rate=1e-3,
        checkpoint_every=100,
        log_every=1,
    )
    trainer = TVPTrainer(model, dataset, config)
    losses = trainer.train()
    return losses, {k: v.clone() for k, v in trainer.unwrapped.unet.state_dict().items()}


def test_frozen_parameters_gradients_do_not_enter_clipping(tmp_path, squares_dataset):
    torch.manual_seed(0)
    stale = TextGuidedVideoPredictor.from_preset("tiny")
    clean = TextGuidedVideoPredictor.from_preset("tiny")
    clean.load_state_dict(stale.state_dict())
    # gradients left on the frozen VAE (as an earlier fit could leave them) must not scale the UNet's update
    for p in stale.vae.parameters():
        p.grad = torch.ones_like(p)
    stale_losses, stale_unet = train_unet(tmp_path / "stale", stale, squares_dataset)
    clean_losses, clean_unet = train_unet(tmp_path / "clean", clean, squares_dataset)
    assert stale_losses == pytest.approx(clean_losses, rel=1e-6)
    for name, tensor in clean_unet.items():
        torch.testing.assert_close(stale_unet[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_fit_vae_leaves_no_gradients_and_a_resumed_run_repeats_the_straight_one(tmp_path, squares_dataset):
    def fitted_model():
        torch.manual_seed(0)
        model = TextGuidedVideoPredictor.from_preset("tiny")
        fit_vae(model, squares_dataset, steps=3, batch_size=4)
        return model

    model = fitted_model()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []
    assert not any(p.requires_grad for p in model.vae.parameters())
    straight = make_trainer(tmp_path / "straight", squares_dataset, model=model, steps=4, every=2).train()
    first = make_trainer(tmp_path / "resumed", squares_dataset, model=fitted_model(), steps=4, every=1).train(
        stop_after=1
    )
    # the resumed process rebuilds the model from base/, where no fitting gradients exist
    rest = make_trainer(tmp_path / "resumed", squares_dataset, steps=4, every=1).train()
    assert first + rest == pytest.approx(straight, rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_tiny_model_overfits_a_fixed_clip_set(tmp_path, squares_dataset):
    trainer = make_trainer(tmp_path, squares_dataset, steps=150, lr=2e-3, every=1000)
    model = trainer.accelerator.unwrap_model(trainer.model)
    batch = [squares_dataset[j] for j in range(8)]
    video = torch.stack([b["video"] for b in batch])
    instructions = [b["instruction"] for b in batch]

    def eval_loss():
        # the same noise and noise levels every time: only the weights change
        model.eval()
        with torch.no_grad():
            latents = model.encode_video(video)
            hidden = model.encode_text(instructions)[0]
            return (
                sum(
                    model.training_loss(latents, hidden, torch.Generator().manual_seed(s)).item()
                    for s in range(4)
                )
                / 4
            )

    before = eval_loss()
    trainer.train()
    after = eval_loss()
    assert after < before / 3, (before, after)


def test_mixed_precision_and_gradient_checkpointing_train(tmp_path, squares_dataset):
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset("tiny")
    config = TrainConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        batch_size=2,
        learning_rate=1e-3,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        checkpoint_every=2,
    )
    trainer = TVPTrainer(model, squares_dataset, config)
    before = {
        k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).unet.state_dict().items()
    }
    losses = trainer.train()
    after = trainer.accelerator.unwrap_model(trainer.model).unet.state_dict()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.accelerator.unwrap_model(trainer.model).unet.is_gradient_checkpointing
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_the_same_entry_point_runs_distributed_under_torchrun(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "vpp.tvp.cli",
        "train",
        "--preset",
        "tiny",
        "--data",
        "builtin:squares",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
        "--output",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    state = json.loads((tmp_path / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_the_lr_schedule_counts_optimizer_steps_whatever_the_number_of_processes(tmp_path, squares_dataset):
    from accelerate.state import AcceleratorState, PartialState
    from diffusers.optimization import get_scheduler

    torch.manual_seed(0)
    config = TrainConfig(
        output_dir=str(tmp_path),
        max_steps=4,
        batch_size=1,
        learning_rate=1e-3,
        lr_schedule="cosine",
        warmup_steps=1,
        checkpoint_every=100,
        log_every=1,
    )
    trainer = TVPTrainer(TextGuidedVideoPredictor.from_preset("tiny"), squares_dataset, config)
    # this process as rank 0 of two, as accelerate's state reports it under torchrun
    for state in (AcceleratorState, PartialState):
        state._shared_state["num_processes"] = 2
    assert trainer.accelerator.num_processes == 2
    trainer.train()
    logged = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    reference = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=4)
    used = []
    for _ in range(4):
        used.append(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()
    # step k trains with the schedule's value at k - 1: warm-up from 0, then cosine down to 0 at max_steps
    assert logged == pytest.approx(used)
    assert used[0] == 0 and used[1] == pytest.approx(1e-3) and 0 < used[3] < used[2] < 1e-3


@pytest.mark.slow
def test_fit_vae_beats_the_mean_frame_and_scales_latents_to_unit_std(tmp_path, squares_dataset):
    torch.manual_seed(0)
    model = TextGuidedVideoPredictor.from_preset("tiny")
    # one clip (8 frames) a step, ~8 s here; margins 2.0-2.3 dB over model seeds 0-2 (0.04 dB before
    # the temporal decoder started per frame)
    fit_vae(model, squares_dataset, steps=30, learning_rate=3e-3, batch_size=1)
    # held-out windows: sample numbers the fit never drew
    video = torch.stack([squares_dataset[10**6 + i]["video"] for i in range(16)])
    latents = model.encode_video(video)
    reconstruction = model.decode_latents(latents)
    mean_frame = video.mean(dim=(0, 1), keepdim=True)
    psnr = 10 * torch.log10(4 / ((reconstruction - video) ** 2).mean()).item()
    mean_frame_psnr = 10 * torch.log10(4 / ((mean_frame - video) ** 2).mean()).item()
    assert psnr > mean_frame_psnr + 1.5, (psnr, mean_frame_psnr)
    assert latents.std().item() == pytest.approx(1.0, abs=0.1)

    model.save_pretrained(tmp_path / "tvp")
    loaded = TextGuidedVideoPredictor.from_pretrained(tmp_path / "tvp")
    assert loaded.scaling_factor == model.scaling_factor == model.config.vae["scaling_factor"] != 0.18215

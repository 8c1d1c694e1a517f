"""Policy training on LeRobot data: seeding, optimiser groups, task selection, broken videos."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from vpp.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from vpp.policy.cli import keep_first_episodes_per_task
from vpp.policy.cli import main as policy_cli
from vpp.policy.data import (
    ArrayEpisodeSource,
    LeRobotEpisodeSource,
    NoValidEpisodesError,
    PolicyWindowDataset,
)
from vpp.policy.feature_cache import FeatureCache
from vpp.policy.policy import VideoPredictionPolicy, VPPConfig
from vpp.policy.train import PolicyTrainConfig, PolicyTrainer

CAMERA = "observation.images.corner"


# these trainings run on one torch thread, as they did when their margins were recorded
pytestmark = pytest.mark.usefixtures("one_thread")


def write_dataset(root: Path, tasks: list[str], length: int = 8, separate_video_files: bool = True) -> Path:
    """One episode per entry of ``tasks``; with ``separate_video_files`` each episode's video is a
    file of its own, so breaking one file breaks exactly one episode."""
    features = {
        CAMERA: {"dtype": "video", "shape": (32, 32, 3)},
        "action": {"dtype": "float32", "shape": (2,)},
        "observation.state": {"dtype": "float32", "shape": (3,)},
    }
    size_mb = 0.001 if separate_video_files else 100.0
    writer = LeRobotDatasetWriter(root, fps=10, features=features, video_files_size_in_mb=size_mb)
    rng = np.random.default_rng(len(tasks))
    for task in tasks:
        writer.add_episode(
            {
                CAMERA: rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
                "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                "observation.state": rng.normal(size=(length, 3)).astype(np.float32),
            },
            task=task,
        )
    writer.finalize()
    return root


def video_of(root: Path, episode: int) -> Path:
    return LeRobotDataset(root).episode(episode).video_path(CAMERA)


def truncate(path: Path) -> None:
    """Half a file, as a copy cut short leaves it: its index (at the end of an mp4) is gone."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_frames(path: Path) -> None:
    """The file still opens and lists its frames, but no frame decodes (any codec)."""
    data = bytearray(path.read_bytes())
    start, index = data.find(b"mdat") + 8, data.find(b"moov")
    assert 8 < start < index, "expected mdat before moov, as PyAV writes mp4"
    data[start : index - 4] = bytes(index - 4 - start)
    path.write_bytes(bytes(data))


def train_cli(data: list[Path], output: Path, *extra: str) -> None:
    args = [
        "train",
        "--camera",
        "corner",
        "--chunk",
        "2",
        "--head-preset",
        "tiny",
        "--batch-size",
        "3",
        "--output",
        str(output),
    ]
    for path in data:
        args += ["--data", str(path)]
    policy_cli(args + list(extra))


def logged_losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- seeding --------------------------------------------------------------------------------


def test_same_seed_with_a_trained_tvp_gives_identical_runs(tmp_path, tvp):
    data = write_dataset(tmp_path / "data", ["reach the goal", "press the button"])
    tvp.save_pretrained(tmp_path / "tvp")
    runs = []
    for name, global_seed in (("a", 1), ("b", 2)):
        # what two fresh processes differ in: the global RNG state when the head is built
        torch.manual_seed(global_seed)
        # the small head has dropout, which draws from the global RNG during training
        train_cli(
            [data],
            tmp_path / name,
            "--tvp",
            str(tmp_path / "tvp"),
            "--head-preset",
            "small",
            "--steps",
            "12",
            "--seed",
            "5",
            "--feature-cache",
            str(tmp_path / "features"),
        )
        runs.append(tmp_path / name)
    assert logged_losses(runs[0]) == logged_losses(runs[1])
    assert len(logged_losses(runs[0])) == 2  # steps 10 and 12
    for name in ("model.safetensors", "config.json"):
        assert (runs[0] / "model" / name).read_bytes() == (runs[1] / "model" / name).read_bytes()


# -- optimiser ------------------------------------------------------------------------------


def test_weight_decay_only_on_linear_weight_matrices(tmp_path, tvp):
    episodes = [
        {
            "frames": {"corner": np.zeros((6, 32, 32, 3), np.uint8)},
            "actions": np.linspace(0, 1, 12).reshape(6, 2),
            "state": np.linspace(0, 1, 18).reshape(6, 3),
            "instruction": "reach",
        }
    ]
    windows = PolicyWindowDataset(
        [ArrayEpisodeSource(episodes)], ["corner"], chunk=2, image_size=32, state_dim=3
    )
    config = VPPConfig(cameras=["corner"], action_dim=2, chunk=2, state_dim=3, state_dropout=0.3)
    policy = VideoPredictionPolicy.build(
        tvp, config, windows.all_actions(), windows.all_states(), head_preset="tiny", seed=0
    )
    trainer = PolicyTrainer(
        policy, windows, PolicyTrainConfig(output_dir=str(tmp_path / "run"), weight_decay=0.07)
    )
    decay_of = {
        id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]
    }
    names = dict(policy.head.named_parameters())
    assert set(decay_of) == {id(p) for p in names.values()}
    decayed = {name for name, p in names.items() if decay_of[id(p)] == 0.07}
    linear_weights = {
        f"{module}.weight" for module, m in policy.head.named_modules() if isinstance(m, torch.nn.Linear)
    }
    assert decayed == linear_weights
    # what is left undecayed: biases, norms, and the learnt tokens and embeddings
    assert "video_former.queries" not in decayed and "video_former.time_embedding" not in decayed
    assert "dit.action_position" not in decayed and "null_state" not in decayed
    assert not any(name.endswith(".bias") for name in decayed)
    norms = {
        f"{module}.weight"
        for module, m in policy.head.named_modules()
        if isinstance(m, torch.nn.LayerNorm) and m.weight is not None
    }
    assert norms and not norms & decayed
    # attention projections are linear layers, so they are decayed
    assert "dit.encoder_blocks.0.attention.to_q.weight" in decayed


def test_cli_passes_optimiser_and_head_options(tmp_path, tvp):
    data = write_dataset(tmp_path / "data", ["reach the goal", "press the button"])
    train_cli(
        [data],
        tmp_path / "run",
        "--steps",
        "2",
        "--weight-decay",
        "0.01",
        "--ema-decay",
        "0.5",
        "--warmup-fraction",
        "0.2",
        "--state-dropout",
        "0.25",
        "--feature-position-embedding",
    )
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["weight_decay"], saved["ema_decay"], saved["warmup_fraction"]) == (0.01, 0.5, 0.2)
    head = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["head"]
    assert head["state_dropout"] == 0.25 and head["video_former"]["feature_position_embedding"]
    # without a state token there is nothing to drop: --no-state trains with the default dropout
    train_cli([data], tmp_path / "no_state", "--steps", "2", "--no-state")
    head = json.loads((tmp_path / "no_state" / "model" / "config.json").read_text())["head"]
    assert head["state_dim"] is None and head["state_dropout"] == 0.0


def test_cli_trains_on_the_early_exit_features(tmp_path):
    """--feature-blocks: the head trains on the named up-blocks' features only, and the saved
    policy keeps that choice (the export then traces the UNet only that far)."""
    data = write_dataset(tmp_path / "data", ["reach the goal"])
    train_cli([data], tmp_path / "run", "--steps", "1", "--feature-blocks", "0")
    policy = VideoPredictionPolicy.from_pretrained(tmp_path / "run" / "model")
    assert policy.tvp.config.features.blocks == (0,)
    assert policy.head.config.video_former.input_channels == policy.tvp.config.feature_channels
    assert (
        policy.tvp.config.feature_channels
        < dataclasses.replace(
            policy.tvp.config, features=dataclasses.replace(policy.tvp.config.features, blocks=None)
        ).feature_channels
    )
    with pytest.raises(SystemExit):
        train_cli([data], tmp_path / "bad", "--steps", "1", "--feature-blocks", "1,0")


# -- which episodes ---------------------------------------------------------------------------


def test_episodes_per_task_counts_tasks_not_instruction_texts(tmp_path):
    # door-lock / door-unlock style: 20-byte-identical prefixes, and in the second dataset a task
    # whose instruction reads exactly like one of the first dataset's
    lock, unlock = "turn the lock on the door down", "turn the lock on the door up"
    first = write_dataset(tmp_path / "first", [lock, unlock, lock, unlock], separate_video_files=False)
    second = write_dataset(tmp_path / "second", [lock, lock], separate_video_files=False)
    sources = [LeRobotEpisodeSource(first), LeRobotEpisodeSource(second)]
    windows = PolicyWindowDataset(sources, ["corner"], chunk=2, image_size=32, state_dim=3)
    keep_first_episodes_per_task(windows, 1)
    kept = sorted({windows.episodes[e].key for e, _ in windows.windows})
    assert kept == ["first/0", "first/1", "second/0"]


def test_episodes_per_task_uses_the_task_of_in_memory_episodes():
    def episode(instruction, task):
        return {
            "frames": {"corner": np.zeros((4, 8, 8, 3), np.uint8)},
            "actions": np.zeros((4, 2)),
            "instruction": instruction,
            "task": task,
        }

    source = ArrayEpisodeSource(
        [
            episode("open it", "drawer-open"),
            episode("open it", "window-open"),
            episode("open it", "drawer-open"),
        ]
    )
    windows = PolicyWindowDataset([source], ["corner"], chunk=2, image_size=8)
    keep_first_episodes_per_task(windows, 1)
    assert sorted({e for e, _ in windows.windows}) == [0, 1]


# -- broken videos ----------------------------------------------------------------------------


def test_a_truncated_video_is_rejected_when_indexed_naming_its_file(tmp_path):
    data = write_dataset(tmp_path / "data", ["a", "b", "c"])
    truncate(video_of(data, 1))
    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(data)], ["corner"], chunk=2, image_size=32, state_dim=3
    )
    assert [e.key for e in windows.episodes] == ["data/0", "data/2"]
    assert len(windows.report.rejected) == 1
    assert str(video_of(data, 1)) in windows.report.rejected[0] and "data/1" in windows.report.rejected[0]


@pytest.mark.parametrize("cache", [False, True], ids=["images", "feature-cache"])
@pytest.mark.parametrize("damage", [truncate, zero_frames], ids=["truncated", "undecodable"])
def test_training_goes_on_without_a_broken_episode(tmp_path, caplog, cache, damage):
    data = write_dataset(tmp_path / "data", ["a", "b", "c"])
    broken = video_of(data, 1)
    damage(broken)
    extra = ["--feature-cache", str(tmp_path / "features")] if cache else []
    with caplog.at_level(logging.WARNING):
        train_cli([data], tmp_path / "run", "--steps", "6", *extra)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert len(logged_losses(tmp_path / "run")) == 1 and np.isfinite(logged_losses(tmp_path / "run")).all()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "data/1" in r.getMessage()
    ]
    assert warnings and str(broken) in warnings[0]


def test_undecodable_episode_is_skipped_and_counted_when_first_read(tmp_path, tvp):
    data = write_dataset(tmp_path / "data", ["a", "b", "c"])
    zero_frames(video_of(data, 1))
    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(data)], ["corner"], chunk=2, image_size=32, state_dim=3
    )
    assert len(windows.episodes) == 3  # the file opens: nothing to see before decoding
    from vpp.policy.train import SampledWindows

    samples = SampledWindows(windows, seed=0)
    keys = {samples[j]["key"][0] for j in range(40)}
    assert keys == {0, 2}
    assert windows.unreadable == {1} and len(windows.report.unreadable) == 1
    assert "skipped as unreadable" in windows.report.summary()


@pytest.mark.parametrize("cache", [False, True], ids=["images", "feature-cache"])
def test_nothing_readable_is_a_clear_error(tmp_path, tvp, cache):
    data = write_dataset(tmp_path / "data", ["a", "b"])
    for episode in (0, 1):
        zero_frames(video_of(data, episode))
    windows = PolicyWindowDataset(
        [LeRobotEpisodeSource(data)], ["corner"], chunk=2, image_size=32, state_dim=3
    )
    if cache:

        def read_everything():
            FeatureCache(tmp_path / "features", tvp, ["corner"]).build(windows, tvp, progress=False)
    else:
        from vpp.policy.train import SampledWindows

        def read_everything():
            SampledWindows(windows, seed=0)[0]

    with pytest.raises(NoValidEpisodesError, match="no episode with training windows is readable") as error:
        read_everything()
    assert str(video_of(data, 0)) in str(error.value) and str(video_of(data, 1)) in str(error.value)
    truncated = write_dataset(tmp_path / "truncated", ["a"])
    truncate(video_of(truncated, 0))
    with pytest.raises(NoValidEpisodesError, match="does not open"):
        PolicyWindowDataset(
            [LeRobotEpisodeSource(truncated)], ["corner"], chunk=2, image_size=32, state_dim=3
        )

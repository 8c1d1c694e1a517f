import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vpp.tvp.cli import main


@pytest.mark.slow
def test_demo_then_generate_and_features_from_its_model(tmp_path):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--steps", "4", "--vae-steps", "2", "--sampling-steps", "2"])
    grid = iio.imread(out / "prediction.png")
    # 4 examples x (truth row + predicted row) of 8 frames at 32x32
    assert grid.shape == (8 * 32, 8 * 32, 3)
    assert (out / "prediction.gif").is_file()
    assert (out / "run" / "checkpoints" / "step-00000004").is_dir()

    first = tmp_path / "first.png"
    iio.imwrite(first, np.full((48, 64, 3), 200, dtype=np.uint8))
    model = str(out / "run" / "model")
    main(
        [
            "generate",
            "--model",
            model,
            "--image",
            str(first),
            "--instruction",
            "move the red square up",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "gen"),
        ]
    )
    assert iio.imread(tmp_path / "gen.png").shape == (32, 8 * 32, 3)

    main(
        [
            "features",
            "--model",
            model,
            "--image",
            str(first),
            "--image",
            str(first),
            "--instruction",
            "push",
            "--out",
            str(tmp_path / "f.safetensors"),
        ]
    )
    assert tuple(load_file(tmp_path / "f.safetensors")["features"].shape) == (1, 2, 8, 96, 8, 8)


def test_unknown_data_source_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown data source"):
        main(["train", "--data", "hub:ssv2", "--output", str(tmp_path)])


def vae_weights(folder):
    return {
        k.removeprefix("vae."): v
        for k, v in load_file(folder / "model.safetensors").items()
        if k.startswith("vae.")
    }


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_trains_the_fitted_vae(tmp_path, monkeypatch):
    from vpp.tvp.config import TVPConfig
    from vpp.tvp.model import TextGuidedVideoPredictor
    from vpp.tvp.train import TVPTrainer

    train = [
        "train",
        "--preset",
        "tiny",
        "--data",
        "builtin:squares",
        "--fit-vae-steps",
        "2",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--checkpoint-every",
        "1",
        "--lr",
        "1e-3",
    ]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # killed while base/ is being written
    with monkeypatch.context() as patch:
        patch.setattr(TVPConfig, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            main([*train, "--output", str(tmp_path / "mid-base")])
    assert not (tmp_path / "mid-base" / "base").exists()
    # killed after base/ was written, before the first checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(TVPTrainer, "train", killed)
        with pytest.raises(KeyboardInterrupt):
            main([*train, "--output", str(tmp_path / "after-base")])
    fitted = vae_weights(tmp_path / "after-base" / "base")
    torch.manual_seed(0)
    untrained = TextGuidedVideoPredictor.from_preset("tiny").vae.state_dict()
    assert any(not torch.equal(fitted[k], untrained[k]) for k in fitted)

    for run in ("mid-base", "after-base"):
        main([*train, "--output", str(tmp_path / run)])
        trained = vae_weights(tmp_path / run / "model")
        assert all(torch.equal(trained[k], fitted[k]) for k in fitted), run
    assert iio.imread(tmp_path / "mid-base" / "vae_fit_loss.png").shape[:2] == (400, 700)


def test_prediction_scores_rank_a_true_prediction_above_the_held_first_frame():
    from vpp.tvp.cli import prediction_scores

    # a square moving right by 2 pixels a frame over a grey background
    video = torch.full((2, 6, 3, 16, 16), -0.5)
    for t in range(6):
        video[:, t, :, 4:8, 2 * t : 2 * t + 4] = 0.8
    scores = prediction_scores(video, video + 0.01)
    assert scores["clips"] == 2 and len(scores["psnr_per_frame"]) == 6
    # an almost exact prediction: ~46 dB on every frame; holding frame 0 loses the moving square
    assert min(scores["psnr_per_frame"]) > 45
    assert scores["held_first_frame_psnr_per_frame"][0] == 100.0
    assert scores["held_first_frame_psnr_later_frames"] < 20 < scores["psnr_later_frames"]
    held = prediction_scores(video, video[:, :1].expand_as(video))
    assert held["psnr_per_frame"] == held["held_first_frame_psnr_per_frame"]

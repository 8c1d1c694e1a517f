import imageio.v3 as iio
import numpy as np
import pytest
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
    main(["generate", "--model", model, "--image", str(first), "--instruction", "move the red square up", "--steps", "2", "--out", str(tmp_path / "gen")])
    assert iio.imread(tmp_path / "gen.png").shape == (32, 8 * 32, 3)

    main(["features", "--model", model, "--image", str(first), "--image", str(first), "--instruction", "push", "--out", str(tmp_path / "f.safetensors")])
    assert tuple(load_file(tmp_path / "f.safetensors")["features"].shape) == (1, 2, 8, 96, 8, 8)


def test_unknown_data_source_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown data source"):
        main(["train", "--data", "hub:ssv2", "--output", str(tmp_path)])

import numpy as np
import pytest

from vpp.tvp.data.mixture import PAPER_TABLE8_MIXTURE, MixtureClipDataset, NoValidClipsError
from vpp.tvp.data.sources import ArrayClipSource, BadClipError


def random_video(frames: int = 10, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def test_stride_and_linspace_clip_sampling():
    rng = np.random.default_rng(0)
    robot = ArrayClipSource([random_video(40)], ["a"], stride=2)
    idx = robot.clip_indices(40, 16, rng)
    assert np.all(np.diff(idx) == 2) and idx[-1] < 40
    # too short for stride 2: the largest stride that fits
    assert np.all(np.diff(robot.clip_indices(20, 16, rng)) == 1)
    internet = ArrayClipSource([random_video(40)], ["a"], sampling="linspace")
    idx = internet.clip_indices(100, 16, rng)
    assert idx[0] == 0 and idx[-1] == 99 and len(idx) == 16
    with pytest.raises(BadClipError, match="too short"):
        robot.clip_indices(10, 16, rng)


def test_mixture_follows_weights():
    sources = [
        ArrayClipSource([random_video(8, 8, seed=i)], ["a"], name=name)
        for i, name in enumerate(["human", "robot", "own"])
    ]
    weights = {"human": 0.6, "robot": 0.3, "own": 0.1}
    dataset = MixtureClipDataset(sources, num_frames=4, image_size=8, weights=weights)
    rng = np.random.default_rng(0)
    draws = [dataset.sources[dataset.draw(rng)[0]].name for _ in range(6000)]
    for name, weight in weights.items():
        share = draws.count(name) / len(draws)
        # 4.5 standard deviations of a binomial share: fails by chance about once in 10^5 runs
        assert abs(share - weight) < 4.5 * np.sqrt(weight * (1 - weight) / len(draws)), (name, share)


def test_items_are_pure_functions_of_their_index(squares_dataset):
    a, b = squares_dataset[17], squares_dataset[17]
    assert a["instruction"] == b["instruction"]
    assert np.array_equal(a["video"].numpy(), b["video"].numpy())
    assert a["video"].shape == (8, 3, 32, 32)
    assert float(a["video"].min()) >= -1 and float(a["video"].max()) <= 1


def test_bad_clips_are_skipped_and_reported():
    def broken_reader(_indices):
        raise OSError("moov atom not found")

    good = ArrayClipSource(
        [random_video(10), random_video(3), random_video(10)], ["push", "pull", " "], name="robot"
    )
    broken = ArrayClipSource([random_video(10)], ["grasp"], name="broken")
    broken.episode = lambda i, base=broken.episode: base(i).__class__(
        **{**base(i).__dict__, "reader": broken_reader}
    )
    dataset = MixtureClipDataset([good, broken], num_frames=8, image_size=16)
    assert dataset.report.accepted == {"robot": 1, "broken": 1}
    assert dataset.report.rejected[("robot", "too short")] == 1
    assert dataset.report.rejected[("robot", "no instruction")] == 1
    instructions = {dataset[j]["instruction"] for j in range(30)}
    assert instructions == {"push"}  # the undecodable clip is replaced, never returned
    assert dataset.report.rejected[("broken", "unreadable")] > 0
    assert "moov atom" in dataset.report.summary()


def test_nothing_valid_is_a_clear_error():
    source = ArrayClipSource([random_video(3)], ["a"], name="short")
    with pytest.raises(NoValidClipsError, match="too short"):
        MixtureClipDataset([source], num_frames=8, image_size=16)


def test_weights_must_name_the_sources():
    source = ArrayClipSource([random_video(10)], ["a"], name="robot")
    with pytest.raises(ValueError, match="unknown sources"):
        MixtureClipDataset([source], num_frames=8, image_size=16, weights={"robot": 1, "ssv2": 1})


def test_paper_mixture_table_sums_to_one():
    assert sum(PAPER_TABLE8_MIXTURE.values()) == pytest.approx(1.0)


def test_video_folder_source_reads_instructions_and_frames(tmp_path):
    import json

    from vpp.data.video_io import write_video
    from vpp.tvp.data.sources import VideoFolderSource

    write_video(tmp_path / "a.mp4", random_video(20, 32, seed=1), fps=10)
    write_video(tmp_path / "b.mp4", random_video(20, 32, seed=2), fps=10)
    (tmp_path / "b.txt").write_text("wipe the table\n")
    write_video(tmp_path / "c.mp4", random_video(20, 32, seed=3), fps=10)  # no instruction
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "instructions.json").write_text(json.dumps({"a.mp4": "fold the towel", "broken.mp4": "x"}))
    source = VideoFolderSource(tmp_path)
    dataset = MixtureClipDataset([source], num_frames=8, image_size=16)
    assert dataset.report.accepted == {tmp_path.name: 2}
    assert dataset.report.rejected[(tmp_path.name, "no instruction")] == 1
    assert dataset.report.rejected[(tmp_path.name, "unreadable")] == 1
    assert {dataset[j]["instruction"] for j in range(20)} == {"fold the towel", "wipe the table"}
    # internet clips are spread over the whole video
    assert list(source.clip_indices(20, 8, np.random.default_rng(0))) == [0, 3, 5, 8, 11, 14, 16, 19]

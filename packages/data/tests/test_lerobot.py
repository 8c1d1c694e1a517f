import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpp.data.lerobot import (
    LeRobotDataset,
    LeRobotDatasetWriter,
    LeRobotFormatError,
    UnknownKeyError,
    vector_stats,
)

FPS = 10
TOP, WRIST = "observation.images.top", "observation.images.wrist"
FEATURES = {
    TOP: {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
    WRIST: {"dtype": "video", "shape": (32, 32, 3)},
    "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
    "action": {"dtype": "float32", "shape": (7,)},
}
LENGTHS = (12, 7, 20)
TASKS = ("pick up the red block", "open the drawer", "pick up the red block")


def camera(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth background + a square moving every frame: each frame is recognisably itself."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    tint = rng.integers(0, 60, size=3)
    background = np.stack([x * 2 + tint[0], y * 3 + tint[1], (x + y) + tint[2]], -1).clip(0, 255)
    frames = np.repeat(background[None], num_frames, axis=0).astype(np.uint8)
    for t in range(num_frames):
        top, left = (2 * t) % (height - 10), (3 * t) % (width - 10)
        frames[t, top : top + 10, left : left + 10] = (250, 240, 30)
    return frames


def make_episode(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        TOP: camera(length, 48, 64, seed),
        WRIST: camera(length, 32, 32, seed + 100),
        "observation.state": rng.normal(size=(length, 4)).astype(np.float32),
        "action": rng.normal(size=(length, 7)).astype(np.float32),
    }


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def write_dataset(root: Path, **writer_kwargs) -> list[dict[str, np.ndarray]]:
    episodes = [make_episode(length, seed) for seed, length in enumerate(LENGTHS)]
    with LeRobotDatasetWriter(root, FPS, FEATURES, robot_type="sim_arm", **writer_kwargs) as writer:
        for episode, task in zip(episodes, TASKS, strict=True):
            writer.add_episode(episode, task)
    return episodes


def assert_episode_matches(
    dataset: LeRobotDataset, index: int, expected: dict[str, np.ndarray], task: str
) -> None:
    episode = dataset.episode(index)
    length = len(expected["action"])
    assert (episode.index, episode.length, episode.task, episode.tasks) == (index, length, task, (task,))
    np.testing.assert_array_equal(episode.column("action"), expected["action"])
    np.testing.assert_array_equal(episode.column("observation.state"), expected["observation.state"])
    np.testing.assert_array_equal(episode.column("frame_index"), np.arange(length))
    np.testing.assert_allclose(episode.column("timestamp"), np.arange(length) / FPS, rtol=1e-6)
    wanted = [0, length // 2, length - 1, 1]
    for key in (TOP, WRIST):
        frames = episode.read_frames(key, wanted)
        for got, frame_index in zip(frames, wanted, strict=True):
            errors = [mean_abs_error(got, original) for original in expected[key]]
            assert int(np.argmin(errors)) == frame_index, (
                f"{key} frame {frame_index} of episode {index} came back as {np.argmin(errors)}"
            )
            assert errors[frame_index] < 6.0


def test_write_then_read_back(tmp_path):
    episodes = write_dataset(tmp_path / "ds")
    dataset = LeRobotDataset(tmp_path / "ds")
    assert dataset.num_episodes == 3 and len(dataset) == 3
    assert dataset.num_frames == sum(LENGTHS)
    assert dataset.fps == FPS and dataset.robot_type == "sim_arm"
    assert dataset.video_keys == [TOP, WRIST]
    assert dataset.tasks == [TASKS[0], TASKS[1]]
    assert dataset.features["observation.state"]["names"] == ["x", "y", "z", "gripper"]
    for index, (episode, task) in enumerate(zip(episodes, TASKS, strict=True)):
        assert_episode_matches(dataset, index, episode, task)
    np.testing.assert_array_equal(dataset.episode(2).column("task_index"), np.zeros(20))
    np.testing.assert_array_equal(dataset.episode(1).column("index"), np.arange(12, 19))


def test_layout_and_metadata_follow_lerobot_v3(tmp_path):
    write_dataset(tmp_path / "ds")
    root = tmp_path / "ds"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 39, 2)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert list(info["features"])[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert info["features"][TOP]["info"]["video.codec"] == "av1"
    assert info["features"][WRIST]["info"]["video.height"] == 32
    # Several episodes share one data file and one video file per camera at default sizes.
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet")) == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/tasks.parquet",
    ]
    assert len(list(root.rglob("*.mp4"))) == 2
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [row["dataset_from_index"] for row in episodes] == [0, 12, 19]
    assert [row["dataset_to_index"] for row in episodes] == [12, 19, 39]
    assert [row[f"videos/{TOP}/from_timestamp"] for row in episodes] == pytest.approx([0.0, 1.2, 1.9])
    assert [row[f"videos/{TOP}/to_timestamp"] for row in episodes] == pytest.approx([1.2, 1.9, 3.9])
    assert [row["tasks"] for row in episodes] == [[task] for task in TASKS]
    assert np.array(episodes[1]["stats/action/q99"]).shape == (7,)
    assert np.array(episodes[1][f"stats/{TOP}/mean"]).shape == (3, 1, 1)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == [TASKS[0], TASKS[1]]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column_names == [
        "observation.state",
        "action",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    action_type = data.schema.field("action").type
    assert (
        pa.types.is_fixed_size_list(action_type)
        and action_type.list_size == 7
        and action_type.value_type == pa.float32()
    )


def test_stats_are_exact_after_finalize(tmp_path):
    episodes = write_dataset(tmp_path / "ds")
    stats = LeRobotDataset(tmp_path / "ds").stats
    actions = np.concatenate([episode["action"] for episode in episodes]).astype(np.float64)
    for name in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(stats["action"][name], getattr(np, name)(actions, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    assert stats["action"]["count"].tolist() == [39]
    assert stats[TOP]["mean"].shape == (3, 1, 1)
    assert stats[TOP]["min"].min() >= 0.0 and stats[TOP]["max"].max() <= 1.0
    assert stats["frame_index"]["max"].tolist() == [19]


def test_per_episode_stats_aggregate_while_recording(tmp_path):
    root = tmp_path / "ds"
    episodes = [make_episode(length, seed) for seed, length in enumerate(LENGTHS)]
    writer = LeRobotDatasetWriter(root, FPS, FEATURES)
    for episode, task in zip(episodes, TASKS, strict=True):
        writer.add_episode(episode, task)
    writer.close()
    stats = LeRobotDataset(root).stats
    actions = np.concatenate([episode["action"] for episode in episodes])
    np.testing.assert_allclose(stats["action"]["mean"], actions.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.astype(np.float64).std(axis=0), rtol=1e-6)
    # Before finalize quantiles are combined as LeRobot does: lowest q01 and highest q99 over episodes.
    per_episode = [vector_stats(e["action"]) for e in episodes]
    np.testing.assert_allclose(stats["action"]["q01"], np.min([s["q01"] for s in per_episode], axis=0))
    np.testing.assert_allclose(stats["action"]["q99"], np.max([s["q99"] for s in per_episode], axis=0))


def test_files_roll_over_by_size_and_chunks_by_count(tmp_path):
    root = tmp_path / "ds"
    episodes = write_dataset(root, chunks_size=2, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6)
    expected = ["chunk-000/file-000", "chunk-000/file-001", "chunk-001/file-000"]
    assert (
        sorted(str(p.relative_to(root / "data"))[: -len(".parquet")] for p in root.glob("data/*/*.parquet"))
        == expected
    )
    assert (
        sorted(
            str(p.relative_to(root / "videos" / TOP))[: -len(".mp4")]
            for p in root.glob(f"videos/{TOP}/*/*.mp4")
        )
        == expected
    )
    dataset = LeRobotDataset(root)
    assert [dataset.episode(i).from_timestamp(TOP) for i in range(3)] == [0.0, 0.0, 0.0]
    for index, (episode, task) in enumerate(zip(episodes, TASKS, strict=True)):
        assert_episode_matches(dataset, index, episode, task)


def test_reopened_writer_appends_after_finalize(tmp_path):
    root = tmp_path / "ds"
    episodes = write_dataset(root)
    extra = make_episode(5, seed=7)
    with LeRobotDatasetWriter(root, FPS, FEATURES) as writer:
        assert writer.num_episodes == 3
        assert writer.add_episode(extra, "close the drawer") == 3
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == 4 and dataset.tasks == [TASKS[0], TASKS[1], "close the drawer"]
    assert_episode_matches(dataset, 3, extra, "close the drawer")
    assert_episode_matches(dataset, 1, episodes[1], TASKS[1])
    assert dataset.episode(3).from_timestamp(TOP) == pytest.approx(3.9)


def test_full_chroma_lossless_folder_reads_back_exactly_and_keeps_its_format_when_reopened(tmp_path):
    root = tmp_path / "ds"
    episodes = write_dataset(root, codec="libx264", pix_fmt="yuv444p", crf=0)
    extra = make_episode(5, seed=7)
    # reopened with the defaults: the appended episode joins the folder's 4:4:4 H.264 files
    with LeRobotDatasetWriter(root, FPS, FEATURES) as writer:
        writer.add_episode(extra, "close the drawer")
    dataset = LeRobotDataset(root)
    for key in (TOP, WRIST):
        assert dataset.features[key]["info"]["video.pix_fmt"] == "yuv444p"
        assert dataset.features[key]["info"]["video.codec"] == "h264"
    for index, expected in [(0, episodes[0]), (2, episodes[2]), (3, extra)]:
        frames = dataset.episode(index).read_frames(TOP, [0, len(expected[TOP]) - 1])
        assert np.abs(frames.astype(int) - expected[TOP][[0, -1]]).max() <= 4


def test_reopening_with_other_features_or_fps_is_refused(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root)
    with pytest.raises(ValueError, match=r"'action' is float32 \[6\], the folder has float32 \[7\]"):
        LeRobotDatasetWriter(root, FPS, {**FEATURES, "action": {"dtype": "float32", "shape": (6,)}})
    with pytest.raises(ValueError, match="fps=10; the writer was given fps=30"):
        LeRobotDatasetWriter(root, 30, FEATURES)


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path):
    writer = LeRobotDatasetWriter(tmp_path / "ds", FPS, FEATURES)
    with pytest.raises(RuntimeError, match="another LeRobotDatasetWriter"):
        LeRobotDatasetWriter(tmp_path / "ds", FPS, FEATURES)
    writer.close()
    LeRobotDatasetWriter(tmp_path / "ds", FPS, FEATURES).close()


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_lerobot import FEATURES, FPS, TASKS, LENGTHS, make_episode
    import vpp.data.lerobot as lerobot

    mode = {mode!r}
    writer = lerobot.LeRobotDatasetWriter({root!r}, FPS, FEATURES)
    for seed in range(2):
        writer.add_episode(make_episode(LENGTHS[seed], seed), TASKS[seed])
    if mode == "between_episodes":
        print("two episodes written", flush=True)
        time.sleep(60)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "before_commit":
        lerobot._Commit.commit = lambda self: die()
    else:
        real_replace = os.replace
        renames_after_journal = []
        def replace(src, dst):
            real_replace(src, dst)
            if renames_after_journal or str(dst).endswith(lerobot.JOURNAL_PATH):
                renames_after_journal.append(dst)
            if mode == "after_journal" and len(renames_after_journal) == 1:
                die()
            if mode == "mid_renames" and len(renames_after_journal) == 3:
                die()
        os.replace = replace
    writer.add_episode(make_episode(LENGTHS[2], 2), TASKS[2])
    """
)


@pytest.mark.parametrize(
    ("mode", "episodes_kept"),
    [("between_episodes", 2), ("before_commit", 2), ("after_journal", 3), ("mid_renames", 3)],
)
def test_killed_writer_leaves_a_readable_folder_and_resumes(tmp_path, mode, episodes_kept):
    root = tmp_path / "ds"
    script = CHILD.format(tests=str(Path(__file__).parent), root=str(root), mode=mode)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if mode == "between_episodes":
        assert child.stdout.readline().strip() == "two episodes written"
        os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()

    episodes = [make_episode(length, seed) for seed, length in enumerate(LENGTHS)]
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == episodes_kept
    for index in range(episodes_kept):
        assert_episode_matches(dataset, index, episodes[index], TASKS[index])

    extra = make_episode(6, seed=9)
    with LeRobotDatasetWriter(root, FPS, FEATURES) as writer:
        assert writer.add_episode(extra, "stack the cups") == episodes_kept
    assert not list(root.rglob("*.vpp-tmp")) and not (root / "meta/.vpp-commit.json").exists()
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == episodes_kept + 1
    assert dataset.num_frames == sum(LENGTHS[:episodes_kept]) + 6
    for index in range(episodes_kept):
        assert_episode_matches(dataset, index, episodes[index], TASKS[index])
    assert_episode_matches(dataset, episodes_kept, extra, "stack the cups")


def _bad(**changes):
    episode = make_episode(5, seed=3)
    episode.update(changes)
    return {k: v for k, v in episode.items() if v is not None}


@pytest.mark.parametrize(
    ("frames", "task", "message"),
    [
        (_bad(action=np.zeros((4, 7), np.float32)), "t", r"different lengths .*'action': 4"),
        (
            _bad(**{TOP: np.zeros((5, 48, 64, 3), np.float32)}),
            "t",
            r"'observation.images.top': got float32 \(5, 48, 64, 3\); expected uint8 \(T, 48, 64, 3\)",
        ),
        (
            _bad(**{WRIST: np.zeros((5, 48, 64, 3), np.uint8)}),
            "t",
            r"'observation.images.wrist': got uint8 \(5, 48, 64, 3\); expected uint8 \(T, 32, 32, 3\)",
        ),
        (_bad(action=np.zeros((5, 6), np.float32)), "t", r"'action': got shape \(5, 6\); expected \(T, 7\)"),
        (
            _bad(action=np.zeros((5, 7), np.int64)),
            "t",
            r"'action': got dtype int64 \(5, 7\); expected floating point",
        ),
        (
            _bad(**{"observation.state": np.full((5, 4), np.nan, np.float32)}),
            "t",
            r"'observation.state': nan at frame 0, dim 0",
        ),
        (_bad(), "   ", "task='   '; expected a non-empty"),
        (_bad(action=None), "t", r"missing \['action'\]"),
        (_bad(reward=np.zeros(5, np.float32)), "t", r"unexpected \['reward'\]"),
        (
            _bad(
                **{
                    TOP: np.zeros((0, 48, 64, 3), np.uint8),
                    WRIST: np.zeros((0, 32, 32, 3), np.uint8),
                    "action": np.zeros((0, 7), np.float32),
                    "observation.state": np.zeros((0, 4), np.float32),
                }
            ),
            "t",
            "0 frames; expected at least 1",
        ),
    ],
)
def test_bad_episodes_are_refused_and_leave_nothing(tmp_path, frames, task, message):
    root = tmp_path / "ds"
    with LeRobotDatasetWriter(root, FPS, FEATURES) as writer:
        writer.add_episode(make_episode(4, seed=0), "first")
        with pytest.raises(ValueError, match=message):
            writer.add_episode(frames, task)
        assert writer.num_episodes == 1
    assert not list(root.rglob("*.vpp-tmp"))
    assert LeRobotDataset(root).num_episodes == 1


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"cam": {"dtype": "image", "shape": (8, 8, 3)}}, "dtype 'image'; expected 'video'"),
        ({"cam": {"dtype": "video", "shape": (7, 8, 3)}}, "even height and width"),
        ({"action": {"dtype": "float32", "shape": (2, 3)}}, r"shape \[2, 3\]; expected \(D,\)"),
        ({"index": {"dtype": "int64", "shape": (1,)}}, "written by the writer itself"),
    ],
)
def test_bad_feature_specs_are_refused(tmp_path, features, message):
    with pytest.raises(ValueError, match=message):
        LeRobotDatasetWriter(tmp_path / "ds", FPS, features)


def test_v21_folder_is_refused_with_the_converter_named(tmp_path):
    root = tmp_path / "old"
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}}))
    (root / "meta/episodes.jsonl").write_text('{"episode_index": 0, "tasks": ["x"], "length": 3}\n')
    with pytest.raises(
        LeRobotFormatError, match=r"LeRobot v2.1 dataset .*v3.0 only.*convert_dataset_v21_to_v30"
    ):
        LeRobotDataset(root)
    with pytest.raises(LeRobotFormatError, match=r"v2\.1"):
        LeRobotDatasetWriter(root, 30, FEATURES)


def test_reader_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LeRobotDataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        LeRobotDataset(tmp_path / "empty")
    root = tmp_path / "ds"
    write_dataset(root)
    dataset = LeRobotDataset(root)
    with pytest.raises(
        UnknownKeyError,
        match=r"no video key 'observation.images.side'; video keys are \['observation.images.top', "
        r"'observation.images.wrist'\]",
    ):
        dataset.episode(0).read_frames("observation.images.side", [0])
    with pytest.raises(UnknownKeyError, match=r"no column 'reward'; known columns are \['action', "):
        dataset.episode(0).column("reward")
    with pytest.raises(IndexError, match="episode index 3 out of range; the dataset has 3 episodes"):
        dataset.episode(3)
    with pytest.raises(IndexError, match="frame index 7 out of range; the episode has 7 frames"):
        dataset.episode(1).read_frames(TOP, [0, 7])
    (root / f"videos/{WRIST}/chunk-000/file-000.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=f"videos/{WRIST}/chunk-000/file-000.mp4 is missing"):
        dataset.episode(0).read_frames(WRIST, [0])

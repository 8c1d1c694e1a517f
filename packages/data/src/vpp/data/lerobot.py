"""LeRobotDataset v3.0 folders, read and written with numpy, pyarrow and PyAV only (no torch).

The layout is LeRobot's own (``codebase_version`` "v3.0"), so folders written here load with
``lerobot.datasets.LeRobotDataset`` and folders recorded by LeRobot read here::

    meta/info.json                         fps, features, counters, path templates, file size limits
    meta/tasks.parquet                     task (pandas index) -> task_index
    meta/stats.json                        per feature min/max/mean/std/count/q01..q99
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its rows
                                               and video frames are, its own stats
    data/chunk-000/file-000.parquet        one row per frame, several episodes per file
    videos/<key>/chunk-000/file-000.mp4    several episodes per file, one after the other; an
                                           episode starts at its ``from_timestamp``

Writing is crash-safe per episode: everything an episode changes is first written beside its
final name (``*.vpp-tmp``), then a journal listing the renames is written atomically (the
commit point), then the renames are applied. A writer or reader opened after a crash rolls a
committed journal forward and ignores (the writer deletes) uncommitted temporaries, so an
episode is on disk either completely or not at all, and a killed recording resumes after its
last finished episode.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vpp.data import video_io

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILES_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
JOURNAL_PATH = "meta/.vpp-commit.json"
LOCK_PATH = "meta/.vpp-writer.lock"
TMP_SUFFIX = ".vpp-tmp"
CONVERTER_HINT = (
    "LeRobot converts v2.1 folders to v3.0 with: python -m lerobot.scripts.convert_dataset_v21_to_v30 "
    "--repo-id=<name> --root=<folder> --push-to-hub=false"
)

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Columns every LeRobot frame row carries besides the user's features, in LeRobot's order.
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VECTOR_DTYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}
VIDEO_NAMES = ["height", "width", "channels"]
# Image statistics are estimated on a subsample, as LeRobot does: enough frames and pixels for
# per-channel mean/std/quantiles without touching every pixel of a long episode.
IMAGE_STATS_MAX_FRAMES = 100
IMAGE_STATS_MAX_SIDE = 150


class LeRobotFormatError(ValueError):
    """A folder that is not a readable LeRobotDataset v3.0 (wrong version, inconsistent metadata)."""


class UnknownKeyError(KeyError):
    """A feature or video key the dataset does not have; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


# ----------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _pending_renames(root: Path) -> dict[str, Path]:
    """Final relative path -> committed temporary still waiting to be renamed (after a crash)."""
    journal = root / JOURNAL_PATH
    if not journal.is_file():
        return {}
    pending = {}
    for tmp, final in _read_json(journal)["renames"]:
        if (root / tmp).exists():
            pending[final] = root / tmp
    return pending


def _roll_forward(root: Path) -> None:
    journal = root / JOURNAL_PATH
    if not journal.is_file():
        return
    renames = _read_json(journal)["renames"]
    applied = 0
    for tmp, final in renames:
        if (root / tmp).exists():
            os.replace(root / tmp, root / final)
            applied += 1
    journal.unlink()
    logger.warning(
        "%s: completed an interrupted commit (%d of %d renames were pending)", root, applied, len(renames)
    )


def _arrow_column(values: np.ndarray, feature: dict) -> pa.Array:
    arrow_type = VECTOR_DTYPES[feature["dtype"]]
    shape = list(feature["shape"])
    if shape == [1]:
        return pa.array(values.reshape(-1), type=arrow_type)
    flat = pa.array(values.reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(flat, shape[0])


def _column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column (scalars, fixed-size lists or equal-length lists) -> numpy (N, ...) array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if (
        pa.types.is_fixed_size_list(array.type)
        or pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
    ):
        rows = len(array)
        inner = _column_to_numpy(array.flatten())
        return inner.reshape(rows, -1, *inner.shape[1:]) if rows else inner.reshape(0, *inner.shape[1:])
    return array.to_numpy(zero_copy_only=False)


def _stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {
        key: {name: np.asarray(value).tolist() for name, value in values.items()}
        for key, values in stats.items()
    }


def _stats_from_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    return {
        key: {name: np.atleast_1d(np.asarray(value)) for name, value in values.items()}
        for key, values in stats.items()
    }


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/q01..q99 over the first axis of (T,) or (T, D) values, as LeRobot keeps them."""
    data = np.asarray(values, dtype=np.float64)
    data = data.reshape(len(data), -1)
    stats = {
        "min": data.min(axis=0),
        "max": data.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([len(data)]),
    }
    for name, q in QUANTILES.items():
        stats[name] = np.quantile(data, q, axis=0)
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 (T, H, W, 3) frames in [0, 1], shaped (3, 1, 1) as LeRobot keeps them."""
    step_t = max(1, int(np.ceil(len(frames) / IMAGE_STATS_MAX_FRAMES)))
    step_xy = max(1, int(np.ceil(max(frames.shape[1:3]) / IMAGE_STATS_MAX_SIDE)))
    sample = frames[::step_t, ::step_xy, ::step_xy]
    pixels = sample.reshape(-1, 3).astype(np.float64) / 255.0
    stats = vector_stats(pixels)
    stats = {name: value.reshape(3, 1, 1) for name, value in stats.items() if name != "count"}
    stats["count"] = np.array([len(sample)])
    return stats


def aggregate_stats(
    per_episode: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics from per-episode ones: exact min/max/mean/std; quantiles combined as LeRobot
    does (lowest q01..q50 and highest q90/q99 over episodes), an approximation that
    ``LeRobotDatasetWriter.finalize`` replaces with exact quantiles for vector features."""
    keys = {key for stats in per_episode for key in stats}
    result: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted(keys):
        items = [stats[key] for stats in per_episode if key in stats]
        counts = np.array([float(item["count"][0]) for item in items])
        means = np.stack([item["mean"] for item in items])
        variances = np.stack([item["std"] for item in items]) ** 2
        weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * weights).sum(axis=0) / total
        variance = ((variances + (means - mean) ** 2) * weights).sum(axis=0) / total
        merged = {
            "min": np.min(np.stack([item["min"] for item in items]), axis=0),
            "max": np.max(np.stack([item["max"] for item in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": np.array([int(total)]),
        }
        for name in QUANTILES:
            if all(name in item for item in items):
                stacked = np.stack([item[name] for item in items])
                merged[name] = stacked.min(axis=0) if int(name[1:]) <= 50 else stacked.max(axis=0)
        result[key] = merged
    return result


# ----------------------------------------------------------------------------- metadata


def load_info(root: Path) -> dict:
    """meta/info.json of a v3.0 dataset; a clear error for anything else."""
    path = root / INFO_PATH
    if not path.is_file():
        if (root / "meta" / "episodes.jsonl").is_file() or (root / "meta" / "tasks.jsonl").is_file():
            raise LeRobotFormatError(
                f"{root} looks like a LeRobot v2.x dataset without meta/info.json; expected v3.0. {CONVERTER_HINT}"
            )
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: {path} does not exist")
    try:
        info = _read_json(path)
    except json.JSONDecodeError as error:
        raise LeRobotFormatError(f"{path} is not valid JSON: {error}") from error
    version = str(info.get("codebase_version", ""))
    match = re.fullmatch(r"v?(\d+)\.(\d+)", version)
    if match is None:
        raise LeRobotFormatError(f"{path}: codebase_version={version!r}; expected 'v3.0'")
    major = int(match.group(1))
    if major < 3:
        raise LeRobotFormatError(
            f"{root} is a LeRobot {version} dataset (codebase_version={version!r}); this reader "
            f"reads v3.0 only. {CONVERTER_HINT}"
        )
    if major > 3:
        raise LeRobotFormatError(f"{root} is a LeRobot {version} dataset; this reader knows v3.0 only")
    missing = [key for key in ("fps", "features", "data_path", "total_episodes") if key not in info]
    if missing:
        raise LeRobotFormatError(f"{path} lacks {missing}; a v3.0 info.json has them")
    return info


def _task_table(tasks: Sequence[str]) -> pa.Table:
    """tasks.parquet as pandas writes LeRobot's DataFrame (column task_index, index named "task"),
    so LeRobot's ``pd.read_parquet`` gets the task strings back as the index."""
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), type=pa.int64()),
            "task": pa.array(list(tasks), type=pa.string()),
        }
    )
    pandas_metadata = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_metadata)})


def _read_tasks(path: Path) -> list[str]:
    table = pq.read_table(path)
    names = table.column_names
    # pandas stores an unnamed index as __index_level_0__; LeRobot names it "task".
    text_column = (
        "task" if "task" in names else next((n for n in names if n.startswith("__index_level_")), None)
    )
    if text_column is None or "task_index" not in names:
        raise LeRobotFormatError(f"{path}: columns {names}; expected 'task_index' and 'task'")
    by_index = dict(
        zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist(), strict=True)
    )
    if sorted(by_index) != list(range(len(by_index))):
        raise LeRobotFormatError(
            f"{path}: task_index values {sorted(by_index)}; expected 0..{len(by_index) - 1}"
        )
    return [by_index[i] for i in range(len(by_index))]


def _episode_files(root: Path, pending: Mapping[str, Path]) -> list[Path]:
    found = {str(p.relative_to(root)): p for p in (root / "meta" / "episodes").glob("chunk-*/file-*.parquet")}
    found.update({rel: tmp for rel, tmp in pending.items() if rel.startswith("meta/episodes/")})
    return [found[rel] for rel in sorted(found)]


def _read_episode_rows(root: Path, pending: Mapping[str, Path], with_stats: bool) -> list[dict]:
    rows: list[dict] = []
    for path in _episode_files(root, pending):
        table = pq.read_table(path)
        if not with_stats:
            table = table.select([name for name in table.column_names if not name.startswith("stats/")])
        rows.extend(table.to_pylist())
    rows.sort(key=lambda row: row["episode_index"])
    indices = [row["episode_index"] for row in rows]
    if indices != list(range(len(rows))):
        raise LeRobotFormatError(
            f"{root}/meta/episodes: episode_index values {indices[:10]}...; expected 0..{len(rows) - 1} without gaps"
        )
    return rows


# ----------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class LeRobotEpisode:
    """One episode: its metadata, and readers for its frames and columns that touch only its part of the files."""

    dataset: LeRobotDataset = field(repr=False)
    index: int
    length: int
    tasks: tuple[str, ...]
    metadata: Mapping[str, Any] = field(repr=False)

    @property
    def task(self) -> str | None:
        """The first task (LeRobot episodes may list several)."""
        return self.tasks[0] if self.tasks else None

    @property
    def dataset_from_index(self) -> int:
        return int(self.metadata["dataset_from_index"])

    def video_path(self, video_key: str) -> Path:
        self.dataset._check_video_key(video_key)
        template = self.dataset.info.get("video_path") or VIDEO_PATH
        relative = template.format(
            video_key=video_key,
            chunk_index=self.metadata[f"videos/{video_key}/chunk_index"],
            file_index=self.metadata[f"videos/{video_key}/file_index"],
        )
        return self.dataset._resolve(relative)

    def from_timestamp(self, video_key: str) -> float:
        self.dataset._check_video_key(video_key)
        return float(self.metadata[f"videos/{video_key}/from_timestamp"])

    def read_frames(self, video_key: str, frame_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) frames of this episode; decodes from the keyframe before the first one asked for."""
        indices = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.length):
            bad = int(indices.min() if indices.min() < 0 else indices.max())
            raise IndexError(
                f"episode {self.index}: frame index {bad} out of range; the episode has {self.length} frames"
            )
        path = self.video_path(video_key)
        fps = self.dataset.fps
        timestamps = self.from_timestamp(video_key) + indices / fps
        return video_io.read_video_timestamps(path, timestamps, tolerance_s=0.5 / fps)

    def column(self, name: str) -> np.ndarray:
        """Values of a non-video feature for every frame of the episode: (length,) or (length, D)."""
        features = self.dataset.features
        if name not in features or features[name].get("dtype") in ("video", "image"):
            known = sorted(k for k, f in features.items() if f.get("dtype") not in ("video", "image"))
            raise UnknownKeyError(f"{self.dataset.root}: no column {name!r}; known columns are {known}")
        template = self.dataset.info["data_path"]
        relative = template.format(
            chunk_index=self.metadata["data/chunk_index"], file_index=self.metadata["data/file_index"]
        )
        path = self.dataset._resolve(relative)
        start, stop = self.dataset_from_index, int(self.metadata["dataset_to_index"])
        table = pq.read_table(
            path,
            columns=list(dict.fromkeys([name, "index"])),
            filters=[("index", ">=", start), ("index", "<", stop)],
        )
        if table.num_rows != self.length:
            raise LeRobotFormatError(
                f"{path}: {table.num_rows} rows with index in [{start}, {stop}) for episode "
                f"{self.index}; expected {self.length}"
            )
        order = np.argsort(table.column("index").to_numpy(), kind="stable")
        values = _column_to_numpy(table.column(name))[order]
        if list(features[name].get("shape", [1])) == [1]:
            values = values.reshape(self.length)
        return values


class LeRobotDataset:
    """A LeRobotDataset v3.0 folder as it is on disk (no download, no torch)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"LeRobot dataset folder {self.root} does not exist")
        self._pending = _pending_renames(self.root)
        info_tmp = self._pending.get(INFO_PATH)
        self.info: dict = load_info(self.root) if info_tmp is None else _read_json(info_tmp)
        self._episodes = _read_episode_rows(self.root, self._pending, with_stats=False)
        if len(self._episodes) != int(self.info["total_episodes"]):
            raise LeRobotFormatError(
                f"{self.root}: meta/episodes has {len(self._episodes)} episodes, info.json says "
                f"total_episodes={self.info['total_episodes']}"
            )
        tasks_path = self._resolve(TASKS_PATH, must_exist=False)
        self.tasks: list[str] = _read_tasks(tasks_path) if tasks_path.is_file() else []
        self._stats: dict[str, dict[str, np.ndarray]] | None = None

    def _resolve(self, relative: str, must_exist: bool = True) -> Path:
        path = self._pending.get(relative, self.root / relative)
        if must_exist and not path.is_file():
            raise FileNotFoundError(f"{self.root}: {relative} is missing")
        return path

    def _check_video_key(self, video_key: str) -> None:
        if video_key not in self.video_keys:
            raise UnknownKeyError(
                f"{self.root}: no video key {video_key!r}; video keys are {self.video_keys}"
            )

    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def video_keys(self) -> list[str]:
        return [key for key, feature in self.features.items() if feature.get("dtype") == "video"]

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return sum(int(row["length"]) for row in self._episodes)

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """meta/stats.json as numpy arrays, or None when the dataset has none."""
        if self._stats is None:
            path = self._resolve(STATS_PATH, must_exist=False)
            if not path.is_file():
                return None
            self._stats = _stats_from_json(_read_json(path))
        return self._stats

    def episode(self, index: int) -> LeRobotEpisode:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_episodes:
            raise IndexError(
                f"{self.root}: episode index {index!r} out of range; the dataset has {self.num_episodes} episodes"
            )
        row = self._episodes[int(index)]
        return LeRobotEpisode(
            dataset=self,
            index=int(index),
            length=int(row["length"]),
            tasks=tuple(row.get("tasks") or ()),
            metadata=row,
        )

    def episodes(self) -> Iterator[LeRobotEpisode]:
        return (self.episode(i) for i in range(self.num_episodes))


# ----------------------------------------------------------------------------- writer


def _normalise_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The user's features in LeRobot's info.json form; rejects what this writer cannot store."""
    if not features:
        raise ValueError("features is empty; expected e.g. {'action': {'dtype': 'float32', 'shape': (7,)}}")
    result: dict[str, dict] = {}
    for key, spec in features.items():
        if key in DEFAULT_FEATURES:
            raise ValueError(f"feature {key!r} is written by the writer itself; remove it from features")
        dtype = spec.get("dtype")
        shape = [int(s) for s in spec.get("shape", ())]
        if dtype == "video":
            if len(shape) != 3 or shape[2] != 3 or shape[0] % 2 or shape[1] % 2:
                raise ValueError(
                    f"feature {key!r}: video shape {shape}; expected (height, width, 3) with even height and width"
                )
            result[key] = {"dtype": "video", "shape": shape, "names": list(spec.get("names") or VIDEO_NAMES)}
        elif dtype in VECTOR_DTYPES:
            if len(shape) != 1 or shape[0] < 1:
                raise ValueError(f"feature {key!r}: shape {shape}; expected (D,) with D >= 1")
            result[key] = {"dtype": dtype, "shape": shape, "names": spec.get("names")}
        else:
            raise ValueError(
                f"feature {key!r}: dtype {dtype!r}; expected 'video' or one of {sorted(VECTOR_DTYPES)}"
            )
    return result


def _same_schema(existing: Mapping[str, dict], wanted: Mapping[str, dict]) -> list[str]:
    differences = []
    existing_user = {k: v for k, v in existing.items() if k not in DEFAULT_FEATURES}
    for key in sorted(set(existing_user) | set(wanted)):
        if key not in existing_user:
            differences.append(f"{key!r} is new")
        elif key not in wanted:
            differences.append(f"{key!r} is missing")
        elif (existing_user[key]["dtype"], list(existing_user[key]["shape"])) != (
            wanted[key]["dtype"],
            wanted[key]["shape"],
        ):
            differences.append(
                f"{key!r} is {wanted[key]['dtype']} {wanted[key]['shape']}, the folder has "
                f"{existing_user[key]['dtype']} {list(existing_user[key]['shape'])}"
            )
    return differences


class _Commit:
    """Files of one episode, written under temporary names and renamed together via a journal."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.renames: list[tuple[str, str]] = []

    def path(self, relative: str) -> Path:
        tmp = relative + TMP_SUFFIX
        self.renames.append((tmp, relative))
        path = self.root / tmp
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, relative: str, payload: Any) -> None:
        self.path(relative).write_text(json.dumps(payload, indent=4))

    def commit(self) -> None:
        for tmp, _ in self.renames:
            _fsync(self.root / tmp)
        journal_tmp = self.root / (JOURNAL_PATH + TMP_SUFFIX)
        journal_tmp.write_text(json.dumps({"renames": self.renames}))
        _fsync(journal_tmp)
        os.replace(journal_tmp, self.root / JOURNAL_PATH)
        for tmp, final in self.renames:
            os.replace(self.root / tmp, self.root / final)
        (self.root / JOURNAL_PATH).unlink()

    def abort(self) -> None:
        for tmp, _ in self.renames:
            (self.root / tmp).unlink(missing_ok=True)


class LeRobotDatasetWriter:
    """Records episodes into a LeRobotDataset v3.0 folder; re-opening a folder appends to it.

    ``features`` maps keys to ``{"dtype", "shape", "names"}``: dtype "video" with shape
    (H, W, 3) for cameras (uint8 frames), or a vector dtype (float32, float64, int32, int64,
    bool) with shape (D,). Every ``add_episode`` is committed on its own (data, videos, episode
    row, tasks, info and running stats), so a job killed between or during episodes keeps every
    finished episode; ``finalize`` makes stats.json exact (quantiles over all frames instead of
    bounds over episodes) and releases the folder. Data and video files hold several episodes
    and roll over to the next file by size, as LeRobot's recorder does.

    Videos default to ``video_io.default_codec()`` in 4:2:0; small renders whose details are
    single pixels (a 64 px MetaWorld goal) want ``codec="libx264", pix_fmt="yuv444p", crf=0``.
    A re-opened folder keeps the codec and pixel format it recorded.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str | None = None,
        *,
        codec: str | None = None,
        pix_fmt: str = video_io.PIX_FMT,
        crf: int | None = None,
        chunks_size: int = DEFAULT_CHUNKS_SIZE,
        data_files_size_in_mb: float = DEFAULT_DATA_FILES_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILES_SIZE_IN_MB,
    ) -> None:
        if not isinstance(fps, (int, np.integer)) or fps <= 0:
            raise ValueError(f"fps={fps!r}; expected a positive integer (LeRobot stores fps as int)")
        for name, value in (
            ("chunks_size", chunks_size),
            ("data_files_size_in_mb", data_files_size_in_mb),
            ("video_files_size_in_mb", video_files_size_in_mb),
        ):
            if value <= 0:
                raise ValueError(f"{name}={value}; expected > 0")
        self.root = Path(root)
        self.fps = int(fps)
        self.pix_fmt = pix_fmt
        self.crf = crf
        self.user_features = _normalise_features(features)
        self.video_keys = [key for key, f in self.user_features.items() if f["dtype"] == "video"]
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "meta").mkdir(exist_ok=True)
        self._lock = self._acquire_lock()
        try:
            self._recover()
            if (self.root / INFO_PATH).is_file():
                self._open_existing(robot_type, codec)
            else:
                self._create(robot_type, codec, chunks_size, data_files_size_in_mb, video_files_size_in_mb)
        except BaseException:
            self._release_lock()
            raise

    # -- folder state

    def _acquire_lock(self) -> Any:
        handle = open(self.root / LOCK_PATH, "a")  # noqa: SIM115 (held until release_lock())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(
                    f"{self.root} is being written by another LeRobotDatasetWriter (lock {LOCK_PATH} held)"
                ) from error
            raise
        return handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _recover(self) -> None:
        _roll_forward(self.root)
        stray = sorted(self.root.rglob("*" + TMP_SUFFIX))
        for path in stray:
            path.unlink()
        if stray:
            logger.warning(
                "%s: removed %d files of an episode that was never committed", self.root, len(stray)
            )

    def _create(
        self, robot_type: str | None, codec: str | None, chunks_size: int, data_mb: float, video_mb: float
    ) -> None:
        leftovers = [p for p in self.root.rglob("*") if p.is_file() and p.name != Path(LOCK_PATH).name]
        if leftovers:
            raise ValueError(
                f"{self.root} has files but no {INFO_PATH} (e.g. {leftovers[0]}); expected an empty "
                "folder or a LeRobot v3.0 dataset"
            )
        self.codec = (codec or video_io.default_codec()) if self.video_keys else None
        if self.codec is not None:
            video_io.check_pix_fmt(self.codec, self.pix_fmt)
        features = {
            **{k: dict(v) for k, v in self.user_features.items()},
            **json.loads(json.dumps(DEFAULT_FEATURES)),
        }
        self.info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": int(chunks_size),
            "data_files_size_in_mb": data_mb,
            "video_files_size_in_mb": video_mb,
            "fps": self.fps,
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        self.tasks: list[str] = []
        self.episode_rows: list[dict] = []
        commit = _Commit(self.root)
        commit.write_json(INFO_PATH, self.info)
        commit.commit()

    def _open_existing(self, robot_type: str | None, codec: str | None) -> None:
        self.info = load_info(self.root)
        if self.info["fps"] != self.fps:
            raise ValueError(
                f"{self.root} records at fps={self.info['fps']}; the writer was given fps={self.fps}"
            )
        differences = _same_schema(self.info["features"], self.user_features)
        if differences:
            raise ValueError(f"{self.root}: features differ from the folder's: {'; '.join(differences)}")
        if robot_type is not None and self.info.get("robot_type") not in (None, robot_type):
            raise ValueError(
                f"{self.root} has robot_type={self.info['robot_type']!r}; the writer was given {robot_type!r}"
            )
        self.episode_rows = _read_episode_rows(self.root, {}, with_stats=True)
        tasks_path = self.root / TASKS_PATH
        self.tasks = _read_tasks(tasks_path) if tasks_path.is_file() else []
        self.codec = None
        if self.video_keys:
            recorded = {
                self.info["features"][k].get("info", {}).get("video.codec") for k in self.video_keys
            } - {None}
            if len(recorded) > 1:
                raise LeRobotFormatError(f"{self.root}: cameras use different codecs {sorted(recorded)}")
            if recorded:
                stream_codec = recorded.pop()
                encoder = video_io.ENCODER_FOR_CODEC.get(stream_codec)
                if encoder is None or not video_io.codec_works(encoder):
                    raise ValueError(
                        f"{self.root} holds {stream_codec} videos, which this PyAV build cannot encode to append to"
                    )
                if codec is not None and video_io.ENCODER_FOR_CODEC.get(codec, codec) != encoder:
                    logger.warning(
                        "%s holds %s videos; appending with %s instead of %s",
                        self.root,
                        stream_codec,
                        encoder,
                        codec,
                    )
                self.codec = encoder
            else:
                self.codec = codec or video_io.default_codec()
            pix_fmts = {
                self.info["features"][k].get("info", {}).get("video.pix_fmt") for k in self.video_keys
            } - {None}
            if len(pix_fmts) > 1:
                raise LeRobotFormatError(
                    f"{self.root}: cameras use different pixel formats {sorted(pix_fmts)}"
                )
            if pix_fmts:
                recorded_fmt = pix_fmts.pop()
                if recorded_fmt != self.pix_fmt:
                    # appended episodes share the folder's video files, so they keep its format
                    logger.warning(
                        "%s holds %s videos; appending in %s instead of %s",
                        self.root,
                        recorded_fmt,
                        recorded_fmt,
                        self.pix_fmt,
                    )
                    self.pix_fmt = recorded_fmt
            video_io.check_pix_fmt(self.codec, self.pix_fmt)
            # the encoder's rate settings are in its stream headers: appended episodes must match them
            crfs = {self.info["features"][k].get("info", {}).get("video.crf") for k in self.video_keys} - {
                None
            }
            if crfs:
                self.crf = int(crfs.pop())
        logger.info(
            "%s: resuming after %d episodes (%d frames)", self.root, len(self.episode_rows), self.total_frames
        )

    @property
    def num_episodes(self) -> int:
        return len(self.episode_rows)

    @property
    def total_frames(self) -> int:
        return sum(int(row["length"]) for row in self.episode_rows)

    # -- validation

    def _validate(self, frames: Mapping[str, Any], task: str) -> tuple[int, dict[str, np.ndarray]]:
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task={task!r}; expected a non-empty instruction string")
        missing = sorted(set(self.user_features) - set(frames))
        extra = sorted(set(frames) - set(self.user_features))
        if missing or extra:
            raise ValueError(
                f"episode keys: missing {missing}, unexpected {extra}; expected exactly {sorted(self.user_features)}"
            )
        arrays: dict[str, np.ndarray] = {}
        for key, feature in self.user_features.items():
            value = np.asarray(frames[key])
            if feature["dtype"] == "video":
                expected = (feature["shape"][0], feature["shape"][1], 3)
                if value.dtype != np.uint8 or value.ndim != 4 or value.shape[1:] != expected:
                    raise ValueError(
                        f"{key!r}: got {value.dtype} {value.shape}; expected uint8 (T, {expected[0]}, {expected[1]}, 3)"
                    )
            else:
                dim = feature["shape"][0]
                if dim == 1 and value.ndim == 1:
                    value = value.reshape(-1, 1)
                if value.ndim != 2 or value.shape[1] != dim:
                    raise ValueError(f"{key!r}: got shape {value.shape}; expected (T, {dim})")
                value = self._cast_vector(key, value, feature["dtype"])
            arrays[key] = value
        lengths = {key: len(value) for key, value in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"episode keys have different lengths {lengths}; expected one length T for every key"
            )
        length = next(iter(lengths.values()))
        if length < 1:
            raise ValueError(f"episode has {length} frames; expected at least 1")
        return length, arrays

    @staticmethod
    def _cast_vector(key: str, value: np.ndarray, dtype: str) -> np.ndarray:
        if dtype.startswith("float"):
            if not np.issubdtype(value.dtype, np.floating):
                raise ValueError(
                    f"{key!r}: got dtype {value.dtype} {value.shape}; expected floating point ({dtype})"
                )
            bad = ~np.isfinite(value)
            if bad.any():
                frame, dim = np.argwhere(bad)[0]
                raise ValueError(
                    f"{key!r}: {value[frame, dim]} at frame {frame}, dim {dim} (shape "
                    f"{value.shape}); expected finite values"
                )
        elif dtype == "bool":
            if value.dtype != np.bool_:
                raise ValueError(f"{key!r}: got dtype {value.dtype}; expected bool")
        elif not np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
            raise ValueError(f"{key!r}: got dtype {value.dtype} {value.shape}; expected integers ({dtype})")
        return value.astype(dtype, copy=False)

    # -- placement of an episode in files

    def _next_file(self, chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file + 1 >= self.info["chunks_size"] else (chunk, file + 1)

    def _place(
        self, prefix: str, template: str, incoming_bytes: float, limit_mb: float, video_key: str = ""
    ) -> tuple[int, int, bool]:
        """(chunk, file, append?) for the next episode's ``prefix`` (e.g. "data", "videos/<key>") file."""
        if not self.episode_rows:
            return 0, 0, False
        last = self.episode_rows[-1]
        chunk, file = int(last[f"{prefix}/chunk_index"]), int(last[f"{prefix}/file_index"])
        path = self.root / template.format(video_key=video_key, chunk_index=chunk, file_index=file)
        if path.stat().st_size + incoming_bytes >= limit_mb * 1024**2:
            chunk, file = self._next_file(chunk, file)
            return chunk, file, False
        return chunk, file, True

    def _data_bytes_estimate(self, length: int) -> float:
        if not self.episode_rows:
            return 0.0
        last = self.episode_rows[-1]
        same_file = [
            r
            for r in self.episode_rows
            if (r["data/chunk_index"], r["data/file_index"])
            == (last["data/chunk_index"], last["data/file_index"])
        ]
        frames = sum(int(r["length"]) for r in same_file)
        path = self.root / DATA_PATH.format(
            chunk_index=last["data/chunk_index"], file_index=last["data/file_index"]
        )
        return path.stat().st_size / frames * length

    # -- writing

    def add_episode(self, frames: Mapping[str, Any], task: str) -> int:
        """Validate and commit one episode; returns its episode_index. Nothing is written if it raises."""
        length, arrays = self._validate(frames, task)
        if self._lock is None:
            raise RuntimeError(
                f"{self.root}: writer was finalized; open a new LeRobotDatasetWriter to add episodes"
            )
        episode_index = self.num_episodes
        start = self.total_frames
        tasks = self.tasks if task in self.tasks else [*self.tasks, task]
        task_index = tasks.index(task)
        commit = _Commit(self.root)
        try:
            row: dict[str, Any] = {"episode_index": episode_index, "tasks": [task], "length": length}
            row.update(self._write_data(commit, arrays, episode_index, start, length, task_index))
            info = json.loads(json.dumps(self.info))
            for key in self.video_keys:
                row.update(self._write_video(commit, key, arrays[key], episode_index, length, info))
            episode_stats = self._episode_stats(arrays, episode_index, start, length, task_index)
            for key, values in episode_stats.items():
                for name, value in values.items():
                    row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
            row.update(self._write_episode_row(commit, row))
            if len(tasks) != len(self.tasks):
                pq.write_table(_task_table(tasks), commit.path(TASKS_PATH))
            info.update(
                total_episodes=episode_index + 1,
                total_frames=start + length,
                total_tasks=len(tasks),
                splits={"train": f"0:{episode_index + 1}"},
            )
            commit.write_json(INFO_PATH, info)
            all_stats = [self._row_stats(r) for r in self.episode_rows] + [episode_stats]
            commit.write_json(STATS_PATH, _stats_to_json(aggregate_stats(all_stats)))
            commit.commit()
        except BaseException:
            commit.abort()
            raise
        self.episode_rows.append(row)
        self.tasks = tasks
        self.info = info
        logger.debug("%s: episode %d committed (%d frames)", self.root, episode_index, length)
        return episode_index

    def _write_data(
        self,
        commit: _Commit,
        arrays: dict[str, np.ndarray],
        episode_index: int,
        start: int,
        length: int,
        task_index: int,
    ) -> dict:
        columns = {
            key: _arrow_column(arrays[key], f)
            for key, f in self.user_features.items()
            if f["dtype"] != "video"
        }
        frame_index = np.arange(length, dtype=np.int64)
        defaults = {
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": frame_index + start,
            "task_index": np.full(length, task_index, dtype=np.int64),
        }
        columns.update(
            {key: _arrow_column(values, DEFAULT_FEATURES[key]) for key, values in defaults.items()}
        )
        table = pa.table(columns)
        chunk, file, append = self._place(
            "data", DATA_PATH, self._data_bytes_estimate(length), self.info["data_files_size_in_mb"]
        )
        relative = DATA_PATH.format(chunk_index=chunk, file_index=file)
        target = commit.path(relative)
        # One row group per episode: a reader's index filter then skips other episodes' rows unread.
        with pq.ParquetWriter(target, table.schema, compression="snappy") as sink:
            if append:
                existing = pq.ParquetFile(self.root / relative)
                for group in range(existing.num_row_groups):
                    sink.write_table(existing.read_row_group(group).cast(table.schema))
            sink.write_table(table)
        return {
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
        }

    def _write_video(
        self, commit: _Commit, key: str, frames: np.ndarray, episode_index: int, length: int, info: dict
    ) -> dict:
        episode_file = self.root / "videos" / key / f"episode-{episode_index:06d}.mp4{TMP_SUFFIX}"
        episode_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            video_io.write_video(
                episode_file, frames, self.fps, codec=self.codec, crf=self.crf, pix_fmt=self.pix_fmt
            )
            chunk, file, append = self._place(
                f"videos/{key}",
                VIDEO_PATH,
                episode_file.stat().st_size,
                self.info["video_files_size_in_mb"],
                video_key=key,
            )
            relative = VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            target = commit.path(relative)
            if append:
                from_timestamp = video_io.concatenate_videos([self.root / relative, episode_file], target)[1]
            else:
                os.replace(episode_file, target)
                from_timestamp = 0.0
        finally:
            episode_file.unlink(missing_ok=True)
        feature = info["features"][key]
        if "info" not in feature:
            probed = video_io.video_info(target)
            feature["info"] = {**probed, "video.is_depth_map": False, "video.g": video_io.DEFAULT_GOP}
            if self.crf is not None:
                feature["info"]["video.crf"] = self.crf
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": from_timestamp,
            f"videos/{key}/to_timestamp": from_timestamp + length / self.fps,
        }

    def _write_episode_row(self, commit: _Commit, row: dict) -> dict:
        if self.episode_rows:
            last = self.episode_rows[-1]
            chunk, file = int(last["meta/episodes/chunk_index"]), int(last["meta/episodes/file_index"])
            path = self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
            if path.stat().st_size >= self.info["data_files_size_in_mb"] * 1024**2:
                chunk, file = self._next_file(chunk, file)
        else:
            chunk, file = 0, 0
        placement = {"meta/episodes/chunk_index": chunk, "meta/episodes/file_index": file}
        rows = [
            r
            for r in self.episode_rows
            if (r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]) == (chunk, file)
        ]
        pq.write_table(
            pa.Table.from_pylist([*rows, {**row, **placement}]),
            commit.path(EPISODES_PATH.format(chunk_index=chunk, file_index=file)),
        )
        return placement

    def _episode_stats(
        self, arrays: dict[str, np.ndarray], episode_index: int, start: int, length: int, task_index: int
    ) -> dict:
        stats = {}
        for key, feature in self.user_features.items():
            stats[key] = (
                image_stats(arrays[key]) if feature["dtype"] == "video" else vector_stats(arrays[key])
            )
        frame_index = np.arange(length)
        stats["timestamp"] = vector_stats((frame_index / self.fps).astype(np.float32))
        stats["frame_index"] = vector_stats(frame_index)
        stats["episode_index"] = vector_stats(np.full(length, episode_index))
        stats["index"] = vector_stats(frame_index + start)
        stats["task_index"] = vector_stats(np.full(length, task_index))
        return stats

    @staticmethod
    def _row_stats(row: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        stats: dict[str, dict[str, np.ndarray]] = {}
        for column, value in row.items():
            if column.startswith("stats/") and value is not None:
                key, name = column[len("stats/") :].rsplit("/", 1)
                stats.setdefault(key, {})[name] = np.asarray(value)
        return stats

    def finalize(self) -> None:
        """Write exact dataset statistics (vector quantiles over every frame) and release the folder."""
        if self._lock is None:
            return
        try:
            if self.episode_rows:
                stats = aggregate_stats([self._row_stats(row) for row in self.episode_rows])
                data_files = sorted(
                    {
                        DATA_PATH.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
                        for r in self.episode_rows
                    }
                )
                vector_keys = [k for k, f in self.info["features"].items() if f["dtype"] != "video"]
                tables = [pq.read_table(self.root / relative, columns=vector_keys) for relative in data_files]
                table = pa.concat_tables(tables)
                for key in vector_keys:
                    stats[key] = vector_stats(_column_to_numpy(table.column(key)))
                commit = _Commit(self.root)
                commit.write_json(STATS_PATH, _stats_to_json(stats))
                commit.commit()
        finally:
            self._release_lock()

    def close(self) -> None:
        """Release the folder without recomputing stats (every added episode is already on disk)."""
        self._release_lock()

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()

"""LeRobot dataset v3.0, read and written with pyarrow and PyAV (no lerobot dependency: its pins conflict with
vlaser's torch and transformers).

``write_dataset`` writes episodes (per-frame arrays and a task) in the v3.0 layout, several episodes per data
and video file; ``LeRobotDataset`` reads one back, giving tabular features exactly and camera frames as uint8
arrays. A video feature's frames are located by the episode's ``from_timestamp`` plus the frame's
``timestamp`` (within half a frame), as LeRobot does. Episodes with fewer frames than ``meta/episodes`` says are
listed in ``truncated``, never dropped silently.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaser.errors import UserInputError, require
from vlaser.jsonl import read_json
from vlaser.vla.data import layout
from vlaser.vla.data.stats import aggregate_stats, camera_sample, feature_stats, stats_from_json, stats_to_json
from vlaser.vla.data.video import VideoFile, VideoWriter, default_codec

MB = 1024 * 1024


def _pa():
    return require("pyarrow", "eval", "LeRobot datasets")


@dataclass
class Episode:
    """One demonstration to write: ``features`` maps each feature key to its per-frame values ``(T, *shape)``
    (cameras as uint8 ``(T, H, W, 3)``), ``task`` is its instruction."""

    task: str
    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))


@dataclass(frozen=True)
class VideoSegment:
    """Where one episode's frames of one camera are: a file and a time span in it (seconds)."""

    path: Path
    start: float
    end: float


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of ``meta/episodes``: the episode's length and task, its frames' global index range and data
    file, and its video segments."""

    index: int
    length: int
    task: str
    tasks: tuple[str, ...]
    data_path: Path
    from_index: int
    to_index: int
    videos: dict[str, VideoSegment] = field(default_factory=dict)


@dataclass(frozen=True)
class Truncation:
    """An episode with fewer frames in a file than its metadata says."""

    episode: int
    path: Path
    expected: int
    found: int

    def __str__(self) -> str:
        return f"episode {self.episode}: {self.path} has {self.found} of its {self.expected} frames"


# ----------------------------------------------------------------------------------------------------- writing


def _camera_feature(dtype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "names": ["height", "width", "channels"]}


def infer_features(episode: Episode, camera_dtype: str = "video") -> dict[str, dict[str, Any]]:
    """Features from an episode's arrays: uint8 ``(T, H, W, 3)`` arrays are cameras (``camera_dtype``: "video"
    or "image"), anything else a scalar (``(T,)``) or vector (``(T, D)``) of its own dtype."""
    features = {}
    for key, values in episode.features.items():
        values = np.asarray(values)
        if values.dtype == np.uint8 and values.ndim == 4 and values.shape[-1] == 3:
            features[key] = _camera_feature(camera_dtype, values.shape[1:])
        else:
            features[key] = {"dtype": str(values.dtype), "shape": list(values.shape[1:]) or [1], "names": None}
    return features


def _check_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The user's features completed (``names``) and checked: no reserved keys, only scalars, vectors and
    ``(H, W, 3)`` cameras."""
    out = {}
    for key, feature in features.items():
        if key in layout.DEFAULT_FEATURES:
            raise UserInputError(f"feature {key!r} is reserved (LeRobot adds it to every frame)")
        dtype, shape = str(feature["dtype"]), [int(s) for s in feature["shape"]]
        if dtype in layout.CAMERA_DTYPES:
            if len(shape) != 3 or shape[2] != 3:
                raise UserInputError(f"feature {key!r}: a camera needs shape [height, width, 3], got {shape}")
        elif len(shape) != 1:
            raise UserInputError(f"feature {key!r}: shape {shape} (only scalars, vectors and cameras are supported)")
        out[key] = {**feature, "dtype": dtype, "shape": shape, "names": feature.get("names")}
    return out


def _check_episode(episode: Episode, features: Mapping[str, Mapping[str, Any]], number: int) -> dict[str, np.ndarray]:
    """The episode's arrays in the features' dtypes and shapes, or an error naming the episode and feature."""
    if set(episode.features) != set(features):
        raise UserInputError(f"episode {number}: features {sorted(episode.features)} do not match the dataset's "
                             f"{sorted(features)}")
    arrays, length = {}, len(episode)
    if length == 0:
        raise UserInputError(f"episode {number}: no frames")
    for key, feature in features.items():
        values = np.asarray(episode.features[key])
        camera = feature["dtype"] in layout.CAMERA_DTYPES
        want = (length, *feature["shape"]) if camera or feature["shape"] != [1] else (length,)
        if values.shape == (length, 1) and want == (length,):
            values = values[:, 0]
        if values.shape != want:
            raise UserInputError(f"episode {number}: {key!r} has shape {values.shape}, expected {want}")
        if camera and values.dtype != np.uint8:
            raise UserInputError(f"episode {number}: camera {key!r} must be uint8, got {values.dtype}")
        arrays[key] = values if camera else values.astype(feature["dtype"], copy=False)
    return arrays


def _arrow_column(values: np.ndarray, feature: Mapping[str, Any]):
    """One data column as LeRobot's Hugging Face features store it: a scalar, a fixed-size list, or an image
    struct ``{bytes: PNG, path}``."""
    pa = _pa()
    if feature["dtype"] == "image":
        from PIL import Image

        pngs = []
        for frame in values:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pa.StructArray.from_arrays([pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())],
                                          names=["bytes", "path"])
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _info(features, fps, robot_type, codec, chunks_size, data_mb, video_mb) -> dict[str, Any]:
    """``info.json`` as v3.0 documents it; frame totals are filled in once the episodes are written."""
    all_features = {}
    for key, feature in {**features, **layout.DEFAULT_FEATURES}.items():
        feature = dict(feature)
        if feature["dtype"] == "video":
            height, width, channels = feature["shape"]
            feature["info"] = {"video.height": height, "video.width": width, "video.codec": codec,
                               "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": float(fps),
                               "video.channels": channels, "has_audio": False}
        else:
            feature["fps"] = float(fps)
        all_features[key] = feature
    has_video = any(f["dtype"] == "video" for f in features.values())
    return {"codebase_version": layout.CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0,
            "total_frames": 0, "total_tasks": 0, "chunks_size": chunks_size, "data_files_size_in_mb": data_mb,
            "video_files_size_in_mb": video_mb, "fps": fps, "splits": {}, "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH if has_video else None, "features": all_features}


class _DataFiles:
    """Frames accumulate into the current data file until it would pass the size limit."""

    def __init__(self, root: Path, limit_bytes: float, chunks_size: int) -> None:
        self.root, self.limit, self.chunks_size = root, limit_bytes, chunks_size
        self.chunk, self.file, self.tables, self.bytes = 0, 0, [], 0

    def add(self, table) -> tuple[int, int]:
        """Append an episode's frames; returns the (chunk, file) they go to."""
        if self.tables and self.bytes + table.nbytes > self.limit:
            self.flush()
            self.chunk, self.file = layout.next_file(self.chunk, self.file, self.chunks_size)
        self.tables.append(table)
        self.bytes += table.nbytes
        return self.chunk, self.file

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if self.tables:
            path = self.root / layout.DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_pa().concat_tables(self.tables), path)
        self.tables, self.bytes = [], 0


class _VideoFiles:
    """One camera's episodes appended to the current MP4 until it passes the size limit."""

    def __init__(self, root: Path, key: str, fps: float, codec: str, limit_bytes: float, chunks_size: int):
        self.root, self.key, self.fps, self.codec = root, key, fps, codec
        self.limit, self.chunks_size = limit_bytes, chunks_size
        self.chunk, self.file, self.writer = 0, 0, None

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode an episode; returns its ``videos/<key>/...`` columns for ``meta/episodes``."""
        if self.writer is not None and self.writer.bytes >= self.limit:  # the next episode starts a new file
            self.writer.close()
            self.writer = None
            self.chunk, self.file = layout.next_file(self.chunk, self.file, self.chunks_size)
        if self.writer is None:
            path = self.root / layout.VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk,
                                                        file_index=self.file)
            self.writer = VideoWriter(path, self.fps, self.codec)
        start = self.writer.seconds
        self.writer.add(frames)
        prefix = f"videos/{self.key}/"
        return {prefix + "chunk_index": self.chunk, prefix + "file_index": self.file,
                prefix + "from_timestamp": start, prefix + "to_timestamp": start + len(frames) / self.fps}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """``meta/tasks.parquet``: LeRobot writes a pandas frame indexed by the task string with a ``task_index``
    column; the pandas metadata keeps ``task`` as the index for pandas readers."""
    import pyarrow.parquet as pq

    pa = _pa()
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def write_dataset(root: str | Path, episodes: Iterable[Episode], fps: int,
                  features: Mapping[str, Mapping] | None = None, robot_type: str | None = None, *,
                  camera_dtype: str = "video", video_codec: str | None = None, chunks_size: int = layout.CHUNKS_SIZE,
                  data_files_size_in_mb: float = layout.DATA_FILES_SIZE_IN_MB,
                  video_files_size_in_mb: float = layout.VIDEO_FILES_SIZE_IN_MB) -> Path:
    """Write ``episodes`` as a LeRobot v3.0 dataset at ``root`` (which must be empty or absent); returns root.

    ``features`` follows ``info.json`` (``{key: {"dtype", "shape", "names"}}``, cameras with dtype "video" or
    "image" and shape ``[H, W, 3]``); without it they are inferred from the first episode (cameras as
    ``camera_dtype``). ``video_codec`` is "av1" or "h264" (default: AV1 where this PyAV encodes it).
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise UserInputError(f"{root}: not empty (write a dataset to a new folder)")
    episodes = iter(episodes)
    first = next(episodes, None)
    if first is None:
        raise UserInputError(f"{root}: no episodes to write")
    features = _check_features(features if features is not None else infer_features(first, camera_dtype))
    info = _info(features, fps, robot_type, video_codec or default_codec(), chunks_size, data_files_size_in_mb,
                 video_files_size_in_mb)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    writer = _DatasetWriter(root, info)
    try:
        for number, episode in enumerate(itertools.chain([first], episodes)):
            writer.add(number, episode, features)
    finally:
        writer.close()
    _write_meta(root, info, writer.rows, list(writer.tasks), writer.stats(), writer.total)
    return root


class _DatasetWriter:
    """Episodes into data and video files, with their ``meta/episodes`` rows and the values for the stats."""

    def __init__(self, root: Path, info: dict[str, Any]) -> None:
        self.info, fps, size, chunks = info, info["fps"], info["video_files_size_in_mb"] * MB, info["chunks_size"]
        self.data = _DataFiles(root, info["data_files_size_in_mb"] * MB, chunks)
        self.videos = {key: _VideoFiles(root, key, fps, f["info"]["video.codec"], size, chunks)
                       for key, f in info["features"].items() if f["dtype"] == "video"}
        self.tasks: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self.parts = {key: [] for key in info["features"]}  # vectors: all their values; cameras: episode stats
        self.total = 0

    def add(self, number: int, episode: Episode, features: Mapping[str, Mapping[str, Any]]) -> None:
        arrays = _check_episode(episode, features, number)
        length = len(episode)
        task_index = self.tasks.setdefault(episode.task, len(self.tasks))
        arrays.update(_default_columns(number, length, self.total, task_index, self.info["fps"]))
        row = {"episode_index": number, "tasks": [episode.task], "length": length}
        table = _pa().table({key: _arrow_column(arrays[key], f) for key, f in self.info["features"].items()
                             if f["dtype"] != "video"})
        row["data/chunk_index"], row["data/file_index"] = self.data.add(table)
        row["dataset_from_index"], row["dataset_to_index"] = self.total, self.total + length
        for key, videos in self.videos.items():
            row.update(videos.add(arrays[key]))
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for key, f in self.info["features"].items():
            camera = f["dtype"] in layout.CAMERA_DTYPES
            stats = feature_stats(camera_sample(arrays[key]) if camera else arrays[key], camera=camera)
            row.update({f"stats/{key}/{name}": np.asarray(v).tolist() for name, v in stats.items()})
            self.parts[key].append(stats if camera else arrays[key])
        self.rows.append(row)
        self.total += length

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        return {key: aggregate_stats(v) if self.info["features"][key]["dtype"] in layout.CAMERA_DTYPES
                else feature_stats(np.concatenate(v)) for key, v in self.parts.items()}

    def close(self) -> None:
        self.data.flush()
        for videos in self.videos.values():
            videos.close()


def _default_columns(episode: int, length: int, start: int, task_index: int, fps: float) -> dict[str, np.ndarray]:
    frame_index = np.arange(length, dtype=np.int64)
    return {"timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index,
            "episode_index": np.full(length, episode, np.int64), "index": start + frame_index,
            "task_index": np.full(length, task_index, np.int64)}


def _write_meta(root: Path, info: dict, rows: list[dict], tasks: list[str], stats, total: int) -> None:
    import pyarrow.parquet as pq

    info.update(total_episodes=len(rows), total_frames=total, total_tasks=len(tasks),
                splits={"train": f"0:{len(rows)}"})
    (root / layout.INFO_PATH).write_text(json.dumps(info, indent=4) + "\n", encoding="utf-8")
    (root / layout.STATS_PATH).write_text(json.dumps(stats_to_json(stats), indent=4) + "\n", encoding="utf-8")
    _write_tasks(root / layout.TASKS_PATH, tasks)
    path = root / layout.EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_pa().Table.from_pylist(rows), path)


# ----------------------------------------------------------------------------------------------------- reading


def _read_tasks(path: Path) -> list[str]:
    """Task strings by ``task_index``: the task is a ``task`` column (or the pandas index LeRobot writes)."""
    table = layout.read_parquet(path)
    name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if name is None or "task_index" not in table.column_names:
        raise UserInputError(f"{path}: needs a task_index column and the task strings (column or index 'task')")
    by_index = dict(zip(table.column("task_index").to_pylist(), table.column(name).to_pylist()))
    if sorted(by_index) != list(range(len(by_index))):
        raise UserInputError(f"{path}: task_index values must be 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _episode_files(root: Path) -> list[Path]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise UserInputError(f"{root / 'meta' / 'episodes'}: missing (no chunk-NNN/file-NNN.parquet)")
    return files


def _read_episodes(root: Path, info: Mapping[str, Any]) -> list[EpisodeInfo]:
    """Every row of ``meta/episodes``, checked for the columns the reader needs, in episode order."""
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    needed = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
              "dataset_to_index"]
    needed += [f"videos/{k}/{c}" for k in video_keys for c in ("chunk_index", "file_index", "from_timestamp",
                                                               "to_timestamp")]
    episodes = []
    for path in _episode_files(root):
        table = layout.read_parquet(path, columns=None)
        layout.require_columns(table, path, needed)
        for row in table.select(needed).to_pylist():
            episodes.append(_episode_info(root, info, row, video_keys))
    episodes.sort(key=lambda e: e.index)
    if len(episodes) != info["total_episodes"]:
        raise UserInputError(f"{root / layout.INFO_PATH}: total_episodes is {info['total_episodes']} but "
                             f"meta/episodes lists {len(episodes)}")
    return episodes


def _episode_info(root: Path, info: Mapping[str, Any], row: Mapping[str, Any], video_keys: list[str]) -> EpisodeInfo:
    data_path = root / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
    videos = {}
    for key in video_keys:
        p = f"videos/{key}/"
        path = root / info["video_path"].format(video_key=key, chunk_index=row[p + "chunk_index"],
                                                file_index=row[p + "file_index"])
        videos[key] = VideoSegment(path, float(row[p + "from_timestamp"]), float(row[p + "to_timestamp"]))
    tasks = (row["tasks"],) if isinstance(row["tasks"], str) else tuple(row["tasks"] or ())
    return EpisodeInfo(index=int(row["episode_index"]), length=int(row["length"]), task=tasks[0] if tasks else "",
                       tasks=tasks, data_path=data_path, from_index=int(row["dataset_from_index"]),
                       to_index=int(row["dataset_to_index"]), videos=videos)


def _column_array(column, feature: Mapping[str, Any], path: Path, key: str) -> np.ndarray:
    """A tabular data column as ``(N, *shape)`` numpy in the feature's dtype (``(N,)`` for shape ``[1]``);
    non-numeric features (strings) as an object array."""
    pa = _pa()
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat, n = column, len(column)
    while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type) or pa.types.is_large_list(flat.type):
        flat = flat.flatten()
    try:
        dtype = np.dtype(feature["dtype"])
    except TypeError:
        dtype = np.dtype(object)
    values = np.asarray(flat.to_pylist(), dtype=object) if dtype.kind == "O" else flat.to_numpy(zero_copy_only=False)
    shape = [int(s) for s in feature["shape"]]
    if values.size != n * int(np.prod(shape)):
        raise UserInputError(f"{path}: column {key!r} does not hold {shape} values per frame")
    values = values.reshape(n) if shape == [1] else values.reshape(n, *shape)
    return values.astype(dtype, copy=False)


class LeRobotDataset:
    """A LeRobot v3.0 dataset on disk: ``info``, ``stats``, ``tasks`` (by task_index), ``episodes``
    (``EpisodeInfo`` rows), tabular features exactly as stored, camera frames decoded on demand.

    ``len`` counts the frames the data files hold; ``truncated`` lists episodes with fewer frames than their
    metadata says (data rows always; video frames too with ``check_videos=True``, which reads every video's
    packet times, without decoding). ``cache_frames=True`` keeps every camera frame once decoded (whole
    episodes at a time), for small datasets read many times over (several times faster random access).
    """

    def __init__(self, root: str | Path, check_videos: bool = False, cache_frames: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserInputError(f"{self.root}: not a directory")
        info_path = self.root / layout.INFO_PATH
        self.info: dict[str, Any] = read_json(info_path)
        layout.check_info(self.info, info_path)
        self.fps: float = self.info["fps"]
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        stats = read_json(self.root / layout.STATS_PATH)
        if not isinstance(stats, dict):
            raise UserInputError(f"{self.root / layout.STATS_PATH}: expected a JSON object")
        self.stats = stats_from_json(stats)
        self.tasks: list[str] = _read_tasks(self.root / layout.TASKS_PATH)
        self.episodes: list[EpisodeInfo] = _read_episodes(self.root, self.info)
        self.cameras = [k for k, f in self.features.items() if f["dtype"] in layout.CAMERA_DTYPES]
        self.truncated: list[Truncation] = []
        self._by_index = {e.index: e for e in self.episodes}
        self._tables: dict[Path, Any] = {}
        self._arrays: dict[Path, dict[str, np.ndarray]] = {}
        self._orders: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        self._rows: dict[int, np.ndarray] = {}  # episode index -> its rows in its data file
        self._videos: dict[Path, VideoFile] = {}
        self._frames: dict[tuple[int, str], np.ndarray] | None = {} if cache_frames else None
        for episode in self.episodes:
            self._locate_rows(episode)
        self._starts = np.cumsum([0] + [len(self._rows[e.index]) for e in self.episodes])
        if check_videos:
            self.truncated += self.check_videos()

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def tabular(self) -> list[str]:
        """Keys of the features stored in the data files (everything but cameras)."""
        return [k for k in self.features if k not in self.cameras]

    def _load_file(self, path: Path) -> None:
        table = layout.read_parquet(path)
        layout.require_columns(table, path, [k for k, f in self.features.items() if f["dtype"] != "video"])
        self._tables[path] = table
        self._arrays[path] = {k: _column_array(table.column(k), self.features[k], path, k) for k in self.tabular}

    def _locate_rows(self, episode: EpisodeInfo) -> None:
        """Find the episode's rows (by global ``index``) in its data file; fewer than ``length`` is a truncation."""
        if episode.data_path not in self._arrays:
            self._load_file(episode.data_path)
        order, ordered = self._order(episode.data_path)
        rows = order[np.searchsorted(ordered, episode.from_index):np.searchsorted(ordered, episode.to_index)]
        if len(rows) > episode.length:
            raise UserInputError(f"{episode.data_path}: episode {episode.index} has {len(rows)} frames, "
                                 f"meta/episodes says {episode.length}")
        if len(rows) < episode.length:
            self.truncated.append(Truncation(episode.index, episode.data_path, episode.length, len(rows)))
        self._rows[episode.index] = rows

    def _order(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """A data file's rows sorted by global ``index`` (and the sorted indices), computed once per file."""
        if path not in self._orders:
            index = self._arrays[path]["index"]
            order = np.argsort(index, kind="stable")
            self._orders[path] = (order, index[order])
        return self._orders[path]

    def check_videos(self) -> list[Truncation]:
        """Episodes whose video segments hold fewer frames than their length."""
        found = []
        for episode in self.episodes:
            for segment in episode.videos.values():
                count = self._video(segment.path).count(segment.start, segment.end, self.fps)
                if count < episode.length:
                    found.append(Truncation(episode.index, segment.path, episode.length, count))
        return found

    def _video(self, path: Path) -> VideoFile:
        if path not in self._videos:
            self._videos[path] = VideoFile(path)
        return self._videos[path]

    def episode_info(self, episode_index: int) -> EpisodeInfo:
        if episode_index not in self._by_index:
            raise UserInputError(f"{self.root}: no episode {episode_index}")
        return self._by_index[episode_index]

    def episode(self, episode_index: int) -> dict[str, Any]:
        """The episode's tabular features as ``(T,)``/``(T, D)`` arrays, plus its ``task``."""
        info = self.episode_info(episode_index)
        rows, arrays = self._rows[episode_index], self._arrays[info.data_path]
        return {**{k: arrays[k][rows] for k in self.tabular}, "task": info.task}

    def camera_frames(self, episode_index: int, key: str) -> np.ndarray:
        """All of an episode's frames of one camera, uint8 ``(T, H, W, 3)``."""
        if key not in self.cameras:
            raise UserInputError(f"{self.root}: no camera {key!r} (cameras: {', '.join(self.cameras) or 'none'})")
        if self._frames is not None and (episode_index, key) in self._frames:
            return self._frames[episode_index, key].copy()
        return self._decode_episode(episode_index, key)

    def camera_frame(self, episode_index: int, frame: int, key: str) -> np.ndarray:
        """One frame of one camera, uint8 ``(H, W, 3)``."""
        if key not in self.cameras:
            raise UserInputError(f"{self.root}: no camera {key!r} (cameras: {', '.join(self.cameras) or 'none'})")
        if self._frames is not None:
            if (episode_index, key) not in self._frames:
                self._frames[episode_index, key] = self._decode_episode(episode_index, key)
            return self._frames[episode_index, key][frame]
        return self._decode_frame(episode_index, frame, key)

    def _decode_episode(self, episode_index: int, key: str) -> np.ndarray:
        length = len(self._rows[episode_index])
        if self.features[key]["dtype"] == "image":
            return np.stack([self._decode_frame(episode_index, t, key) for t in range(length)])
        return self._video_frames(episode_index, key, 0, length)

    def _decode_frame(self, episode_index: int, frame: int, key: str) -> np.ndarray:
        if self.features[key]["dtype"] == "image":
            info = self.episode_info(episode_index)
            cell = self._tables[info.data_path].column(key)[int(self._rows[episode_index][frame])].as_py()
            return self._decode_image(cell, info.data_path, key)
        return self._video_frames(episode_index, key, frame, frame + 1)[0]

    def _decode_image(self, cell: Mapping[str, Any] | None, path: Path, key: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            if cell and cell.get("bytes"):
                image = Image.open(io.BytesIO(cell["bytes"]))
            elif cell and cell.get("path"):
                image = Image.open(self.root / cell["path"])
            else:
                raise UserInputError(f"{path}: an empty {key!r} image")
            return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise UserInputError(f"{path}: a {key!r} image does not decode ({e})") from e

    def _video_frames(self, episode_index: int, key: str, first: int, stop: int) -> np.ndarray:
        """Frames ``first:stop`` of an episode, located at ``from_timestamp + timestamp`` in the video."""
        info = self.episode_info(episode_index)
        segment = info.videos[key]
        times = self.episode(episode_index)["timestamp"][first:stop].astype(np.float64) + segment.start
        slots = self._video(segment.path).segment(float(times[0]), float(times[-1]) + 1 / self.fps, self.fps)
        picked = [slots[round((t - times[0]) * self.fps)] for t in times]
        missing = [first + i for i, s in enumerate(picked) if s is None]
        if missing:
            raise UserInputError(f"{segment.path}: episode {episode_index} has no frame {missing[0]} "
                                 f"(at {times[missing[0] - first]:.3f} s)")
        return np.stack(picked)

    def locate(self, i: int) -> tuple[int, int]:
        """The (episode index, frame within it) of the ``i``-th frame of the dataset."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} of a dataset of {len(self)} frames")
        position = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.episodes[position].index, i - int(self._starts[position])

    def frame(self, i: int) -> dict[str, Any]:
        """The ``i``-th frame: tabular features (vectors as arrays, scalars as numpy scalars), every camera as
        uint8 ``(H, W, 3)``, and the ``task``."""
        episode_index, t = self.locate(i)
        info = self.episode_info(episode_index)
        row, arrays = self._rows[episode_index][t], self._arrays[info.data_path]
        out: dict[str, Any] = {k: arrays[k][row] for k in self.tabular}
        out.update({k: self.camera_frame(episode_index, t, k) for k in self.cameras})
        out["task"] = self.tasks[int(out["task_index"])]
        return out

"""The LeRobot dataset v3.0 layout: path templates, the implicit per-frame columns, and file readers that name
the file they fail on.

v3.0 packs many episodes per file: ``data/chunk-NNN/file-NNN.parquet`` holds the frames,
``meta/episodes/chunk-NNN/file-NNN.parquet`` one row per episode (where its frames and video segments are),
``videos/<key>/chunk-NNN/file-NNN.mp4`` the camera streams. A chunk is a folder of at most ``chunks_size`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

# Columns every frame carries besides the user's features (LeRobot's DEFAULT_FEATURES), in its order.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
CAMERA_DTYPES = ("image", "video")
INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "chunks_size", "total_episodes", "total_frames",
             "total_tasks")


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: files fill a chunk folder, then the next chunk starts at file 0."""
    return (chunk_index + 1, 0) if file_index + 1 >= chunks_size else (chunk_index, file_index + 1)


def read_parquet(path: Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table, or a ``UserInputError`` naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserInputError(f"{path}: missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise UserInputError(f"{path}: not a readable parquet file ({e})") from e


def require_columns(table, path: Path, columns: list[str]) -> None:
    """Fail naming the file and the first columns it lacks."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)}")


def check_info(info: Any, path: Path) -> None:
    """The fields a v3.0 ``info.json`` must have, with the types the reader relies on."""
    if not isinstance(info, dict):
        raise UserInputError(f"{path}: expected a JSON object, got {type(info).__name__}")
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise UserInputError(f"{path}: missing field(s) {', '.join(missing)}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise UserInputError(f"{path}: codebase_version {version!r} is not LeRobot v3 (convert it with LeRobot's "
                             "convert_dataset_v21_to_v30 first)")
    if not isinstance(info["fps"], (int, float)) or info["fps"] <= 0:
        raise UserInputError(f"{path}: fps must be a positive number, got {info['fps']!r}")
    if not isinstance(info["features"], dict):
        raise UserInputError(f"{path}: features must be an object")
    for key, feature in info["features"].items():
        if not isinstance(feature, dict) or "dtype" not in feature or not isinstance(feature.get("shape"), list):
            raise UserInputError(f"{path}: feature {key!r} needs a dtype and a shape list")
    if any(f["dtype"] == "video" for f in info["features"].values()) and not info.get("video_path"):
        raise UserInputError(f"{path}: video features but no video_path")

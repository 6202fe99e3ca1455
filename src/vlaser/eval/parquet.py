"""Reading benchmark parquet files (the HF dataset exports), with embedded images written out once.

Image columns hold ``{"bytes": ..., "path": ...}`` structs; their bytes are written to a folder keyed by the
parquet file's path, size and modification time, so items can keep pointing at files. The folders live in one
temporary folder per process, deleted when the process exits: a run leaves no images behind.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path

from vlaser.errors import require
from vlaser.eval.benchmark import BenchmarkDataError


def find_parquet(data_dir: Path, stem: str = "") -> list[Path]:
    """Parquet files under ``data_dir`` (recursively) whose name starts with ``stem``, sorted."""
    return sorted(p for p in data_dir.rglob("*.parquet") if p.name.lower().startswith(stem.lower()))


def _pyarrow():
    return require("pyarrow.parquet", "eval", "parquet benchmarks")


def read_rows(path: Path) -> list[dict]:
    pq = _pyarrow()
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several error types for unreadable files
        raise BenchmarkDataError(f"cannot read parquet {path}: {e}") from e


def iter_rows(files: list[Path]):
    """``(row, image cache folder, "FILE row N")`` for every row of the files, in order."""
    for path in files:
        folder = cache_dir(path)
        for index, row in enumerate(read_rows(path)):
            yield row, folder, f"{path} row {index}"


@functools.cache
def _extracted_images() -> tempfile.TemporaryDirectory:
    """This process's folder of images taken out of parquet files; kept (cached) until the process exits,
    when the ``TemporaryDirectory`` finalizer deletes it."""
    return tempfile.TemporaryDirectory(prefix="vlaser-parquet-")


def cache_dir(path: Path) -> Path:
    """The folder for the images of parquet file ``path`` (one per file version, so each is written once)."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(_extracted_images().name) / key
    folder.mkdir(exist_ok=True)
    return folder


def image_file(value, folder: Path, name: str, where: str) -> Path:
    """Write an image struct (or raw bytes) to ``folder/name`` once and return the path."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, (bytes, bytearray)):
        raise BenchmarkDataError(f"{where}: expected embedded image bytes, got {type(data).__name__}")
    target = folder / name
    if not target.is_file() or target.stat().st_size != len(data):
        target.write_bytes(data)
    return target


def read_rows_without(path: Path, *skip: str) -> list[dict]:
    """Rows without the named (large) columns."""
    pq = _pyarrow()
    try:
        names = [n for n in pq.ParquetFile(path).schema_arrow.names if n not in skip]
        return pq.read_table(path, columns=names).to_pylist()
    except Exception as e:  # pyarrow raises several error types for unreadable files
        raise BenchmarkDataError(f"cannot read parquet {path}: {e}") from e


@functools.lru_cache(maxsize=4)
def _column(path: Path, name: str):
    return _pyarrow().read_table(path, columns=[name]).column(name)


def row_column(path: Path, row: int, name: str):
    """One cell, reading (and caching) only that column of the file."""
    return _column(path, name)[row].as_py()

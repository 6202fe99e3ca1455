"""Reading benchmark parquet files (the HF dataset exports), with embedded images written out once.

Image columns hold ``{"bytes": ..., "path": ...}`` structs; their bytes are written to a cache folder
keyed by the parquet file's path, size and modification time, so items can keep pointing at files.
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


def cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "vlaser-parquet" / key
    folder.mkdir(parents=True, exist_ok=True)
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

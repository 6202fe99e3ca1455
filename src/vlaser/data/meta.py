"""Reading InternVL's meta JSON and its JSONL annotation files, keeping every line's origin.

Broken lines are never dropped silently: each becomes a :class:`Skip` naming the dataset, file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vlaser.errors import UserInputError
from vlaser.jsonl import JSONLError, read_json, read_jsonl


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of the meta JSON (``{name: {root, annotation, data_augment, repeat_time, ...}}``)."""

    name: str
    root: str
    annotation: Path
    data_augment: bool = False
    repeat_time: float = 1.0
    max_dynamic_patch: int | None = None
    length: int | None = None


@dataclass(frozen=True)
class Record:
    """One JSONL line and where it came from (``line`` is 1-based)."""

    spec: DatasetSpec
    line: int
    data: dict

@dataclass(frozen=True)
class Skip:
    """A sample that was not trained on, and why."""

    dataset: str
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.dataset} ({self.file}:{self.line}): {self.reason}"


@dataclass
class Annotations:
    records: list[Record] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


class MetaError(UserInputError):
    """The meta JSON itself is unusable; the message names the file and the entry."""


def resolve_entry_path(meta: Path, value: str, dataset: str, key: str) -> str:
    """A relative ``root`` or ``annotation`` of a meta file: beside the meta file when it exists there (how vlaser
    writes them), else as given, from the working directory (how InternVL reads them); a path that exists both
    ways as two different things is refused rather than guessed (README, "Fine-tuning", Data)."""
    given = Path(value)
    if not value or "://" in value or given.is_absolute():
        return value
    beside = meta.parent / given
    if not beside.exists():
        return value
    if given.exists() and given.resolve() != beside.resolve():
        raise MetaError(f"{meta}: dataset {dataset!r}: {key} {value!r} is both {beside} (beside the meta file) and "
                        f"{given.resolve()} (from the working directory); write the one meant as an absolute path")
    return str(beside)


def load_meta(path: str | os.PathLike) -> list[DatasetSpec]:
    """Parse a meta JSON. Relative ``annotation`` and ``root`` paths resolve against the meta file's folder, then
    the CWD (:func:`resolve_entry_path`)."""
    path = Path(path)
    try:
        meta = read_json(path)
    except UserInputError as e:
        raise MetaError(f"cannot read meta file {e}") from e
    if not isinstance(meta, dict) or not meta:
        raise MetaError(f"{path}: expected a non-empty JSON object mapping dataset names to entries")
    specs = []
    for name, entry in meta.items():
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise MetaError(f"{path}: dataset {name!r} needs an 'annotation' (.jsonl) entry")
        annotation = Path(resolve_entry_path(path, str(entry["annotation"]), name, "annotation"))
        if annotation.suffix != ".jsonl":
            raise MetaError(f"{path}: dataset {name!r}: annotation must be a .jsonl file, got {annotation}")
        repeat = entry.get("repeat_time", 1)
        if not isinstance(repeat, (int, float)) or repeat <= 0 or (repeat > 1 and not float(repeat).is_integer()):
            raise MetaError(
                f"{path}: dataset {name!r}: repeat_time must be a fraction <= 1 or an integer, got {repeat}"
            )
        specs.append(DatasetSpec(
            name=name, root=resolve_entry_path(path, str(entry.get("root", "")), name, "root"), annotation=annotation,
            data_augment=bool(entry.get("data_augment", False)), repeat_time=repeat,
            max_dynamic_patch=entry.get("max_dynamic_patch"), length=entry.get("length"),
        ))
    return specs


def check_datasets(path: str | os.PathLike) -> list[DatasetSpec]:
    """The meta file's datasets, each annotation file and image root checked to exist: what ``vlaser train``
    confirms before loading any weights (for an 8B model that takes minutes)."""
    specs = load_meta(path)
    for spec in specs:
        if not spec.annotation.is_file():
            raise MetaError(f"{path}: dataset {spec.name!r}: annotation file not found: {spec.annotation}")
        if spec.root and "://" not in spec.root and not Path(spec.root).is_dir():
            raise MetaError(f"{path}: dataset {spec.name!r}: root folder not found: {spec.root}")
    return specs


def read_annotations(spec: DatasetSpec) -> Annotations:
    """All usable lines of one dataset, after ``repeat_time``; unreadable lines become skips.

    ``repeat_time`` < 1 keeps the first fraction of the lines (not a random subset), an integer repeats
    the list, exactly as InternVL does.
    """
    out = Annotations()

    def skip(error: JSONLError) -> None:
        out.skips.append(Skip(spec.name, str(spec.annotation), error.line, f"invalid JSON: {error.reason}"))

    try:
        lines = list(read_jsonl(spec.annotation, on_error=skip))
    except OSError as e:
        raise MetaError(f"dataset {spec.name!r}: cannot read annotation {spec.annotation}: {e}") from e
    for number, data in lines:
        if not isinstance(data, dict) or not isinstance(data.get("conversations"), list) or not data["conversations"]:
            out.skips.append(Skip(spec.name, str(spec.annotation), number, "no 'conversations' list"))
            continue
        out.records.append(Record(spec, number, data))
    if spec.repeat_time < 1:
        out.records = out.records[: int(len(out.records) * spec.repeat_time)]
    elif spec.repeat_time > 1:
        out.records = out.records * int(spec.repeat_time)
    return out


def media_path(record: Record, relative: str) -> Path:
    """An image or video path of a record: joined to the dataset's ``root`` (as ``os.path.join`` does)."""
    return Path(os.path.join(record.spec.root, relative))

"""What a benchmark is made of: its items, a per-item score, and the error for its bad files.

Below :mod:`vlaser.eval.benchmark` and the scoring helpers (:mod:`vlaser.eval.masks`), which both use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError


class BenchmarkDataError(UserInputError):
    """The benchmark's files are missing or malformed; the message names the file."""


@dataclass
class Item:
    """One question: its official id, the query text, its image(s) and what scoring needs."""

    id: str
    question: str  # the task text without any answer-format instruction
    official_prompt: str  # the prompt the benchmark's own code sends
    images: list[Path]
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    #: a clip whose sampled frames follow ``images``; frames are chosen by ``Benchmark.frame_indices``, decoded
    #: only when the item is asked (``eval score`` never needs the file)
    video: Path | None = None
    #: why the item's annotation (its row or ground-truth file) could not be read at load; such an item is never
    #: asked and is left out of the score, named and counted (docs/eval_suite.md, "Damaged benchmark files")
    gt_error: str | None = None


def unreadable_item(where: str, reason: str) -> Item:
    """A stand-in for an annotation row that cannot be read (its id is ``where``, e.g. ``file.jsonl:7``): it keeps
    the damage named and counted in the outputs instead of aborting the run or vanishing."""
    return Item(id=where, question="", official_prompt="", images=[], gt_error=f"{where}: {reason}")


def keep_damaged_lines(items: list[Item], path: Path):
    """``read_jsonl``'s ``on_error`` for an annotation file: each line that is not JSON joins ``items`` as an
    :func:`unreadable_item` named ``FILE:LINE``, in file order."""
    return lambda error: items.append(unreadable_item(f"{path.name}:{error.line}", f"invalid JSON: {error.reason}"))


@dataclass
class Score:
    """Per-item result. ``value`` None means the item is left out of the mean (an official skip)."""

    value: float | None
    parsed: bool
    points: list[tuple[float, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class Score:
    """Per-item result. ``value`` None means the item is left out of the mean (an official skip)."""

    value: float | None
    parsed: bool
    points: list[tuple[float, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

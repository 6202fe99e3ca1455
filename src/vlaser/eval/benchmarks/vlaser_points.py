"""The JSONL pointing sets of Vlaser's own evaluators (``evaluate_point_pixmo.py``, ``evaluate_point_paco.py``).

Source: ``OpenGVLab/Vlaser@a17f4da:Vlaser_VLM/internvl_chat/eval/evaluate_point_{pixmo,paco}.py``.

Each line holds ``image`` and ``conversations`` (and, in Vlaser's files, ``width``/``height``); every human turn
with a ``<ref>EXPR</ref>`` is one query: the turn's *first* ``<ref>`` (``re.search``, no DOTALL, the text kept
as written, not stripped), asked as ``" " + POINT_PROMPT + " Please provide the referring points of EXPR."``.
Item id: the line's ``id`` (or its 0-based line index), with ``#k`` (k from 0) appended when the line holds
several queries; two lines with the same id are refused.
Both evaluators count points: ``precision = sum(correct points) / sum(max(predicted points, 1))`` over all
queries (a query with no point counts as one miss); predicted points are every ``[x, y]`` pair of the answer.

Annotation file: the evaluators take it by path (defaults ``pixmo_points_json/data_0.jsonl`` and
``paco_lvis_v1_pointing_test_single_conv.jsonl``). In a folder, run outputs (``predictions*.jsonl``,
``scores.jsonl``) are never taken; of the other ``.jsonl`` files the one with the benchmark's known name wins,
else the only one; otherwise the error lists them (``--option annotation=NAME`` chooses).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, Item, Score, check_prompt_style, keep_damaged_lines
from vlaser.jsonl import read_jsonl
from vlaser.points import referring_point_question

#: the evaluators' ``re.search(r'<ref>(.*?)</ref>', ...)``: first match only, ``.`` does not cross a newline
REF = re.compile(r"<ref>(.*?)</ref>")
#: the evaluators' pattern: every bracketed pair of non-negative numbers, anywhere in the answer
EVAL_PAIR = re.compile(r"\[\s*(\d+\.?\d*)\s*,\s*(\d+\.?\d*)\s*\]")
#: what vlaser writes into an output folder (and what ``eval score`` reads): never an annotation file
OUTPUT_FILE = re.compile(r"^(predictions.*|scores)\.jsonl$")


def eval_points(text: str) -> list[tuple[float, float]]:
    """Every ``[x, y]`` pair of an answer, as floats (the evaluators' ``PATTERN.findall``)."""
    return [(float(x), float(y)) for x, y in EVAL_PAIR.findall(text)]


def first_ref(text: str) -> str | None:
    """The first ``<ref>`` expression of a turn, as written; None without one."""
    match = REF.search(text)
    return match.group(1) if match else None


def find_annotation(data_dir: Path, known: tuple[str, ...], chosen: str | None = None) -> Path:
    """The annotation JSONL in ``data_dir``: ``chosen`` if given, else the one non-output file with a ``known``
    name pattern, else the only non-output file; an ambiguous folder raises, listing the candidates."""
    if chosen:
        path = Path(chosen) if Path(chosen).is_absolute() else data_dir / chosen
        if not path.is_file():
            raise BenchmarkDataError(f"{path}: annotation file not found (--option annotation)")
        return path
    files = sorted(data_dir.glob("*.jsonl"))
    candidates = [f for f in files if not OUTPUT_FILE.match(f.name)]
    named = [f for f in candidates if any(re.search(p, f.name, re.IGNORECASE) for p in known)]
    if len(named) == 1:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BenchmarkDataError(f"{data_dir}: no annotation .jsonl (run outputs are never taken: "
                                 f"{[f.name for f in files]})")
    raise BenchmarkDataError(f"{data_dir}: cannot tell the annotation file among {[f.name for f in candidates]} "
                             f"(known names match {list(known)}); choose with --option annotation=NAME")


def annotation_jsonl_present(data_dir: Path) -> bool:
    """Whether the folder holds a ``.jsonl`` that is not a run output (so Vlaser's JSONL layout applies)."""
    return any(not OUTPUT_FILE.match(f.name) for f in data_dir.glob("*.jsonl"))


class VlaserPointJSONL(Benchmark):
    """Shared loading and precision for the two Vlaser JSONL pointing sets."""

    #: regular expressions an annotation file's name is recognised by (``find_annotation``)
    annotation_names: ClassVar[tuple[str, ...]] = ()

    def annotation(self, data_dir: Path) -> Path:
        return find_annotation(data_dir, self.annotation_names, self.options.get("annotation"))

    def read_lines(self, path: Path, damaged: list[Item]) -> list[tuple[int, dict]]:
        """``(1-based line number, record)`` for every non-blank line; a line that is not JSON joins ``damaged``
        (named and counted, never asked), a JSON line of the wrong shape raises naming it."""
        rows = []
        for number, row in read_jsonl(path, on_error=keep_damaged_lines(damaged, path)):
            try:
                if not isinstance(row, dict) or not isinstance(row["image"], str):
                    raise TypeError("a line must be an object with an 'image' string")
                if not all(isinstance(t["from"], str) and isinstance(t["value"], str) for t in row["conversations"]):
                    raise TypeError("every turn needs 'from' and 'value' strings")
            except (KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{path}:{number}: {e!r}") from e
            rows.append((number, row))
        return rows

    def load(self, data_dir: Path) -> list[Item]:
        path = self.annotation(data_dir)
        damaged: list[Item] = []
        return self.items_from(data_dir, path, self.read_lines(path, damaged)) + damaged

    def items_from(self, data_dir: Path, path: Path, rows: list[tuple[int, dict]]) -> list[Item]:
        """One item per human turn with a ``<ref>``, in file order (the evaluators' dataset order)."""
        items: list[Item] = []
        first_line: dict[str, int] = {}
        for number, row in rows:
            image = data_dir / row["image"]
            if not image.exists() and (data_dir / "images" / row["image"]).exists():
                image = data_dir / "images" / row["image"]
            queries = [e for t in row["conversations"] if t["from"] == "human"
                       for e in [first_ref(t["value"])] if e is not None]
            base = str(row.get("id", number - 1))
            if base in first_line:
                raise BenchmarkDataError(f"{path}:{number}: id {base!r} already used on line {first_line[base]}")
            first_line[base] = number
            for k, expression in enumerate(queries):
                items.append(Item(id=base if len(queries) == 1 else f"{base}#{k}", question=expression,
                                  official_prompt=referring_point_question(expression), images=[image],
                                  meta={"row": row, "expression": expression, "line": number, "file": str(path)}))
        return items

    def prompt(self, item: Item, style: str) -> str:
        check_prompt_style(style)
        return item.official_prompt  # Vlaser's own evaluator: the two are the same

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        used = [s for s in scores if s.value is not None]
        # an answer lost to unreadable media (the runner's error record) counts as one miss
        correct = sum(s.extra.get("correct", 0) for s in used)
        total = sum(s.extra.get("total", 1) for s in used)
        return {"score": correct / total if total else 0.0, "n": len(items), "n_scored": len(used),
                "n_unparsed": sum(not s.parsed for s in scores), "correct_points": correct, "counted_points": total,
                "n_skipped": len(scores) - len(used), "by_group": {}}

"""The JSONL pointing sets of Vlaser's own evaluators (``evaluate_point_pixmo.py``, ``evaluate_point_paco.py``).

Each line holds ``image`` and ``conversations``; every human turn with ``<ref>EXPR</ref>`` is one query,
asked as ``" " + POINT_PROMPT + " Please provide the referring points of EXPR."``. Item id: the line's
``id`` (or its 0-based line index), with ``#k`` (k from 0) appended when the line holds several queries.
Both protocols count points: ``precision = sum(correct points) / sum(max(predicted points, 1))`` over all
queries (a query with no point counts as one miss); predicted points are every ``[x, y]`` pair of the answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, Item, Score
from vlaser.points import referring_point_question

REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
#: the evaluators' pattern: every bracketed pair of non-negative numbers, anywhere in the answer
EVAL_PAIR = re.compile(r"\[\s*(\d+\.?\d*)\s*,\s*(\d+\.?\d*)\s*\]")


def eval_points(text: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in EVAL_PAIR.findall(text)]


class VlaserPointJSONL(Benchmark):
    """Shared loading and precision for the two Vlaser JSONL pointing sets."""

    def annotation(self, data_dir: Path) -> Path:
        if self.options.get("annotation"):
            return data_dir / str(self.options["annotation"])
        files = sorted(data_dir.glob("*.jsonl"))
        if len(files) != 1:
            raise BenchmarkDataError(f"{data_dir}: expected one .jsonl annotation file, found {[f.name for f in files]}"
                                     " (choose with --option annotation=NAME)")
        return files[0]

    def load(self, data_dir: Path) -> list[Item]:
        path = self.annotation(data_dir)
        items = []
        for index, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = data_dir / row["image"]
                if not image.exists() and (data_dir / "images" / row["image"]).exists():
                    image = data_dir / "images" / row["image"]
                queries = [m.strip() for t in row["conversations"] if t["from"] == "human"
                           for m in REF.findall(t["value"])]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{path}:{index + 1}: {e!r}") from e
            base = str(row.get("id", index))
            for k, expression in enumerate(queries):
                prompt = referring_point_question(expression)
                items.append(Item(id=base if len(queries) == 1 else f"{base}#{k}", question=expression,
                                  official_prompt=prompt, images=[image],
                                  meta={"row": row, "expression": expression, "line": index + 1}))
        return items

    def prompt(self, item: Item, style: str) -> str:
        if style not in ("vlaser", "official"):
            raise ValueError(f"--prompt must be vlaser or official, got {style!r}")
        return item.official_prompt  # Vlaser's own evaluator: the two are the same

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        used = [s for s in scores if s.value is not None]
        correct = sum(s.extra["correct"] for s in used)
        total = sum(s.extra["total"] for s in used)
        return {"score": correct / total if total else 0.0, "n": len(items), "n_scored": len(used),
                "n_unparsed": sum(not s.parsed for s in scores), "correct_points": correct, "counted_points": total,
                "by_group": {}}

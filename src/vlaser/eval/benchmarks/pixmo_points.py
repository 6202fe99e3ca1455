"""Pixmo-Points, Vlaser protocol (``evaluate_point_pixmo.py``): points within radius 25 of a GT point.

Ground truth: the ``[x, y]`` integer pairs of the gpt turn carrying the same ``<ref>EXPR</ref>``, on the
0-1000 grid; predictions stay on the grid too. A predicted point is correct when it lies within
``radius`` (default 25) of any GT point. The official script keys ground truth by the ``image`` field as
written but predictions by its base name, so a line whose ``image`` has a folder finds no ground truth
and is skipped; that is reproduced (``match_by_line=true`` pairs them by line instead).
"""

from __future__ import annotations

import math
import os
import re

from vlaser.eval.benchmark import Item, Score
from vlaser.eval.benchmarks.vlaser_points import REF, VlaserPointJSONL, eval_points

_INT_PAIR = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]")


def ground_truth(row: dict, expression: str) -> list[tuple[int, int]] | None:
    """The integer pairs of the gpt turn that refers to ``expression`` (at least one pair), else None."""
    for turn in row["conversations"]:
        refs = [r.strip() for r in REF.findall(turn["value"])] if turn["from"] == "gpt" else []
        if expression in refs:
            pairs = [(int(x), int(y)) for x, y in _INT_PAIR.findall(turn["value"])]
            if pairs:
                return pairs
    return None


class PixmoPoints(VlaserPointJSONL):
    name = "pixmo_points"
    protocols = ("vlaser",)

    def score(self, item: Item, response: str) -> Score:
        row = item.meta["row"]
        gt = ground_truth(row, item.meta["expression"])
        keyed_apart = os.path.basename(row["image"]) != row["image"] and not self.options.get("match_by_line")
        if gt is None or keyed_apart:
            return Score(None, parsed=bool(eval_points(response)), extra={"skipped": "no ground truth for this key"})
        radius = float(self.options.get("radius", 25.0))
        points = eval_points(response)
        correct = sum(any(math.dist(p, g) <= radius for g in gt) for p in points)
        return Score(correct / max(len(points), 1), parsed=bool(points), points=[],
                     extra={"correct": correct, "total": max(len(points), 1)})

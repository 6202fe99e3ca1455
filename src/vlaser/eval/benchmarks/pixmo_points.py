"""Pixmo-Points: Vlaser's protocol on its JSONL, and Molmo's ``PointingEval`` on the HF parquet.

``--protocol vlaser`` (default; ``evaluate_point_pixmo.py``): points within radius 25 of a GT point.

Ground truth: the ``[x, y]`` integer pairs of the gpt turn carrying the same ``<ref>EXPR</ref>``, on the
0-1000 grid; predictions stay on the grid too. A predicted point is correct when it lies within
``radius`` (default 25) of any GT point. The official script keys ground truth by the ``image`` field as
written but predictions by its base name, so a line whose ``image`` has a folder finds no ground truth
and is skipped; that is reproduced (``match_by_line=true`` pairs them by line instead).

``--protocol molmo``: the ``allenai/pixmo-points-eval`` parquet (``image_url``, ``image_sha256``,
``label``, ``points``, ``masks``) with its images downloaded beside it as ``images/<image_sha256>.*``.
Item id: the 0-based row index. Molmo answers (percent) and Vlaser ``<point>`` answers (0-1000 grid)
are both accepted; a Vlaser answer passes the format gate when it is exactly one ``<point>`` block.
Molmo matches predictions (pixels) against the dataset's points as stored (percent): reproduced;
``fix_gt_scale=true`` converts the ground-truth points to pixels first. Score: mean F1 (precision and
recall are reported too); an empty ground truth scores 1 only for an answer without points.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from vlaser.eval.benchmark import VLASER_EVALUATOR, BenchmarkDataError, Item, Protocol, Score
from vlaser.eval.benchmarks.vlaser_points import REF, VlaserPointJSONL, eval_points
from vlaser.eval.extract import vlaser_pixels
from vlaser.eval.masks import image_size
from vlaser.eval.molmo import extract_points, is_valid_format, pointing_scores
from vlaser.eval.parquet import find_parquet, read_rows_without, row_column
from vlaser.points import referring_point_question

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


MOLMO_PROMPT = "Point to {label}\nPlease say 'This isn't in the image.' if it is not in the image."
_VLASER_ONLY = re.compile(r"^\s*<point>\s*\[.*\]\s*</point>\s*$", re.DOTALL)


class PixmoPoints(VlaserPointJSONL):
    name = "pixmo_points"
    protocols = (
        Protocol("vlaser", prompt="vlaser", max_num=6, max_new_tokens=100, min_new_tokens=1, source=VLASER_EVALUATOR),
        Protocol("molmo", prompt="official", max_num=6, max_new_tokens=100, min_new_tokens=1,
                 source="Molmo's PointingEval data and scorer, asked with Vlaser's evaluator settings"),
    )

    def load(self, data_dir: Path) -> list[Item]:
        if self.protocol == "vlaser":
            if not list(data_dir.glob("*.jsonl")):
                raise BenchmarkDataError(f"{data_dir}: the vlaser protocol reads Vlaser's JSONL; for the HF parquet "
                                         "use --protocol molmo")
            return super().load(data_dir)
        files = find_parquet(data_dir)
        if not files:
            raise BenchmarkDataError(f"{data_dir}: no parquet file (allenai/pixmo-points-eval) found")
        items, index = [], 0
        for path in files:
            for row_in_file, row in enumerate(read_rows_without(path, "masks")):
                sha = row.get("image_sha256") or ""
                found = sorted((data_dir / "images").glob(f"{sha}*")) if sha else []
                image = found[0] if found else data_dir / "images" / f"{sha or index}.missing"
                items.append(Item(id=str(index), question=row["label"], images=[image],
                                  official_prompt=MOLMO_PROMPT.format(label=row["label"]),
                                  meta={"points": [(p["x"], p["y"]) for p in row.get("points") or []],
                                        "parquet": str(path), "row_in_file": row_in_file}))
                index += 1
        return items

    def prompt(self, item: Item, style: str) -> str:
        """Vlaser's referring question; with the molmo protocol, ``--prompt official`` asks Molmo's way."""
        if style not in ("vlaser", "official"):
            raise ValueError(f"--prompt must be vlaser or official, got {style!r}")
        if self.protocol == "molmo" and style == "official":
            return item.official_prompt
        return referring_point_question(item.question)

    def score(self, item: Item, response: str) -> Score:
        if self.protocol == "molmo":
            return self._score_molmo(item, response)
        row = item.meta["row"]
        gt = ground_truth(row, item.meta["expression"])
        keyed_apart = os.path.basename(row["image"]) != row["image"] and not self.options.get("match_by_line")
        if gt is None or keyed_apart:
            return Score(None, parsed=bool(eval_points(response)), extra={"skipped": "no ground truth for this key"})
        radius = float(self.options.get("radius", 25.0))
        points = eval_points(response)
        correct = sum(any(math.dist(p, g) <= radius for g in gt) for p in points)
        return Score(correct / max(len(points), 1), parsed=bool(points), points=self._to_pixels(item, points),
                     extra={"correct": correct, "total": max(len(points), 1)})

    def _to_pixels(self, item: Item, grid_points) -> list[tuple[float, float]]:
        if not grid_points or not item.images[0].is_file():
            return []
        width, height = image_size(item.images[0])
        return [(x / 1000 * width, y / 1000 * height) for x, y in grid_points]

    def gt_mask(self, item: Item):
        if self.protocol == "vlaser":
            return None
        cells = row_column(Path(item.meta["parquet"]), item.meta["row_in_file"], "masks") or []
        masks = [np.asarray(m, dtype=bool) for m in cells]
        return np.logical_or.reduce(masks).astype(np.float64) if masks else None

    def gt_points(self, item: Item) -> list[tuple[float, float]]:
        if self.protocol != "vlaser":
            return []
        return self._to_pixels(item, ground_truth(item.meta["row"], item.meta["expression"]) or [])

    def _score_molmo(self, item: Item, response: str) -> Score:
        cells = row_column(Path(item.meta["parquet"]), item.meta["row_in_file"], "masks") or []
        masks = [np.asarray(m, dtype=bool) for m in cells]
        if masks:
            height, width = masks[0].shape
        else:
            width, height = image_size(item.images[0])
        vlaser = vlaser_pixels(response, width, height)
        if vlaser is not None:
            pred, valid = [(float(x), float(y)) for x, y in vlaser], bool(_VLASER_ONLY.match(response))
        else:
            pred, valid = extract_points(response, width, height), is_valid_format(response)
        gt = item.meta["points"]
        if self.options.get("fix_gt_scale"):
            gt = [(x / 100 * width, y / 100 * height) for x, y in gt]
        result = pointing_scores(pred, gt, masks, valid)
        return Score(result["f1"], parsed=bool(pred), points=pred, extra=result)

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict:
        if self.protocol == "vlaser":
            return super().aggregate(items, scores)
        used = [s for s in scores if s.value is not None]
        mean = {k: sum(s.extra[k] for s in used) / len(used) if used else 0.0 for k in ("precision", "recall", "f1")}
        return {"score": mean["f1"], **mean, "n": len(items), "n_scored": len(used),
                "n_unparsed": sum(not s.parsed for s in scores), "by_group": {}}

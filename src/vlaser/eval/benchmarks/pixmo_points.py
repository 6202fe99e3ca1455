"""Pixmo-Points: Vlaser's protocol on its JSONL, and Molmo's ``PointingEval`` on the HF parquet.

Protocols ``vlaser`` (default) and ``molmo``. Sources, how ground truth is looked up, the quirks reproduced, the
scoring and the options ``match_by_line=true``, ``radius``, ``fix_gt_scale=true``: ``docs/benchmarks/pixmo_points.md``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vlaser.eval.benchmark import VLASER_EVALUATOR, BenchmarkDataError, EvalProtocol, Item, Score, check_prompt_style
from vlaser.eval.benchmarks.vlaser_points import VlaserPointJSONL, annotation_jsonl_present, eval_points, first_ref
from vlaser.eval.extract import vlaser_pixels
from vlaser.eval.masks import image_size
from vlaser.eval.molmo import extract_points, is_valid_format, pointing_scores
from vlaser.eval.parquet import cache_dir, find_parquet, image_file, read_rows_without, row_column
from vlaser.points import referring_point_question

#: ``load_gt_points``' pair pattern: integers only
_INT_PAIR = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]")
GridPoints = list[tuple[int, int]]


def gt_turns(row: dict) -> list[tuple[str, GridPoints]]:
    """``(expression, pairs)`` of each gpt turn with a ``<ref>`` and at least one integer pair, in order."""
    found = []
    for turn in row["conversations"]:
        if turn["from"] != "gpt":
            continue
        expression, pairs = first_ref(turn["value"]), _INT_PAIR.findall(turn["value"])
        if expression is not None and pairs:
            found.append((expression, [(int(x), int(y)) for x, y in pairs]))
    return found


def official_ground_truth(rows: list[tuple[int, dict]]) -> dict[tuple[str, str], tuple[GridPoints, int]]:
    """``load_gt_points``: ``(image as written, expression) -> (points, line)``, the last turn with a key winning."""
    table: dict[tuple[str, str], tuple[GridPoints, int]] = {}
    for number, row in rows:
        for expression, points in gt_turns(row):
            table[(row["image"], expression)] = (points, number)
    return table


def line_ground_truth(row: dict, expression: str) -> GridPoints | None:
    """The line's own points for ``expression`` (its last matching gpt turn), for ``match_by_line``."""
    own = [points for e, points in gt_turns(row) if e == expression]
    return own[-1] if own else None


def molmo_image(value: Any, parquet: Path, data_dir: Path, name: str, where: str) -> Path | None:
    """The file of a Molmo ``image`` cell (a path, or a struct with bytes or a path); None for an empty cell."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return image_file(value, cache_dir(parquet), name, where)
        value = value.get("path")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BenchmarkDataError(f"{where}: 'image' must be a path or an image struct, got {type(value).__name__}")
    path = Path(value)
    candidates = [parquet.parent / path, data_dir / path, data_dir / "images" / path.name]  # absolute: as written
    return next((c for c in candidates if c.is_file()), candidates[0])


MOLMO_PROMPT = "Point to {label}\nPlease say 'This isn't in the image.' if it is not in the image."
_VLASER_ONLY = re.compile(r"^\s*<point>\s*\[.*\]\s*</point>\s*$", re.DOTALL)


class PixmoPoints(VlaserPointJSONL):
    name = "pixmo_points"
    known_options = ("annotation", "match_by_line", "radius", "fix_gt_scale")
    protocols = (
        EvalProtocol("vlaser", version=2, prompt="vlaser", max_tiles=6, max_new_tokens=100, min_new_tokens=1,
                 source=VLASER_EVALUATOR),
        EvalProtocol("molmo", prompt="official", max_tiles=6, max_new_tokens=100, min_new_tokens=1,
                 source="Molmo's PointingEval data and scorer, asked with Vlaser's evaluator settings"),
    )

    annotation_names = (r"pixmo", r"^data_\d+\.jsonl$")

    def load(self, data_dir: Path) -> list[Item]:
        if self.protocol == "vlaser":
            return self._load_jsonl(data_dir)
        files = find_parquet(data_dir)
        if not files:
            raise BenchmarkDataError(f"{data_dir}: no parquet file (allenai/pixmo-points-eval) found")
        items, index = [], 0
        for path in files:
            for row_in_file, row in enumerate(read_rows_without(path, "masks")):
                where = f"{path} row {row_in_file}"
                try:
                    label, points = row["label"], [(p["x"], p["y"]) for p in row.get("points") or []]
                except (KeyError, TypeError) as e:
                    raise BenchmarkDataError(f"{where}: {e!r} (expected 'label' and 'points' of {{x, y}})") from e
                image = self._row_image(row, path, data_dir, index, where)
                items.append(Item(id=str(index), question=label, images=[image],
                                  official_prompt=MOLMO_PROMPT.format(label=label),
                                  meta={"points": points, "parquet": str(path), "row_in_file": row_in_file}))
                index += 1
        return items

    def _row_image(self, row: dict, parquet: Path, data_dir: Path, index: int, where: str) -> Path:
        """Molmo's local ``image`` column when the row has one, else ``images/<image_sha256>.*``."""
        local = molmo_image(row.get("image"), parquet, data_dir, f"{index}.img", where)
        if local is not None:
            return local
        sha = row.get("image_sha256") or ""
        found = sorted((data_dir / "images").glob(f"{sha}*")) if sha else []
        return found[0] if found else data_dir / "images" / f"{sha or index}.missing"

    def _load_jsonl(self, data_dir: Path) -> list[Item]:
        """Vlaser's queries, each with the ground truth the evaluator gives it and its own line's."""
        if not annotation_jsonl_present(data_dir):
            raise BenchmarkDataError(f"{data_dir}: the vlaser protocol reads Vlaser's JSONL; for the HF parquet "
                                     "use --protocol molmo")
        path = self.annotation(data_dir)
        damaged: list[Item] = []
        rows = self.read_lines(path, damaged)
        table = official_ground_truth(rows)
        items = self.items_from(data_dir, path, rows)
        for item in items:
            row, expression = item.meta["row"], item.meta["expression"]
            points, line = table.get((os.path.basename(row["image"]), expression), (None, None))
            item.meta.update(gt=points, gt_line=line, own_gt=line_ground_truth(row, expression))
        return items + damaged

    def prompt(self, item: Item, style: str) -> str:
        """Vlaser's referring question; with the molmo protocol, ``--prompt official`` asks Molmo's way."""
        check_prompt_style(style)
        if self.protocol == "molmo" and style == "official":
            return item.official_prompt
        return referring_point_question(item.question)

    def ground_truth(self, item: Item) -> tuple[GridPoints | None, int | None]:
        """The points a query is scored against and the line they come from (``docs/benchmarks/pixmo_points.md``)."""
        if self.options.get("match_by_line"):
            own = item.meta["own_gt"]
            return own, item.meta["line"] if own is not None else None
        return item.meta["gt"], item.meta["gt_line"]

    def score(self, item: Item, response: str) -> Score:
        if self.protocol == "molmo":
            return self._score_molmo(item, response)
        gt, line = self.ground_truth(item)
        points = eval_points(response)
        if gt is None:
            key = (os.path.basename(item.meta["row"]["image"]), item.meta["expression"])
            return Score(None, parsed=bool(points), extra={"skipped": f"no ground truth for {key}"})
        radius = float(self.options.get("radius", 25.0))
        correct = sum(any(math.dist(p, g) <= radius for g in gt) for p in points)
        return Score(correct / max(len(points), 1), parsed=bool(points), points=self._to_pixels(item, points),
                     extra={"correct": correct, "total": max(len(points), 1), "gt_line": line})

    def _to_pixels(self, item: Item, grid_points) -> list[tuple[float, float]]:
        if not grid_points or not item.images[0].is_file():
            return []
        width, height = image_size(item.images[0])
        return [(x / 1000 * width, y / 1000 * height) for x, y in grid_points]

    def masks(self, item: Item) -> list[np.ndarray]:
        """The molmo item's ground-truth masks (its parquet ``masks`` cell), each ``(H, W)`` bool, one per point; a
        damaged cell is a ``BenchmarkDataError`` naming the file and row (the item is then left out of the score)."""
        where = f"{item.meta['parquet']} row {item.meta['row_in_file']}"
        try:
            masks = [np.asarray(m, dtype=bool) for m in
                     row_column(Path(item.meta["parquet"]), item.meta["row_in_file"], "masks") or []]
        except Exception as e:  # pyarrow and numpy raise several types for a damaged or ragged cell
            raise BenchmarkDataError(f"{where}: cannot read its 'masks' cell: {e}") from e
        shapes = [m.shape for m in masks]
        if any(m.ndim != 2 or m.shape != shapes[0] for m in masks):
            raise BenchmarkDataError(f"{where}: 'masks' must be 2-D masks of one size, got shapes {shapes}")
        if item.meta["points"] and len(masks) != len(item.meta["points"]):
            raise BenchmarkDataError(f"{where}: {len(item.meta['points'])} point(s) but {len(masks)} mask(s); "
                                     "Molmo's scorer needs one mask per point")
        return masks

    def gt_mask(self, item: Item):
        if self.protocol == "vlaser":
            return None
        masks = self.masks(item)
        return np.logical_or.reduce(masks).astype(np.float64) if masks else None

    def gt_points(self, item: Item) -> list[tuple[float, float]]:
        if self.protocol != "vlaser":
            return []
        return self._to_pixels(item, self.ground_truth(item)[0] or [])

    def _score_molmo(self, item: Item, response: str) -> Score:
        masks = self.masks(item)
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
            metrics = super().aggregate(items, scores)
            metrics["n_gt_from_other_line"] = sum(s.extra.get("gt_line", item.meta["line"]) != item.meta["line"]
                                                  for item, s in zip(items, scores))
            return metrics
        used = [s for s in scores if s.value is not None]
        mean = {k: sum(s.extra[k] for s in used) / len(used) if used else 0.0 for k in ("precision", "recall", "f1")}
        return {"score": mean["f1"], **mean, "n": len(items), "n_scored": len(used),
                "n_unparsed": sum(not s.parsed for s in scores), "by_group": {}}

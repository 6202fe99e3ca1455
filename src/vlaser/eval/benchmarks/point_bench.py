"""Point-Bench (PointArena): binary success per item, as PointArena's ``model_evaluator.py`` scores it.

Data: ``data.json``, ``images/<category>/``, ``masks/`` and ``pixmo_metadata.csv``; item id ``image_filename``.
Protocols ``vlaser`` (default) and ``official``. Sources, prompts, steerable items and scoring:
``docs/benchmarks/point_bench.md``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from vlaser.eval.benchmark import VLASER_EXAMPLE, Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.eval.extract import json_points
from vlaser.eval.masks import image_size, mask_and_points, values_at

log = logging.getLogger(__name__)

SYSTEM = "You are a helpful assistant that can identify objects in images and provide their coordinates."
_LINE = "\n" + " " * 12  # each line of the official triple-quoted f-string starts with its source indentation
OFFICIAL_PROMPT = (
    SYSTEM + "\n\n" + _LINE + "{query}." + _LINE
    + "The image dimensions are width={width}px, height={height}px.{reference}" + _LINE
    + 'The answer should follow the json format: [{{"point": <point>}}]. ' + _LINE
    + "IMPORTANT: Return EXACTLY ONE POINT. The point MUST be in [x, y] format where x is the horizontal position "
      "(left-to-right) and y is the vertical position (top-to-bottom) in PIXEL COORDINATES (not normalized)." + _LINE
    + "Example: For a point in the center of the image, return [width/2, height/2]." + _LINE
)
OFFICIAL_PROMPT_COUNTING = (
    SYSTEM + "\n\n" + _LINE + "{query}." + _LINE
    + "The image dimensions are width={width}px, height={height}px.{reference}" + _LINE
    + 'The answer should follow the json format: [{{"point": <point>}}, ...]. ' + _LINE
    + "IMPORTANT: The points MUST be in [x, y] format where x is the horizontal position (left-to-right) and y is "
      "the vertical position (top-to-bottom) in PIXEL COORDINATES (not normalized)." + _LINE
    + "Example: For a point in the center of the image, return [width/2, height/2]." + _LINE
)
REFERENCE = ("\nThe image contains an existing original point at pixel coordinates: {points}."
             "\nThe query refers to this existing point.")
METADATA = "pixmo_metadata.csv"


def read_reference_points(path: Path) -> dict[str, list[tuple[Any, Any]]]:
    """``pixmo_metadata.csv`` as PointArena reads it: ``image_filename -> [(x, y), ...]`` (percent) for rows whose
    ``points`` is neither empty nor ``[]``, a later row replacing an earlier one."""
    table: dict[str, list[tuple[Any, Any]]] = {}
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = {"image_filename", "points"} - set(reader.fieldnames or [])
        if missing:
            raise BenchmarkDataError(f"{path}: no column(s) {sorted(missing)} (expected image_filename, points)")
        for row in reader:
            raw = row["points"]
            if not raw or raw == "[]":
                continue
            try:
                points = [(p["x"], p["y"]) for p in json.loads(raw)]
                if not all(isinstance(v, (int, float)) for point in points for v in point):
                    raise TypeError("x and y must be numbers")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{path}:{reader.line_num}: points {raw[:80]!r}: {e!r} (expected a JSON "
                                         'list of {"x": .., "y": ..} in percent)') from e
            table[row["image_filename"]] = points
    return table


def reference_sentence(points: list[tuple[Any, Any]] | None, width: int, height: int) -> str:
    """``get_original_points_info``: the percent points in pixels, or "" when there are none."""
    if not points:
        return ""
    pixels = ", ".join(f"[{x * width / 100:.1f}, {y * height / 100:.1f}]" for x, y in points)
    return REFERENCE.format(points=pixels)


def official_text(item: Item, width: int, height: int) -> str:
    """The official prompt of an item whose image is ``width`` x ``height`` pixels."""
    template = OFFICIAL_PROMPT_COUNTING if item.group == "counting" else OFFICIAL_PROMPT
    return template.format(query=item.question, width=width, height=height,
                           reference=reference_sentence(item.meta.get("reference"), width, height))


class PointBench(Benchmark):
    name = "point_bench"
    protocols = (
        EvalProtocol("vlaser", prompt="vlaser", max_tiles=12, max_new_tokens=1024, source=VLASER_EXAMPLE),
        EvalProtocol("official", version=2, prompt="official", max_tiles=12, max_new_tokens=1024,
                 source="pointarena/pointarena model_evaluator.py call_claude/call_grok prompt (steerable reference "
                        "points from pixmo_metadata.csv), with eval_example.py's generation settings"),
    )

    def load(self, data_dir: Path) -> list[Item]:
        data_file = data_dir / "data.json"
        if not data_file.is_file():
            raise BenchmarkDataError(f"{data_file} not found (expected PointArena's data.json layout)")
        try:
            rows = json.loads(data_file.read_text())
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{data_file}: {e}") from e
        csv_path = data_dir / METADATA
        references = read_reference_points(csv_path) if csv_path.is_file() else None
        items = []
        for number, row in enumerate(rows):
            if "mask_filename" not in row:
                continue
            try:
                image = data_dir / "images" / row["category"] / row["image_filename"]
                item = Item(id=str(row["image_filename"]), question=row["user_input"], official_prompt="",
                            images=[image], group=row["category"],
                            meta={"mask": str(data_dir / "masks" / row["mask_filename"]), "count": row.get("count", 1)})
            except KeyError as e:
                raise BenchmarkDataError(f"{data_file}: item {number} lacks {e}") from e
            except TypeError as e:  # a null file name or category
                raise BenchmarkDataError(f"{data_file}: item {number}: {e} (file names and category are text)") from e
            if item.group == "steerable":
                found = references.get(os.path.basename(image)) if references is not None else None
                item.meta["reference"] = found
                item.meta["reference_status"] = "present" if found else (
                    f"no row in {METADATA}" if references is not None else f"{METADATA} absent")
            items.append(item)
        for item in items:  # the official prompt needs the image's size: filled in when the image is at hand
            if item.images[0].is_file():
                with contextlib.suppress(OSError):  # unreadable: asking it later records the error
                    item.official_prompt = official_text(item, *image_size(item.images[0]))
        self._warn_missing_references(items, csv_path)
        return items

    def _warn_missing_references(self, items: list[Item], csv_path: Path) -> None:
        """Say (the official code does not) when steerable items will be asked without their reference point."""
        lacking = [i.id for i in items if i.group == "steerable" and not i.meta["reference"]]
        if lacking:
            why = "it is absent" if not csv_path.is_file() else "they have no row in it"
            log.warning("point_bench: %d steerable item(s) (e.g. %s) get no reference-point sentence in the official "
                        "prompt: %s, %s", len(lacking), lacking[:3], csv_path, why)

    def official_prompt(self, item: Item) -> str:
        """PointArena's prompt for the item, with its image's real size (read from the image file)."""
        try:
            width, height = image_size(item.images[0])
        except OSError as e:
            from vlaser.model.preprocess import ImageLoadError

            raise ImageLoadError(f"cannot read {item.images[0]} for the official prompt's image size: {e}") from e
        return official_text(item, width, height)

    def prompt(self, item: Item, style: str) -> str:
        if style == "official":
            return self.official_prompt(item)
        return super().prompt(item, style)

    def score(self, item: Item, response: str) -> Score:
        mask, points = mask_and_points(item, response, "gt127")
        if points is None:
            points = json_points(response)
        if not points:
            return Score(0.0, parsed=points is not None)
        if item.group == "counting":
            inside = values_at(mask, points)
            ok = len(points) == int(item.meta["count"]) and all(v > 0 for v in inside)
        else:
            points = points[:1]
            ok = values_at(mask, points)[0] > 0
        return Score(float(ok), parsed=True, points=points)

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        """The base metrics plus how many steerable items had their reference point (docs/benchmarks/point_bench.md)."""
        metrics = super().aggregate(items, scores)
        steerable = [i for i in items if i.group == "steerable"]
        statuses = {i.meta["reference_status"] for i in steerable}
        metrics.update(n_steerable=len(steerable),
                       n_steerable_with_reference_point=sum(bool(i.meta["reference"]) for i in steerable),
                       pixmo_metadata_csv=None if not steerable else f"{METADATA} absent" not in statuses)
        return metrics

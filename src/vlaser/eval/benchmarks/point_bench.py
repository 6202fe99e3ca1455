"""Point-Bench (PointArena): binary success per item, as PointArena's ``model_evaluator.py`` scores it.

Layout: ``data.json`` (``image_filename``, ``mask_filename``, ``user_input``, ``category``, ``count``),
``images/<category>/<image_filename>``, ``masks/<mask_filename>``. Masks are > 127 in any channel.
Success: the first point inside the mask; for ``counting`` items, exactly ``count`` points, all inside.
No point (or an out-of-image point) is a failure; items without a mask are not part of the benchmark.
The official prompt asks for pixel coordinates as JSON (``[{"point": [x, y]}]``).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlaser.eval.benchmark import VLASER_EXAMPLE, Benchmark, BenchmarkDataError, Item, Protocol, Score
from vlaser.eval.extract import json_points, vlaser_pixels
from vlaser.eval.masks import image_size, load_mask, values_at

OFFICIAL_PROMPT = (
    "{query}.\nThe image dimensions are width={width}px, height={height}px.\n"
    'The answer should follow the json format: [{{"point": <point>}}]. IMPORTANT: Return EXACTLY ONE POINT. '
    "The point should be in PIXEL COORDINATES (not normalized)."
)
OFFICIAL_PROMPT_COUNTING = (
    "{query}.\nThe image dimensions are width={width}px, height={height}px.\n"
    'The answer should follow the json format: [{{"point": <point>}}, ...]. '
    "The points should be in PIXEL COORDINATES (not normalized)."
)


class PointBench(Benchmark):
    name = "point_bench"
    protocols = (
        Protocol("vlaser", prompt="vlaser", max_num=12, max_new_tokens=1024, source=VLASER_EXAMPLE),
        Protocol("official", prompt="official", max_num=12, max_new_tokens=1024,
                 source="the benchmark's own prompt, with eval_example.py's generation settings"),
    )

    def load(self, data_dir: Path) -> list[Item]:
        data_file = data_dir / "data.json"
        if not data_file.is_file():
            raise BenchmarkDataError(f"{data_file} not found (expected PointArena's data.json layout)")
        try:
            rows = json.loads(data_file.read_text())
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{data_file}: {e}") from e
        items = []
        for number, row in enumerate(rows):
            if not row.get("mask_filename"):
                continue
            try:
                image = data_dir / "images" / row["category"] / row["image_filename"]
                query, category = row["user_input"].rstrip("."), row["category"]
            except KeyError as e:
                raise BenchmarkDataError(f"{data_file}: item {number} lacks {e}") from e
            template = OFFICIAL_PROMPT_COUNTING if category == "counting" else OFFICIAL_PROMPT
            width, height = image_size(image) if image.is_file() else (0, 0)
            items.append(Item(id=str(row["image_filename"]), question=row["user_input"],
                              official_prompt=template.format(query=query, width=width, height=height),
                              images=[image], group=category,
                              meta={"mask": str(data_dir / "masks" / row["mask_filename"]),
                                    "count": row.get("count")}))
        return items

    def score(self, item: Item, response: str) -> Score:
        mask = load_mask(Path(item.meta["mask"]), "gt127")
        height, width = mask.shape
        points = vlaser_pixels(response, width, height)
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

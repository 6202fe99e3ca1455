"""PACO-LVIS, Vlaser protocol (``evaluate_point_paco.py``): points inside the union of GT polygons.

Each line carries ``segmentation``: COCO polygons (flat ``[x1, y1, x2, y2, ...]`` lists, pixels), all
filled into one mask (PIL ``polygon`` with outline and fill 1). Predicted ``[x, y]`` pairs are mapped from
the 0-1000 grid with ``int(v / 1000 * size)`` and count when inside the image and the mask.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vlaser.eval.benchmark import Item, Score
from vlaser.eval.benchmarks.vlaser_points import VlaserPointJSONL, eval_points


def polygon_mask(segmentation, width: int, height: int) -> np.ndarray:
    """``(H, W)`` uint8 union of every polygon of every segment."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for segment in segmentation:
        polygons = segment if segment and isinstance(segment[0], (list, tuple)) else [segment]
        for polygon in polygons:
            if len(polygon) >= 6:
                draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon) - 1, 2)], outline=1, fill=1)
    return np.asarray(canvas)


class PacoLvis(VlaserPointJSONL):
    name = "paco_lvis"
    protocols = ("vlaser",)

    def score(self, item: Item, response: str) -> Score:
        row = item.meta["row"]
        with Image.open(item.images[0]) as image:
            width, height = image.size
        mask = polygon_mask(row.get("segmentation") or [], width, height)
        points = [(int(x / 1000 * width), int(y / 1000 * height)) for x, y in eval_points(response)]
        correct = sum(x < width and y < height and bool(mask[y, x]) for x, y in points)
        return Score(correct / max(len(points), 1), parsed=bool(points), points=points,
                     extra={"correct": correct, "total": max(len(points), 1)})

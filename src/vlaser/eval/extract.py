"""Answer parsers: Vlaser's ``<point>`` grid, and the official parsers of the pointing benchmarks.

Each official parser reproduces its benchmark's code, quirks included; they are named after it.
"""

from __future__ import annotations

import json
import re

import numpy as np

from vlaser.points import parse_points, to_pixels

_TUPLE = re.compile(r"\(([-+]?\d+\.?\d*(?:,\s*[-+]?\d+\.?\d*)*?)\)")


def vlaser_pixels(text: str, width: int, height: int) -> list[tuple[int, int]] | None:
    """Pixel points of a ``<point>[[x, y], ...]</point>`` answer (0-1000 grid, ``int()``); None without a block."""
    if "<point>" not in text:
        return None
    return to_pixels(parse_points(text, require_tag=True), width, height)


def robopoint_text2pts(text: str, width: int = 640, height: int = 480, scale_int_boxes: bool = False
                       ) -> list[tuple[int, int]]:
    """RoboPoint's ``text2pts``: parenthesised tuples; a 2-tuple is a point, a 4-tuple a box (every pixel).

    A tuple with a float is taken as normalised and scaled by ``width``/``height`` with ``int()``; an all-int
    tuple as pixels. ``scale_int_boxes`` is RoboRefer's variant, which scales 4-tuples even when all-int.
    """
    points: list[tuple[int, int]] = []
    for match in _TUPLE.findall(text):
        vector = [float(v) if "." in v else int(v) for v in match.split(",")]
        if len(vector) == 2:
            x, y = vector
            if isinstance(x, float) or isinstance(y, float):
                x, y = int(x * width), int(y * height)
            points.append((x, y))
        elif len(vector) == 4:
            x0, y0, x1, y1 = vector
            if isinstance(x0, float) or scale_int_boxes:
                x0, y0, x1, y1 = int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)
            ys, xs = np.where(np.ones((y1 - y0, x1 - x0), dtype=bool))
            points.extend(zip((xs + x0).tolist(), (ys + y0).tolist()))
    return points


def json_points(text: str) -> list[tuple[float, float]] | None:
    """PointArena's JSON answer ``[{"point": [x, y]}, ...]`` in pixels (a fenced block is allowed)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start:end + 1])
    except json.JSONDecodeError:
        return None
    points = []
    for entry in data if isinstance(data, list) else []:
        point = entry.get("point") if isinstance(entry, dict) else None
        if isinstance(point, (list, tuple)) and len(point) == 2:
            points.append((float(point[0]), float(point[1])))
    return points

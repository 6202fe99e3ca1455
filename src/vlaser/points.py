"""Point and box answers: the Vlaser point prompt, parsing ``<point>``/``<box>``/``<ref>``, coordinate
conversions between the 0-1000 grid, 0-1, percent and pixels, and drawing them on images.

Pure Python/numpy/Pillow: evaluation, serving and the CLI all parse answers here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

#: The point-grounding prefix the Vlaser README asks for (plain quotes, as its evaluators send it).
POINT_PROMPT = (
    "You are InternVL. Your task is to locate several points in the given image according to the task "
    'descriptions. Your answer should be formatted as "<point>[[x1, y1], [x2, y2],...]</point>". The point '
    "coordinates are normalized to integers between 0 and 1000. Return the answer in the point format directly."
)
GRID = 1000  #: Vlaser/InternVL answer coordinates live on a 0-1000 grid.

Point = tuple[float, float]
Box = tuple[float, float, float, float]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_QUAD = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_POINT_BLOCK = re.compile(r"<point>(.*?)</point>", re.DOTALL)
_BOX_BLOCK = re.compile(r"<box>(.*?)</box>", re.DOTALL)
_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
_REF_BOX = re.compile(r"<ref>(.*?)</ref>\s*<box>(.*?)</box>", re.DOTALL)
# The seed's text2pts: the first <point>[[...]]</point> block, integer pairs only.
_SEED_BLOCK = re.compile(r"<point>\s*\[\s*(\[.*?\])\s*\]</point>", re.DOTALL)
_SEED_PAIR = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]")


def point_question(task: str) -> str:
    """The Vlaser point prompt followed by the task, e.g. ``point_question("Point to all the moai.")``."""
    return f"{POINT_PROMPT} {task.strip()}"


def referring_point_question(expression: str) -> str:
    """The exact question of Vlaser's Pixmo-Points / PACO-LVIS evaluators (leading space included)."""
    return f" {POINT_PROMPT} Please provide the referring points of {expression}."


def parse_points(text: str, require_tag: bool = False) -> list[Point]:
    """All ``[x, y]`` pairs inside ``<point>...</point>`` blocks, as floats in the answer's own units.

    Tolerates spaces, newlines, floats and several blocks. Without any ``<point>`` block the pairs anywhere
    in the text are returned (as Vlaser's evaluators do), unless ``require_tag``.
    """
    blocks = _POINT_BLOCK.findall(text)
    if not blocks and require_tag:
        return []
    return [(float(x), float(y)) for block in (blocks or [text]) for x, y in _PAIR.findall(block)]


def parse_boxes(text: str) -> list[Box]:
    """All ``[x1, y1, x2, y2]`` quadruples inside ``<box>...</box>`` blocks."""
    return [tuple(float(v) for v in q) for block in _BOX_BLOCK.findall(text) for q in _QUAD.findall(block)]


def parse_refs(text: str) -> list[str]:
    """The phrases inside ``<ref>...</ref>``, stripped."""
    return [r.strip() for r in _REF.findall(text)]


def parse_ref_boxes(text: str) -> list[tuple[str, list[Box]]]:
    """``<ref>phrase</ref><box>[[...]]</box>`` pairs as ``(phrase, boxes)``."""
    return [(ref.strip(), [tuple(float(v) for v in q) for q in _QUAD.findall(box)])
            for ref, box in _REF_BOX.findall(text)]


def text2pts(text: str, width: int, height: int) -> np.ndarray:
    """The seed's ``text2pts`` exactly: first ``<point>[[...]]</point>`` block, integer pairs, ``int(v/1000*size)``.

    Returns an ``(n, 2)`` integer array of pixel ``(x, y)``; ``np.array([])`` when nothing matches.
    """
    match = _SEED_BLOCK.search(text)
    points = []
    if match:
        for x, y in _SEED_PAIR.findall(match.group(1)):
            points.append((int(int(x) / 1000 * width), int(int(y) / 1000 * height)))
    return np.array(points)


def to_pixels(points: Sequence[Sequence[float]], width: int, height: int, scale: float = GRID,
              truncate: bool = True) -> list[tuple]:
    """Normalised points (``scale`` 1000 = grid, 1 = unit, 100 = percent) to pixels.

    ``truncate`` uses ``int()`` like the seed and Vlaser's evaluators; otherwise floats are returned.
    Works for boxes too: even entries scale with ``width``, odd ones with ``height``.
    """
    sizes = (width, height)
    conv = (lambda v: int(v)) if truncate else float
    return [tuple(conv(v / scale * sizes[i % 2]) for i, v in enumerate(p)) for p in points]


def from_pixels(points: Sequence[Sequence[float]], width: int, height: int, scale: float = GRID,
                as_int: bool = True) -> list[tuple]:
    """Pixel points (or boxes) to normalised coordinates on ``scale``; rounded to integers for the grid."""
    sizes = (width, height)
    conv = (lambda v: int(round(v))) if as_int else float
    return [tuple(conv(v / sizes[i % 2] * scale) for i, v in enumerate(p)) for p in points]


def rescale(points: Sequence[Sequence[float]], from_scale: float, to_scale: float) -> list[tuple[float, ...]]:
    """Between normalised conventions, e.g. grid (1000) to unit (1) or percent (100)."""
    return [tuple(v / from_scale * to_scale for v in p) for p in points]


_COLORS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (220, 64, 255))


def draw_points(image: Image.Image, points: Sequence[Sequence[float]], radius: int | None = None,
                color: tuple[int, int, int] = (255, 64, 64)) -> Image.Image:
    """A copy of ``image`` with pixel points drawn as filled, outlined dots."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    r = radius or max(3, round(min(out.size) / 80))
    for x, y in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=(255, 255, 255), width=max(1, r // 3))
    return out


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None,
               width: int | None = None) -> Image.Image:
    """A copy of ``image`` with pixel boxes ``(x1, y1, x2, y2)`` and optional labels."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    w = width or max(2, round(min(out.size) / 200))
    for i, box in enumerate(boxes):
        color = _COLORS[i % len(_COLORS)]
        x1, y1, x2, y2 = box
        draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=color, width=w)
        if labels and i < len(labels):
            draw.text((min(x1, x2) + w, min(y1, y2) + w), labels[i], fill=color)
    return out

"""Ground-truth masks and the point-in-mask rules of the pointing benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlaser.eval.extract import robopoint_text2pts, vlaser_pixels
from vlaser.eval.items import BenchmarkDataError, Item, Score


def load_mask(path: Path, mode: str) -> np.ndarray:
    """``(H, W)`` mask from an image file.

    ``mode``: ``soft`` = grey value / 255 (RoboPoint: a JPEG's soft edges kept), ``round`` = soft rounded to
    {0, 1}, ``nonzero`` = > 0 (RoboRefer), ``gt127`` = any channel > 127 (PointArena).
    """
    if not path.is_file():
        raise BenchmarkDataError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for a damaged file
        raise BenchmarkDataError(f"cannot read mask {path}: {e}") from e
    if mode == "gt127":
        return (array > 127).any(axis=-1) if array.ndim == 3 else array > 127
    first = array[..., 0] if array.ndim == 3 else array
    soft = first.astype(np.float64) / 255.0
    if mode == "soft":
        return soft
    if mode == "round":
        return np.round(soft)
    if mode == "nonzero":
        return soft > 0
    raise ValueError(f"unknown mask mode {mode!r}")


def values_at(mask: np.ndarray, points: Sequence[Sequence[float]]) -> list[float]:
    """The mask value at each pixel point (``int()`` of the coordinates); 0 outside the image."""
    h, w = mask.shape[:2]
    out = []
    for x, y in points:
        xi, yi = int(x), int(y)
        out.append(float(mask[yi, xi]) if 0 <= xi < w and 0 <= yi < h else 0.0)
    return out


def mean_value(mask: np.ndarray, points: Sequence[Sequence[float]]) -> float:
    """Mean mask value over the points (Where2Place, RefSpatial); 0 with no points."""
    values = values_at(mask, points)
    return sum(values) / len(values) if values else 0.0


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, closing the file."""
    with Image.open(path) as image:
        return image.size


def mask_and_points(item: Item, response: str, mode: str) -> tuple[np.ndarray, list[tuple[int, int]] | None]:
    """How every mask-scored benchmark opens: the item's ground-truth mask (``item.meta["mask"]`` read with
    ``mode``) and the answer's ``<point>`` points in its pixels (None without a ``<point>`` block: the
    benchmark's own parser goes next)."""
    mask = load_mask(Path(item.meta["mask"]), mode)
    height, width = mask.shape
    return mask, vlaser_pixels(response, width, height)


def robopoint_mean_score(item: Item, response: str, mode: str, size: Callable[[], tuple[int, int]],
                         unparsed_as_zero: bool, scale_int_boxes: bool = False) -> Score:
    """RoboPoint-family scoring (Where2Place, RefSpatial): the mean mask value at the answer's points. Without
    ``<point>`` points, RoboPoint's tuple parser reads the answer at ``size()``; an answer whose parsing raises
    is skipped (None) as the official loops do, or scores 0 with ``unparsed_as_zero``."""
    mask, points = mask_and_points(item, response, mode)
    if points is None:
        try:
            points = robopoint_text2pts(response, *size(), scale_int_boxes=scale_int_boxes)
        except Exception as e:  # the official loops skip any answer whose parsing raises
            return Score(0.0 if unparsed_as_zero else None, parsed=False, extra={"error": str(e)})
    return Score(mean_value(mask, points), parsed=bool(points), points=points)

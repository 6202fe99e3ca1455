"""Ground-truth masks and the point-in-mask rules of the pointing benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlaser.eval.benchmark import BenchmarkDataError


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
    except OSError as e:
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

"""Pillow's bicubic resize of RGB images, pixel for pixel, in about a third of Pillow's CPU time, on threads.

Pillow resamples in two separable passes. A pass weights input pixels with the bicubic kernel (a = -0.5, widened
by the scale when shrinking, normalised to sum 1) computed in double precision and rounded to fixed point with 22
fractional bits; each output is the exact integer sum plus one half, shifted right 22 and clipped to 0..255
(``Resample.c``: ``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``ImagingResample*_8bpc``). The kernels in
``resample_kernels`` compute the same weights with the same double operations in the same order, and integer sums
are exact in any order, so the pixels are Pillow's. Pillow loops pixel by pixel; these loop along contiguous rows
(the horizontal pass transposes blocks of rows first), which the compiler vectorises. An output row depends only on
its input rows, so each pass splits into bands of rows that run on threads.

Pixels are held as Pillow holds them, 4 bytes each (R, G, B, pad): ``pixels`` copies an image's rows straight out
of Pillow's memory, many times faster than ``np.asarray``, which repacks them to 3 bytes.

Which pass runs first changes the rounding: Pillow 13 goes vertical first when the height shrinks by more than
twice the width does, older Pillow always horizontal first. On first use a self-check resizes probe shapes under
each rule and keeps the one that equals the installed Pillow. If numba is missing or no rule matches, resizes are
Pillow's own (the same pixels, slower) and a warning says so once.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from types import ModuleType

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

Task = Callable[[], None]
Rule = Callable[[tuple[int, int], tuple[int, int]], bool]  # (source size, new size) -> vertical pass first?


def pixels(image: Image.Image) -> np.ndarray:
    """An RGB image as an ``(H, W, 4)`` uint8 array (R, G, B, pad), copied row by row out of Pillow's memory."""
    if image.mode not in ("RGB", "RGBX"):
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    image.load()
    out = np.empty((image.height, image.width, 4), np.uint8)
    view = Image.frombuffer("RGBX", image.size, out, "raw", "RGBX", 0, 1)
    if not view.readonly:  # a copy, not a view: what is pasted there would never reach ``out``
        raise RuntimeError("this Pillow copies Image.frombuffer's buffer; vlaser needs it shared")
    view.im.paste(image.im, (0, 0, *image.size))
    return out


def _never(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    return False


def _pillow13(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    shrink_w, shrink_h = src[0] - dst[0], src[1] - dst[1]
    return shrink_h > 0 and shrink_h > 2 * shrink_w


_PROBES = ((36, 8), (36, 32), (8, 36), (40, 13), (13, 40), (40, 57), (57, 40), (40, 40), (31, 40), (40, 31))


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled kernels (compiled on first use, then loaded from numba's cache), or None without numba."""
    try:
        return importlib.import_module("vlaser.model.resample_kernels")
    except ImportError as e:
        log.warning("numba is not importable (%s): images are resized by Pillow, the same pixels but slower", e)
    except RuntimeError as e:  # numba refuses to compile what it cannot cache (no writable cache folder)
        log.warning("vlaser's resize kernels did not compile (%s; NUMBA_CACHE_DIR names a writable folder for "
                    "them): images are resized by Pillow, the same pixels but slower", e)
    return None


@functools.cache
def pass_order() -> Rule | None:
    """The pass-order rule under which the kernels give the installed Pillow's pixels (None: resize with Pillow)."""
    if kernels() is None:
        return None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    source = pixels(image)
    for rule in (_pillow13, _never):
        if all(np.array_equal(resize(source, size, rule)[:, :, :3],
                              pixels(image.resize(size, Image.BICUBIC))[:, :, :3]) for size in _PROBES):
            return rule
    log.warning("vlaser's resize kernels do not match this Pillow %s: images are resized by Pillow, the same pixels "
                "but slower", Image.__version__)
    return None


@functools.lru_cache(maxsize=256)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    return kernels().coefficients(in_size, out_size)


def _bands(rows: int, parts: int) -> list[tuple[int, int]]:
    """``[0, rows)`` cut into at most ``parts`` near-equal non-empty bands."""
    parts = max(1, min(parts, rows))
    cuts = [rows * k // parts for k in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


class Resize:
    """A bicubic resize of ``(H, W, 4)`` uint8 pixels to ``size = (w, h)``, as ``stages``: lists of tasks, each list
    to be run to the end (in any order, on any threads) before the next starts; ``out`` then holds the
    ``(h, w, 4)`` result."""

    def __init__(self, image: np.ndarray, size: tuple[int, int], parts: int = 1, rule: Rule | None = None) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 4 or not image.flags.c_contiguous:
            raise ValueError(f"expected C-contiguous (H, W, 4) uint8 pixels, got {image.dtype} {image.shape}")
        rule = rule or pass_order()
        (h_in, w_in, _), (w, h) = image.shape, size
        self.stages: list[list[Task]] = []
        if rule is None:
            self.out = np.empty((h, w, 4), np.uint8)
            self.stages.append([functools.partial(self._pillow, image)])
            return
        src = image.reshape(h_in, w_in * 4)
        horizontal, vertical = w != w_in, h != h_in
        if vertical and (not horizontal or rule((w_in, h_in), size)):
            middle = self._vertical(src, h_in, h, parts)
            if horizontal:
                middle = self._horizontal(middle, 0, h, w, parts)
        elif horizontal:
            first, last = (0, h_in) if not vertical else _row_span(h_in, h)
            middle = self._horizontal(src, first, last - first, w, parts)
            if vertical:
                middle = self._vertical(middle, h_in, h, parts, offset=first)
        else:
            middle = src.copy()
        self.out = middle.reshape(h, w, 4)

    def _pillow(self, image: np.ndarray) -> None:
        source = Image.frombuffer("RGBX", image.shape[1::-1], image, "raw", "RGBX", 0, 1)
        self.out[...] = pixels(source.resize(self.out.shape[1::-1], Image.BICUBIC))

    def _vertical(self, src: np.ndarray, h_in: int, h: int, parts: int, offset: int = 0) -> np.ndarray:
        """Rows ``offset`` on of an ``h_in``-row image in ``src``, resampled to ``h`` rows."""
        bounds, weights = _coefficients(h_in, h)
        out = np.empty((h, src.shape[1]), np.uint8)
        self.stages.append([functools.partial(kernels().vertical, src, out[a:b], bounds[a:b], weights[a:b], offset)
                            for a, b in _bands(h, parts)])
        return out

    def _horizontal(self, src: np.ndarray, first: int, rows: int, w: int, parts: int) -> np.ndarray:
        """Rows ``first`` to ``first + rows`` of ``src``, resampled to ``w`` columns."""
        bounds, weights = _coefficients(src.shape[1] // 4, w)
        out = np.empty((rows, w * 4), np.uint8)
        self.stages.append([functools.partial(kernels().horizontal, src, out[a:b], bounds, weights, first + a)
                            for a, b in _bands(rows, parts)])
        return out


def _row_span(h_in: int, h: int) -> tuple[int, int]:
    """The input rows the vertical pass reads (Pillow's horizontal pass makes only those)."""
    bounds, _ = _coefficients(h_in, h)
    return int(bounds[0, 0]), int(bounds[-1, 0] + bounds[-1, 1])


def resize(image: np.ndarray, size: tuple[int, int], rule: Rule | None = None) -> np.ndarray:
    """``(H, W, 4)`` pixels resized to ``size = (w, h)`` as Pillow's BICUBIC would, in this thread."""
    job = Resize(image, size, rule=rule)
    for stage in job.stages:
        for task in stage:
            task()
    return job.out

"""The numba kernels of :mod:`vlaser.model.resample`; imported on first use (numba takes a moment to import).

Every kernel releases the GIL, so row bands of one pass run side by side on threads, and each is compiled once and
cached on disk. The arithmetic is Pillow's (``Resample.c``), operation for operation; see ``resample``.
"""

import math

import numpy as np
from numba import njit

PRECISION_BITS = 22  # Pillow's 32 - 8 - 2: fixed-point weights with room for overshoot and the sign


@njit(cache=True, nogil=True)
def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5), with its operations in its order."""
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


@njit(cache=True, nogil=True)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, weights)`` of one pass: per output pixel its first input pixel and tap count, and its fixed-point
    weights (``precompute_coeffs`` then ``normalize_coeffs_8bpc``, for a whole-image box)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.empty((out_size, 2), np.int64)
    weights = np.zeros((out_size, ksize), np.int32)
    w = np.empty(ksize, np.float64)
    ss = 1.0 / filterscale
    one = float(1 << PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            w[x] = _bicubic((float(x + xmin) - center + 0.5) * ss)
            ww += w[x]
        for x in range(xmax):
            k = w[x] / ww if ww != 0.0 else w[x]
            weights[xx, x] = int(-0.5 + k * one) if k < 0 else int(0.5 + k * one)
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, weights


@njit(cache=True, nogil=True, inline="always")
def _clip8(acc: int) -> int:
    v = acc >> PRECISION_BITS
    return 0 if v < 0 else (255 if v > 255 else v)


@njit(cache=True, nogil=True)
def vertical(src: np.ndarray, out: np.ndarray, bounds: np.ndarray, weights: np.ndarray, offset: int) -> None:
    """Resample along the rows: ``out[yy]`` is the weighted sum of rows ``bounds[yy, 0] - offset`` on of ``src``
    (both ``(rows, width * channels)``); whole rows at a time, which the compiler vectorises."""
    width = src.shape[1]
    acc = np.empty(width, np.int32)
    for yy in range(out.shape[0]):
        first, taps = bounds[yy, 0] - offset, bounds[yy, 1]
        acc[:] = 1 << (PRECISION_BITS - 1)
        for t in range(taps):
            k = weights[yy, t]
            row = src[first + t]
            for x in range(width):
                acc[x] += np.int32(row[x]) * k
        line = out[yy]
        for x in range(width):
            line[x] = _clip8(acc[x])


_BLOCK = 32  # rows transposed together by ``horizontal``: 128 bytes per column, all in cache


@njit(cache=True, nogil=True)
def horizontal(src: np.ndarray, out: np.ndarray, bounds: np.ndarray, weights: np.ndarray, first_row: int) -> None:
    """Resample along the columns: ``out[i]`` from row ``first_row + i`` of ``src``, both ``(rows, width * 4)``
    (4-byte pixels).

    Blocks of rows are transposed first, a pixel at a time, so each tap is again a multiply-add over a contiguous
    run of values. Results are packed back into 4-byte pixels in little-endian order (the self-check in
    ``resample.pass_order`` would catch a machine where that is wrong).
    """
    pixels, packed = src.view(np.uint32), out.view(np.uint32)
    width = pixels.shape[1]
    block = np.empty((width, _BLOCK), np.uint32)
    lanes = block.view(np.uint8)
    acc = np.empty(4 * _BLOCK, np.int32)
    for r0 in range(0, out.shape[0], _BLOCK):
        n = min(_BLOCK, out.shape[0] - r0)
        for j in range(n):
            row = pixels[first_row + r0 + j]
            for x in range(width):
                block[x, j] = row[x]
        m = 4 * n
        for xx in range(packed.shape[1]):
            acc[:m] = 1 << (PRECISION_BITS - 1)
            start = bounds[xx, 0]
            for t in range(bounds[xx, 1]):
                k = weights[xx, t]
                column = lanes[start + t]
                for i in range(m):
                    acc[i] += np.int32(column[i]) * k
            for j in range(n):
                i = 4 * j
                packed[r0 + j, xx] = (np.uint32(_clip8(acc[i])) | np.uint32(_clip8(acc[i + 1])) << 8
                                      | np.uint32(_clip8(acc[i + 2])) << 16 | np.uint32(_clip8(acc[i + 3])) << 24)


@njit(cache=True, nogil=True)
def lookup(src: np.ndarray, tables: np.ndarray, out: np.ndarray) -> None:
    """``out[c, y, x] = tables[c, src[y, x, c]]`` for ``c < 3``: an ``(h, w, 4)`` uint8 view into planar float32."""
    h, w = src.shape[:2]
    for y in range(h):
        row = src[y]
        for c in range(3):
            table, line = tables[c], out[c, y]
            for x in range(w):
                line[x] = table[row[x, c]]

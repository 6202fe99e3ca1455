"""Feature statistics as LeRobot stores them in ``meta/stats.json`` and per episode: min, max, mean, std,
count and the q01/q10/q50/q90/q99 quantiles, per dimension for vectors and per channel (values in [0, 1],
shape ``(3, 1, 1)``) for cameras.

vlaser computes vector statistics exactly (NumPy's linear-interpolation quantiles over every frame) where
LeRobot estimates quantiles from histograms. Camera statistics are computed per episode from at most
``CAMERA_SAMPLES`` evenly spaced frames (LeRobot samples camera frames too) and combined as LeRobot's
``aggregate_stats`` does: count-weighted means and quantiles, pooled variance, overall min and max.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
CAMERA_SAMPLES = 100


def camera_sample(frames: np.ndarray) -> np.ndarray:
    """The frames camera statistics are computed from: all of them, or ``CAMERA_SAMPLES`` evenly spaced."""
    if len(frames) <= CAMERA_SAMPLES:
        return frames
    return frames[np.round(np.linspace(0, len(frames) - 1, CAMERA_SAMPLES)).astype(int)]


def feature_stats(values: np.ndarray, camera: bool = False) -> dict[str, np.ndarray]:
    """Statistics of ``(N, *shape)`` values: over axis 0 for vectors, over frames and pixels per channel for
    ``(N, H, W, C)`` uint8 camera frames (scaled to [0, 1], kept as ``(C, 1, 1)`` like LeRobot)."""
    if camera:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        shape = (values.shape[-1], 1, 1)
    else:
        flat = values.reshape(len(values), -1).astype(np.float64)
        shape = values.shape[1:] or (1,)
    out = {
        "min": flat.min(axis=0), "max": flat.max(axis=0), "mean": flat.mean(axis=0), "std": flat.std(axis=0),
        **{name: np.quantile(flat, q, axis=0) for name, q in QUANTILES.items()},
    }
    stats = {k: v.reshape(shape) for k, v in out.items()}
    stats["count"] = np.array([len(values)], dtype=np.int64)
    return stats


def aggregate_stats(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Statistics of the union of several parts from theirs alone (see the module docstring)."""
    counts = np.array([float(p["count"][0]) for p in parts])
    weights = counts / counts.sum()

    def weighted(name: str) -> np.ndarray:
        return sum(w * p[name] for w, p in zip(weights, parts))

    mean = weighted("mean")
    variance = sum(w * (p["std"] ** 2 + (p["mean"] - mean) ** 2) for w, p in zip(weights, parts))
    out = {"min": np.minimum.reduce([p["min"] for p in parts]), "max": np.maximum.reduce([p["max"] for p in parts]),
           "mean": mean, "std": np.sqrt(variance), **{name: weighted(name) for name in QUANTILES}}
    out["count"] = np.array([int(counts.sum())], dtype=np.int64)
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Statistics as nested lists (what ``stats.json`` holds)."""
    return {key: {name: np.asarray(value).tolist() for name, value in entry.items()} for key, entry in stats.items()}


def stats_from_json(obj: Mapping[str, Mapping[str, list]]) -> dict[str, dict[str, np.ndarray]]:
    """``stats.json`` contents back as float64 arrays (``count`` as int64)."""
    return {key: {name: np.asarray(value, dtype=np.int64 if name == "count" else np.float64)
                  for name, value in entry.items()} for key, entry in obj.items()}

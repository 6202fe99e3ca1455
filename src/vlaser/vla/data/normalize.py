"""Normalisation of proprio and actions from a dataset's statistics.

The release (open-pi-zero's Octo-style "bounds" normalisation) maps the 1st and 99th percentiles to [-1, 1],
``clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)``, and leaves the action's gripper dimension as it is
(the proprio's gripper is normalised with the rest: V:``S/src/agent/env_adapter/simpler.py``); un-normalising
clips to [-1, 1] first and inverts the map. ``mean_std`` and ``min_max`` follow LeRobot's formulas (same
epsilon, no clipping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlaser.errors import UserInputError

MODES = {"quantile": ("q01", "q99"), "mean_std": ("mean", "std"), "min_max": ("min", "max")}
EPS = 1e-8
DEFAULT_KEYS = ("observation.state", "action")
#: The release's pass-through dimensions: the action's last (the gripper command); the proprio is normalised whole.
RELEASE_GRIPPER_DIMS = {"action": (-1,)}


def _like(value: np.ndarray, x):
    """``value`` in ``x``'s array type, dtype (floating) and device, so the maths stays in the caller's type."""
    if not isinstance(x, np.ndarray) and hasattr(x, "device") and hasattr(x, "dtype"):
        import torch

        return torch.as_tensor(value, dtype=x.dtype if x.is_floating_point() else torch.float64, device=x.device)
    x = np.asarray(x)
    return value.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def _clip(x, low: float, high: float):
    return x.clamp(low, high) if hasattr(x, "clamp") else np.clip(x, low, high)


class Normalizer:
    """Per-feature normalisation from ``stats`` (as ``LeRobotDataset.stats`` holds them).

    ``gripper_dims`` maps a key to the dimensions passed through unchanged (default: the action's last
    dimension, the gripper command in the release's Bridge and Fractal layouts; ``{}`` normalises every one).
    """

    def __init__(self, stats: Mapping[str, Mapping[str, Any]], mode: str = "quantile",
                 keys: Sequence[str] = DEFAULT_KEYS, gripper_dims: Mapping[str, Sequence[int]] | None = None) -> None:
        if mode not in MODES:
            raise UserInputError(f"normalisation mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.gripper_dims: dict[str, tuple[int, ...]] = {}
        for key in keys:
            if key not in stats:
                raise UserInputError(f"no statistics for {key!r} (have: {', '.join(stats) or 'none'})")
            missing = [s for s in MODES[mode] if s not in stats[key]]
            if missing:
                raise UserInputError(f"statistics of {key!r} lack {', '.join(missing)} (needed by mode {mode!r})")
            a, b = (np.asarray(stats[key][s], dtype=np.float64).reshape(-1) for s in MODES[mode])
            dims = tuple((RELEASE_GRIPPER_DIMS if gripper_dims is None else gripper_dims).get(key, ()))
            self.params[key] = (a, b)
            self.gripper_dims[key] = tuple(sorted({d % len(a) for d in dims}))

    @property
    def keys(self) -> list[str]:
        return list(self.params)

    def _get(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if key not in self.params:
            raise UserInputError(f"the normaliser has no {key!r} (it has: {', '.join(self.params)})")
        a, b = self.params[key]
        keep = np.zeros(len(a), dtype=bool)
        keep[list(self.gripper_dims[key])] = True
        return a, b, keep

    def normalize(self, key: str, x):
        """``x`` (numpy or torch, last axis the feature's dimensions) normalised."""
        a, b, keep = self._get(key)
        a, b, keep_x = _like(a, x), _like(b, x), _like(keep, x) > 0
        if self.mode == "quantile":
            y = _clip(2 * (x - a) / (b - a + EPS) - 1, -1.0, 1.0)
        elif self.mode == "mean_std":
            y = (x - a) / (b + EPS)
        else:
            y = 2 * (x - a) / (b - a + EPS) - 1
        return _where(keep_x, x, y)

    def unnormalize(self, key: str, y):
        """The inverse of ``normalize`` (quantile mode clips ``y`` to [-1, 1] first, as the release does)."""
        a, b, keep = self._get(key)
        a, b, keep_y = _like(a, y), _like(b, y), _like(keep, y) > 0
        if self.mode == "quantile":
            x = (_clip(y, -1.0, 1.0) + 1) / 2 * (b - a + EPS) + a
        elif self.mode == "mean_std":
            x = y * (b + EPS) + a
        else:
            x = (y + 1) / 2 * (b - a + EPS) + a
        return _where(keep_y, y, x)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``norm_stats.json`` holds); ``from_json`` reads it back exactly."""
        names = MODES[self.mode]
        return {"mode": self.mode, "features": {
            key: {names[0]: a.tolist(), names[1]: b.tolist(), "gripper_dims": list(self.gripper_dims[key])}
            for key, (a, b) in self.params.items()}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "normalisation statistics") -> Normalizer:
        """A normaliser from ``to_json``'s dict; ``where`` (a file name) goes into the error messages."""
        try:
            mode, features = obj["mode"], obj["features"]
            stats = {key: {name: entry[name] for name in MODES[mode]} for key, entry in features.items()}
            dims = {key: entry.get("gripper_dims", []) for key, entry in features.items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise UserInputError(f"{where}: not a normaliser's JSON (missing or malformed {e})") from e
        return cls(stats, mode=mode, keys=list(stats), gripper_dims=dims)


def _where(mask, a, b):
    if hasattr(a, "clamp"):
        import torch

        return torch.where(mask, a, b)
    return np.where(mask, a, b)

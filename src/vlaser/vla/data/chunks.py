"""Training samples for a chunked action policy: at every frame, the camera images, the normalised proprio, and
the next ``chunk_size`` normalised actions.

A chunk that runs past its episode's end repeats the last action; ``padded_actions="mask"`` marks those steps
False in ``action_mask``, so the loss skips them, and ``"repeat"`` (the release, Octo's ``chunk_act_obs``) keeps
them True, so the loss trains on the repeated action. ``augment`` (e.g. ``ImageAugmentation``) changes every
served frame (training only). Truncated episodes (see ``LeRobotDataset.truncated``) are left
out, and counted in ``skipped`` and in a logged warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlaser.errors import UserInputError
from vlaser.vla.data.lerobot import LeRobotDataset
from vlaser.vla.data.normalize import Normalizer

log = logging.getLogger(__name__)
PADDED_ACTIONS = ("mask", "repeat")


def chunk_indices(t: int, length: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the chunk starting at ``t`` (clamped to the last frame) and which of them are real."""
    steps = t + np.arange(chunk_size)
    return np.minimum(steps, length - 1), steps < length


class ActionChunkDataset(torch.utils.data.Dataset):
    """One item per frame of every complete episode: ``images`` (one PIL image per camera, in ``cameras``
    order), ``state`` (float32), ``actions`` (float32 ``(chunk_size, A)``), ``action_mask`` (bool
    ``(chunk_size,)``) and ``task``."""

    def __init__(self, dataset: LeRobotDataset, chunk_size: int, normalizer: Normalizer,
                 cameras: Sequence[str] | None = None, state_key: str = "observation.state",
                 action_key: str = "action", padded_actions: str = "mask",
                 augment: Callable[[Image.Image], Image.Image] | None = None) -> None:
        if chunk_size < 1:
            raise UserInputError(f"chunk_size must be at least 1, got {chunk_size}")
        if padded_actions not in PADDED_ACTIONS:
            raise UserInputError(f"padded_actions must be one of {PADDED_ACTIONS}, got {padded_actions!r}")
        self.padded_actions, self.augment = padded_actions, augment
        for key in (state_key, action_key):
            if key not in dataset.features:
                raise UserInputError(f"{dataset.root}: no feature {key!r} (features: {', '.join(dataset.features)})")
        self.cameras = list(dataset.cameras if cameras is None else cameras)
        for key in self.cameras:
            if key not in dataset.cameras:
                raise UserInputError(f"{dataset.root}: no camera {key!r} (cameras: {', '.join(dataset.cameras)})")
        self.dataset, self.chunk_size, self.normalizer = dataset, chunk_size, normalizer
        self.state_key, self.action_key = state_key, action_key
        self.skipped = sorted({t.episode for t in dataset.truncated})
        if self.skipped:
            log.warning("%s: %d truncated episode(s) left out: %s", dataset.root, len(self.skipped),
                        ", ".join(str(t) for t in dataset.truncated))
        self._items = [(e.index, t) for e in dataset.episodes if e.index not in self.skipped for t in range(e.length)]
        self._cache: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _episode(self, episode_index: int) -> dict[str, Any]:
        """The episode's tabular arrays with state and actions normalised (the last episode is kept)."""
        if self._cache is None or self._cache[0] != episode_index:
            episode = self.dataset.episode(episode_index)
            for key in (self.state_key, self.action_key):
                values = episode[key].reshape(len(episode[key]), -1)
                episode[key] = self.normalizer.normalize(key, values)
            self._cache = (episode_index, episode)
        return self._cache[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        episode_index, t = self._items[i]
        episode = self._episode(episode_index)
        actions = episode[self.action_key]
        steps, mask = chunk_indices(t, len(actions), self.chunk_size)
        images = [Image.fromarray(self.dataset.camera_frame(episode_index, t, key)) for key in self.cameras]
        if self.augment is not None:
            images = [self.augment(image) for image in images]
        if self.padded_actions == "repeat":
            mask = np.ones_like(mask)
        return {"images": images,
                "state": torch.as_tensor(np.asarray(episode[self.state_key][t], dtype=np.float32)),
                "actions": torch.as_tensor(np.asarray(actions[steps], dtype=np.float32)),
                "action_mask": torch.as_tensor(mask),
                "task": self.dataset.tasks[int(episode["task_index"][t])]}

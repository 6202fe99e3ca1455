"""Batches for the VLA: ActionChunkDataset items (or one live observation) -> model inputs.

Each image is one tile at the config's size (``dynamic_image_size=False``, no thumbnail, as released); the prompt
is the release's (the ``vla`` preset of ``inference.prepare``) right-padded to ``prefix_len``; the loss is masked
at padded chunk steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vlaser.errors import UserInputError
from vlaser.inference.prepare import preset_prompt
from vlaser.inference.types import Picture, Request
from vlaser.model.preprocess import build_transform, to_pil
from vlaser.vla.config import VLAConfig

PRESET = "vla"


def tokenize_prompts(tokenizer, prompts: list[str], prefix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``(B, prefix_len)``, right-padded; a longer prompt is an error
    (truncating would cut image tokens or the instruction)."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), prefix_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix_len), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > prefix_len:
            raise UserInputError(f"prompt {i} has {len(row)} tokens, more than prefix_len={prefix_len}: "
                                 f"shorten the instruction or raise prefix_len")
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


class VLACollator:
    """``collator(items) -> batch``; ``collator.observation(images, instruction)`` for inference."""

    def __init__(self, tokenizer, config: VLAConfig, num_image_token: int) -> None:
        self.tokenizer, self.config, self.num_image_token = tokenizer, config, num_image_token
        self.transform = build_transform(config.image_size)

    def prefix(self, images_per_item: Sequence[Sequence[Any]], instructions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` ``(B, prefix_len)`` and ``pixel_values`` ``(images, 3, S, S)``."""
        prompts = []
        for i, (images, text) in enumerate(zip(images_per_item, instructions)):
            if not images:
                raise UserInputError(f"item {i} has no image; the VLA needs at least one camera")
            prompts.append(self._prompt(images, text))
        ids, mask = tokenize_prompts(self.tokenizer, prompts, self.config.prefix_len)
        pixels = torch.stack([self.transform(to_pil(im)) for images in images_per_item for im in images])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

    def _prompt(self, images: Sequence[Any], text: str) -> str:
        request = Request(text, [Picture(im) for im in images], system=self.config.system_message)
        return preset_prompt(PRESET, request, self.num_image_token)

    def prompt_length(self, cameras: int, text: str) -> int:
        """Tokens of the prompt of ``cameras`` images and instruction ``text`` (what ``prefix_len`` must hold)."""
        prompt = self._prompt([None] * cameras, text)
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        cfg = self.config
        batch = self.prefix([item["images"] for item in items], [item["task"] for item in items])
        batch["state"] = torch.stack([_vector(item, "state", (cfg.proprio_dim,), i) for i, item in enumerate(items)])
        batch["actions"] = torch.stack([_vector(item, "actions", (cfg.chunk_size, cfg.action_dim), i)
                                        for i, item in enumerate(items)])
        batch["action_mask"] = torch.stack([torch.as_tensor(item["action_mask"], dtype=torch.bool) for item in items])
        return batch


def _vector(item: dict[str, Any], key: str, shape: tuple[int, ...], i: int) -> torch.Tensor:
    value = torch.as_tensor(np.asarray(item[key]), dtype=torch.float32)
    if tuple(value.shape) != shape:
        raise UserInputError(f"item {i}: {key} has shape {tuple(value.shape)}, the VLA config expects {shape}")
    return value

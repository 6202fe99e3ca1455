"""Batching SFT samples: right padding with the pad id and a real attention mask, tiles concatenated.

Unlike InternVL's ``concat_pad_data_collator`` (which pads with id 0 and rebuilds the mask as ``id != 0``,
hiding every real token with id 0 -- ``!`` in Qwen2's vocabulary), the mask marks exactly the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlaser.data.tokenize import IGNORE_INDEX


class SFTCollator:
    """``input_ids``/``labels``/``attention_mask`` ``(B, T)``; ``pixel_values`` ``(sum tiles, 3, S, S)``;
    ``image_flags`` ``(sum tiles,)``; ``skipped`` and ``n_tokens`` are for logging, not for the model.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[dict]) -> dict:
        length = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[row, :n] = s["input_ids"]
            labels[row, :n] = s["labels"]
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_flags": torch.cat([s["image_flags"] for s in samples]),
            "skipped": [skip for s in samples for skip in s.get("skipped", [])],
            "n_tokens": int(attention_mask.sum()),
        }

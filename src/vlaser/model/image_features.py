"""Image features into a prompt: the one place where the vision tower's output is written over the
``<IMG_CONTEXT>`` embeddings (chat training, the inference engine's prefill and the VLA's prefix all do it)."""

from __future__ import annotations

import torch


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower and projector on ``pixel_values`` (tiles, 3, S, S): ``(tiles, tokens per tile, C)``."""
    features = model.model.get_image_features(pixel_values=pixel_values.to(model.device, model.dtype))
    return getattr(features, "pooler_output", features)


def write_image_features(embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """``embeds`` (B, T, C) with ``features`` (tiles x tokens, or rows, of C) written in order over the positions
    where ``input_ids`` holds ``image_token_id``; a count that differs is an error, never a misaligned prompt."""
    features = features.reshape(-1, features.shape[-1])
    mask = input_ids == image_token_id
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"{int(mask.sum())} image tokens in the prompts but {features.shape[0]} image features")
    return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))

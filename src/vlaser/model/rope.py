"""Fixed rotary frequencies for a fixed-shape decode step: dynamic NTK RoPE reads the host in every forward.

transformers' dynamic RoPE (``rope_type`` "dynamic", which InternVL3 checkpoints ship) compares the longest
position with its cached length in every forward: two reads of a device value, which a CUDA graph cannot
capture. While every position stays within the checkpoint's ``max_position_embeddings`` those checks never
change anything: dynamic NTK scaling then gives the default frequencies (the module's ``original_inv_freq``).
So a step whose positions are bounded by that runs with a copy of the model's rotary embedding fixed to them
(:func:`fixed_rotary`, swapped in by :func:`rotary_swapped`); see docs/engine.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vlaser.errors import UserInputError


def fixed_rotary(language_model: torch.nn.Module, positions: int) -> torch.nn.Module | None:
    """A copy of ``language_model.rotary_emb`` that never updates its frequencies, for steps whose positions
    are all below ``positions``; ``None`` where the model's rotary embedding is fixed already (not dynamic).
    A bound over the checkpoint's ``max_position_embeddings`` (where dynamic NTK would rescale) is refused."""
    rotary = language_model.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if not isinstance(rope_type, str) or "dynamic" not in rope_type:
        return None
    bound = language_model.config.max_position_embeddings
    if positions > bound:
        raise UserInputError(
            f"static_capacity {positions} is over the checkpoint's max_position_embeddings of {bound}: past it, "
            f"its {rope_type!r} rope_scaling rescales the rotary frequencies with the sequence length (a host read "
            f"every step, which a fixed-shape or CUDA-graph step cannot do); use a static_capacity of at most {bound}")
    fixed = copy.deepcopy(rotary)
    fixed.rope_type = "default"  # transformers' dynamic update runs only for a dynamic rope_type
    # what the dynamic module uses within the bound (its inv_freq may still hold a longer call's rescaled one)
    fixed.inv_freq = rotary.original_inv_freq.to(rotary.inv_freq.device, copy=True)
    return fixed


@contextmanager
def rotary_swapped(language_model: torch.nn.Module, rotary: torch.nn.Module | None) -> Iterator[None]:
    """``language_model`` runs with ``rotary`` as its rotary embedding inside the block (unchanged with None)."""
    if rotary is None:
        yield
        return
    saved = language_model.rotary_emb
    language_model.rotary_emb = rotary
    try:
        yield
    finally:
        language_model.rotary_emb = saved

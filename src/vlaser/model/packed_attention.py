"""Attention for packed rows without flash-attention: SDPA run per sample, so cost follows the samples.

transformers already isolates packed samples (restarted ``position_ids``, no attention mask) by building
a dense block-diagonal mask, which costs attention over the whole row squared. This implementation
finds the samples from the position ids and runs causal SDPA on each, which computes the same values
with ``sum(n_i^2)`` instead of ``(sum n_i)^2`` work. With flash-attention installed, its variable-length
kernel is used instead (transformers' ``flash_attention_2`` reads packing from the position ids too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

NAME = "vlaser_packed_sdpa"


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each sample in one row: a new sample starts wherever positions do not step by 1."""
    starts = [0] + (torch.nonzero(torch.diff(position_ids) != 1).flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [len(position_ids)]))


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                position_ids: torch.Tensor | None = None, **kwargs):
    """``(B, H, T, D)`` query / ``(B, H_kv, T, D)`` key and value -> ``(B, T, H, D)``, causal within samples."""
    if attention_mask is not None or position_ids is None or key.shape[2] != query.shape[2]:  # padding or a cache
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.empty_like(query)
    gqa = key.shape[1] != query.shape[1]
    p = dropout if module.training else 0.0
    for b in range(query.shape[0]):
        for start, end in _segments(position_ids[b] if position_ids.shape[0] > 1 else position_ids[0]):
            out[b:b + 1, :, start:end] = F.scaled_dot_product_attention(
                query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
                dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def _packed_mask(*args, attention_mask=None, q_offset: int = 0, kv_offset: int = 0, q_length: int = 0,
                 kv_length: int = 0, **kwargs):
    """No dense mask for a whole-row forward without padding (samples come from the position ids).

    With padding or a cache (generation) transformers' SDPA mask is built as usual, so a model switched to
    packed attention still generates exactly as before the switch.
    """
    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, q_offset=q_offset, kv_offset=kv_offset,
                     q_length=q_length, kv_length=kv_length, **kwargs)


def use_packed_attention(model) -> str:
    """Switch the language model to per-sample attention for packed rows (unless flash-attention is in use)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    current = model.config.text_config._attn_implementation
    if current and current.startswith("flash_attention"):
        return current
    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _packed_mask)
    model.set_attn_implementation({"text_config": NAME})
    return NAME

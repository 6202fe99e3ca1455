"""Joint attention (mixture of transformers) over streams of Qwen2 layers, the release's mask and positions.

Each stream (the VLM prefix through the backbone's layers; proprio and action tokens through the expert's) computes
its own Q/K/V with its own norm and rotary embedding; one attention runs over the concatenation, with the
backbone layer's attention function; each stream takes its rows back through its own ``o_proj``, norm and MLP.
The modules' weights are used directly (their ``forward`` would attend within the stream only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, eager_attention_forward

#: Per layer, the rotated keys and the values of the tokens already processed: ``(B, KV heads, T, head size)``.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stream:
    """Tokens of one mixture: its decoder layers, hidden states ``(B, T, C)`` and rotary ``(cos, sin)``."""

    layers: nn.ModuleList
    hidden: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]


def _qkv(layer: nn.Module, hidden: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *rotary)
    return q, k, v


def _finish(layer: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    hidden = hidden + layer.self_attn.o_proj(attended)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def joint_forward(streams: Sequence[Stream], mask: torch.Tensor, cache: KVCache | None = None,
                  return_cache: bool = False) -> tuple[list[torch.Tensor], KVCache | None]:
    """Run every layer jointly; ``mask`` is additive ``(B, 1, queries, cached + queries)``.

    Returns each stream's final hidden states (before the final norm) and, if asked, the per-layer keys and
    values of the cached tokens followed by these streams' tokens.
    """
    hiddens = [s.hidden for s in streams]
    sizes = [h.shape[1] for h in hiddens]
    new_cache: KVCache = []
    for i in range(len(streams[0].layers)):
        layers = [s.layers[i] for s in streams]
        parts = [_qkv(layer, h, s.rotary) for layer, h, s in zip(layers, hiddens, streams)]
        q = torch.cat([p[0] for p in parts], dim=2)
        k = torch.cat([p[1] for p in parts], dim=2)
        v = torch.cat([p[2] for p in parts], dim=2)
        if cache is not None:
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
        if return_cache:
            new_cache.append((k, v))
        module = layers[0].self_attn
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
        out, _ = attention(module, q, k, v, mask, dropout=0.0, scaling=module.scaling)  # (B, T, heads, head size)
        out = out.reshape(*out.shape[:2], -1)
        hiddens = [_finish(layer, h, o) for layer, h, o in zip(layers, hiddens, out.split(sizes, dim=1))]
    return hiddens, (new_cache if return_cache else None)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean ``(B, Q, K)`` permission mask as the additive ``(B, 1, Q, K)`` mask attention functions take."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def block_mask(prefix_valid: torch.Tensor, n_proprio: int, n_action: int, causal_prefix: bool = False) -> torch.Tensor:
    """The release's permissions ``(B, L, L)`` over ``[prefix | proprio | actions]``.

    Image and text attend bidirectionally among themselves (padding is seen by no one); the proprio token sees the
    prefix and itself; action tokens see everything. ``causal_prefix`` makes the prefix causal (for parity checks
    against the plain language model). Padding rows see the valid prefix (their outputs are never used).
    """
    b, lp = prefix_valid.shape
    n = lp + n_proprio + n_action
    valid = prefix_valid.bool()
    allowed = torch.zeros((b, n, n), dtype=torch.bool, device=prefix_valid.device)
    allowed[:, :, :lp] = valid[:, None, :]
    if causal_prefix:
        allowed[:, :lp, :lp] &= torch.ones((lp, lp), dtype=torch.bool, device=valid.device).tril()
    allowed[:, lp:lp + n_proprio, lp:lp + n_proprio] = True
    allowed[:, lp + n_proprio:, lp:] = True
    return allowed


def position_ids(prefix_valid: torch.Tensor, n_proprio: int, n_action: int, scheme: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prefix positions (B, Lp), expert positions (B, n_proprio + n_action))``.

    ``restart`` (the release): the prefix at 1..Lp, the expert stream restarting at 1 (proprio 1, actions 2..).
    ``contiguous`` (openpi): ``cumsum(valid) - 1`` over the whole sequence, so the expert continues after the
    last valid prefix token.
    """
    b, lp = prefix_valid.shape
    device = prefix_valid.device
    n_exp = n_proprio + n_action
    if scheme == "restart":
        prefix = torch.arange(1, lp + 1, device=device).expand(b, lp)
        return prefix, torch.arange(1, n_exp + 1, device=device).expand(b, n_exp)
    valid = torch.cat([prefix_valid.long(), torch.ones((b, n_exp), dtype=torch.long, device=device)], dim=1)
    pos = valid.cumsum(-1) - 1
    return pos[:, :lp], pos[:, lp:]

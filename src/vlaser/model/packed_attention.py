"""Attention for packed rows without flash-attention: SDPA run per sample, so cost follows the samples.

transformers already isolates packed samples (restarted ``position_ids``, no attention mask) by building
a dense block-diagonal mask, which costs attention over the whole row squared. This implementation
runs causal attention on each sample, which computes the same values with ``sum(n_i^2)`` instead of
``(sum n_i)^2`` work. With flash-attention installed, its variable-length kernel is used instead
(transformers' ``flash_attention_2`` reads packing from the position ids or ``cu_seq_lens_q`` too).

The sample boundaries come from the batch when the packed collator gives them (``cu_seq_lens_q`` on the
device, ``cu_seq_lens_host`` as Python ints: computed once per batch, so no layer waits on the device):
on CUDA, torch's variable-length kernel (``torch.nn.attention.varlen``) runs all samples in one call;
elsewhere, or without that kernel, SDPA runs per sample. Without them, the boundaries are found from the
position ids in every layer (a device-to-host copy per layer).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger(__name__)

NAME = "vlaser_packed_sdpa"

#: ``(N, H, D)`` query, ``(N, H_kv, D)`` key/value, cumulative lengths, longest sample, scale -> ``(N, H, D)``.
VarlenKernel = Callable[..., torch.Tensor]
_kernel: dict[str, VarlenKernel | None] = {}  # "cuda" -> the loaded kernel, or None once it could not be used
_logged: set[str] = set()


def _log_once(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        log.warning("packed attention: %s; SDPA runs per sample", reason)


def _load_varlen() -> VarlenKernel | None:
    """torch's ``varlen_attn`` behind one calling convention (its keywords differ across torch versions), taking
    grouped K/V heads as they are where the kernel can (:func:`_takes_grouped_kv`), repeated where it cannot."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as error:
        _log_once(f"no variable-length kernel in torch {torch.__version__} ({error})")
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    gqa = {"enable_gqa": True} if "enable_gqa" in params else {}  # without it: fewer heads natively, or repeats

    def call(query, key, value, cu_seq_lens, max_length, scale, **flags):
        extra = dict(causal, **flags)
        if "scale" in params:
            extra["scale"] = scale
        elif scale is not None:  # the kernel's own scale is 1/sqrt(D)
            query = query * (scale * query.shape[-1] ** 0.5)
        return varlen_attn(query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, **extra)

    grouped: list[bool] = []  # decided by the first call with grouped K/V heads

    def attend(query, key, value, cu_seq_lens, max_length, scale):
        if key.shape[1] == query.shape[1]:
            return call(query, key, value, cu_seq_lens, max_length, scale)
        if not grouped:
            grouped.append(_takes_grouped_kv(call, gqa, query, key, value, cu_seq_lens, max_length, scale))
        if grouped[0]:
            return call(query, key, value, cu_seq_lens, max_length, scale, **gqa)
        key, value = (x.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for x in (key, value))
        return call(query, key, value, cu_seq_lens, max_length, scale)

    return attend


@torch.no_grad()
def _takes_grouped_kv(call, gqa: dict, query, key, value, cu_seq_lens, max_length, scale) -> bool:
    """Whether the kernel takes fewer K/V heads than query heads (``enable_gqa`` where it has the keyword): its
    output on the grouped heads of this first call equals its output on the repeated heads. A kernel that refuses
    them, or computes something else, gets the repeats; the choice is logged once (see docs/engine.md)."""
    group = query.shape[1] // key.shape[1]
    repeated = call(query, *(x.repeat_interleave(group, dim=1) for x in (key, value)), cu_seq_lens, max_length, scale)
    try:
        out = call(query, key, value, cu_seq_lens, max_length, scale, **gqa)
        why = "" if out.shape == repeated.shape and torch.equal(out, repeated) else "its output on them differs"
    except (RuntimeError, ValueError) as error:
        why = str(error)
    if why:
        log.info("packed attention: varlen_attn cannot take grouped K/V heads (%s); they are repeated", why)
    else:
        log.info("packed attention: varlen_attn takes grouped K/V heads (%s)", "enable_gqa" if gqa else "natively")
    return not why


def _varlen_kernel() -> VarlenKernel | None:
    if "cuda" not in _kernel:
        _kernel["cuda"] = _load_varlen()
    return _kernel["cuda"]


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each sample in one row: a new sample starts wherever positions do not step by 1."""
    starts = [0] + (torch.nonzero(torch.diff(position_ids) != 1).flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [len(position_ids)]))


def _row_segments(bounds: Sequence[int], length: int) -> Iterable[tuple[int, int, int]]:
    """``(row, start, end)`` of each sample from cumulative lengths over the flattened ``(B * T)`` rows."""
    for start, end in zip(bounds[:-1], bounds[1:]):
        row = start // length
        yield row, start - row * length, end - row * length


def _per_sample(query, key, value, segments: Iterable[tuple[int, int, int]], dropout: float, scaling):
    """``(B, T, H, D)`` from causal SDPA over each ``(row, start, end)`` sample."""
    out = torch.empty_like(query)
    gqa = key.shape[1] != query.shape[1]
    for b, start, end in segments:
        out[b:b + 1, :, start:end] = F.scaled_dot_product_attention(
            query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
            dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous()


def _varlen(query, key, value, cu_seq_lens: torch.Tensor, max_length: int, scaling) -> torch.Tensor | None:
    """``(B, T, H, D)`` from torch's variable-length kernel in one call, or ``None`` where it cannot run."""
    if not query.is_cuda:
        return None
    if query.dtype not in (torch.float16, torch.bfloat16):
        _log_once(f"the variable-length kernel needs float16/bfloat16, not {query.dtype}")
        return None
    kernel = _varlen_kernel()
    if kernel is None:
        return None
    batch, heads, length, dim = query.shape
    flat = [x.transpose(1, 2).reshape(batch * length, x.shape[1], dim) for x in (query, key, value)]
    try:
        out = kernel(*flat, cu_seq_lens, max_length, scaling)
    except RuntimeError as error:  # e.g. a GPU or head size the kernel does not support
        _kernel["cuda"] = None
        _log_once(f"the variable-length kernel failed ({error})")
        return None
    return out.view(batch, length, heads, dim)


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                position_ids: torch.Tensor | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                max_length_q: int | None = None, cu_seq_lens_host: Sequence[int] | None = None, **kwargs):
    """``(B, H, T, D)`` query / ``(B, H_kv, T, D)`` key and value -> ``(B, T, H, D)``, causal within samples.

    Samples are ``cu_seq_lens_q`` (offsets into the flattened ``B * T`` tokens; ``cu_seq_lens_host`` holds the
    same as Python ints so the per-sample loop reads no device memory) or, without them, the position ids.
    Keys span the same samples as queries (a whole-row forward), so ``cu_seq_lens_k`` is ``cu_seq_lens_q``.
    """
    if attention_mask is not None or key.shape[2] != query.shape[2] or (position_ids is None
                                                                       and cu_seq_lens_q is None):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # padding or a cache

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    p = dropout if module.training else 0.0
    if cu_seq_lens_q is None:
        rows = position_ids if position_ids.shape[0] > 1 else position_ids.expand(query.shape[0], -1)
        segments = [(b, start, end) for b in range(query.shape[0]) for start, end in _segments(rows[b])]
        return _per_sample(query, key, value, segments, p, scaling), None
    if p == 0.0 and max_length_q is not None:  # the kernel has no dropout and needs the longest sample
        out = _varlen(query, key, value, cu_seq_lens_q, max_length_q, scaling)
        if out is not None:
            return out, None
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_host is None else cu_seq_lens_host  # else a copy per layer
    return _per_sample(query, key, value, _row_segments(bounds, query.shape[2]), p, scaling), None


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

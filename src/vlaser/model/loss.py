"""The causal-LM loss with InternVL's per-sample weighting (``len2weight``).

With ``x`` supervised tokens in a sample, each of its tokens weighs 1 (``token``: plain token mean),
``1/x`` (``sample``: every sample counts equally) or ``1/sqrt(x)`` (``square``); the loss is
``sum(CE * w) / sum(w)`` over the micro-batch. In packed rows several samples share a row, so the
weights come per token from the packer instead of per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

IGNORE_INDEX = -100
REDUCTIONS = ("token", "sample", "square")


def len2weight(n_supervised: int, reduction: str) -> float:
    """Weight of each supervised token of a sample with ``n_supervised`` of them (InternVL's ``len2weight``)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if n_supervised == 0:
        return 0.0
    return {"token": 1.0, "sample": 1.0 / n_supervised, "square": n_supervised**-0.5}[reduction]


def row_weights(labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-token weights ``(B, T)`` when every row is one sample; 0 where the label is ignored."""
    supervised = labels != IGNORE_INDEX
    counts = supervised[:, 1:].sum(dim=1).tolist()  # tokens that are predicted (the first never is)
    per_row = torch.tensor([len2weight(n, reduction) for n in counts], dtype=torch.float32, device=labels.device)
    return supervised.to(torch.float32) * per_row[:, None]


def per_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted cross-entropy ``(B, T-1)``: position t predicts label t+1; 0 where ignored."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "token",
                     loss_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(CE * w) / sum(w)`` over the shifted labels; ``token`` equals transformers' token-mean loss."""
    weights = (row_weights(labels, reduction) if loss_weight is None else loss_weight.to(torch.float32))[:, 1:]
    return (per_token_ce(logits, labels) * weights).sum() / weights.sum().clamp(min=1e-12)


LOSS_IMPLS = ("chunked", "plain")
#: tokens per chunk of the chunked loss, chosen by ``bench/bench_train_memory.py`` (see docs/engine.md).
CHUNK_TOKENS = 1024


def _chunk_ce_sum(head, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(CE * w)`` of one chunk of tokens: logits in the head's dtype, cross-entropy in float32."""
    logits = head(hidden).float()
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weights).sum()


def chunked_lm_loss(head, hidden: torch.Tensor, labels: torch.Tensor, reduction: str = "token",
                    loss_weight: torch.Tensor | None = None, chunk_tokens: int | None = None) -> torch.Tensor:
    """:func:`weighted_lm_loss` of ``head(hidden)`` without the ``(tokens, vocab)`` logits.

    The supervised tokens are cut into chunks of ``chunk_tokens`` (default :data:`CHUNK_TOKENS`); each chunk's
    logits exist only inside its own checkpointed call (recomputed in backward), so at most one chunk of float32
    logits is alive at a time. The head is called as a module, so ZeRO-3/FSDP gather its weight as they do for
    the plain path.
    """
    from torch.utils.checkpoint import checkpoint

    weights = (row_weights(labels, reduction) if loss_weight is None else loss_weight.to(torch.float32))[:, 1:]
    keep = labels[:, 1:] != IGNORE_INDEX
    flat_hidden = hidden[:, :-1][keep]  # only predicted positions reach the head: ignored ones cost nothing
    flat_targets, flat_weights = labels[:, 1:][keep], weights[keep]
    step = CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    if step < 1:
        raise ValueError(f"need chunk_tokens >= 1, got {chunk_tokens}")
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_targets.shape[0], step):
        part = slice(start, start + step)
        total = total + checkpoint(_chunk_ce_sum, head, flat_hidden[part], flat_targets[part], flat_weights[part],
                                   use_reentrant=False)
    if flat_targets.shape[0] == 0:
        total = total + 0.0 * hidden.sum()  # keep the graph (and DDP's reducer) connected with nothing supervised
    return total / weights.sum().clamp(min=1e-12)

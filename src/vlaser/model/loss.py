"""The causal-LM loss with InternVL's per-sample weighting (``len2weight``).

With ``x`` supervised tokens in a sample, each of its tokens weighs 1 (``token``: plain token mean),
``1/x`` (``sample``: every sample counts equally) or ``1/sqrt(x)`` (``square``); the loss is
``sum(CE * w) / sum(w)`` over the micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

IGNORE_INDEX = -100
REDUCTIONS = ("token", "sample", "square")


def token_weights(labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-token weights ``(B, T-1)`` for the shifted labels; 0 where the label is ignored."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    supervised = (labels[:, 1:] != IGNORE_INDEX).to(torch.float32)
    counts = supervised.sum(dim=1, keepdim=True).clamp(min=1)
    per_sample = {"token": torch.ones_like(counts), "sample": 1 / counts, "square": counts.rsqrt()}[reduction]
    return supervised * per_sample


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """Shifted cross-entropy weighted per sample; ``token`` equals transformers' token-mean loss."""
    weights = token_weights(labels, reduction)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                         reduction="none")  # (B, T-1)
    return (ce * weights).sum() / weights.sum().clamp(min=1e-12)

"""Packed sequences (``--use_packed_ds``): several samples per row, each attending only to itself.

Samples are drawn in a seeded shuffled order and placed first-fit into a buffer of open packs bounded
by ``max_packed_tokens`` tokens and ``num_images_expected`` tiles; a pack leaves the buffer when it is
full or when the buffer overflows (the fullest goes). Position ids restart at every sample and no
attention mask is passed, which makes transformers build a block-diagonal causal mask (or call
variable-length flash-attention), so a packed row computes exactly what its samples would alone; the
collator also gives the sample boundaries (``cu_seq_lens_q`` ...), so attention need not find them.
Each token carries its sample's ``len2weight``, so ``--loss_reduction`` weighs samples as InternVL does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vlaser.data.meta import Skip
from vlaser.errors import UserInputError
from vlaser.model.loss import IGNORE_INDEX, len2weight

log = logging.getLogger(__name__)


@dataclass(eq=False)  # packs are compared by identity (they hold tensors)
class _Pack:
    samples: list[dict] = field(default_factory=list)
    tokens: int = 0
    tiles: int = 0


def pack_samples(samples: Sequence[dict], reduction: str) -> dict:
    """One packed row from samples: concatenated ids/labels, restarted positions, per-token loss weights."""
    ids = torch.cat([s["input_ids"] for s in samples])
    labels = torch.cat([s["labels"] for s in samples])
    positions = torch.cat([torch.arange(len(s["input_ids"])) for s in samples])
    weights = torch.cat([
        (s["labels"] != IGNORE_INDEX).float() * len2weight(int((s["labels"][1:] != IGNORE_INDEX).sum()), reduction)
        for s in samples
    ])
    return {
        "input_ids": ids, "labels": labels, "position_ids": positions, "loss_weight": weights,
        "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
        "image_flags": torch.cat([s["image_flags"] for s in samples]),
        "sample_lengths": [len(s["input_ids"]) for s in samples],
        "skipped": [skip for s in samples for skip in s.get("skipped", [])],
    }


class PackedSFTDataset(torch.utils.data.IterableDataset):
    """An endless stream of packed rows over an ``SFTDataset`` (one pass per epoch, reshuffled each time;
    with ``weights``, each epoch draws ``len(dataset)`` samples with replacement in proportion to them).

    Every process iterates the same stream (same seed); the Trainer's data loader hands each process its
    share, so packs are identical whatever the number of processes.
    """

    def __init__(self, dataset, max_packed_tokens: int, num_images_expected: int, reduction: str = "token",
                 max_buffer_size: int = 20, seed: int = 0, weights: list[float] | None = None):
        self.dataset, self.max_tokens, self.max_tiles = dataset, max_packed_tokens, num_images_expected
        self.reduction, self.max_buffer, self.seed = reduction, max_buffer_size, seed
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def _fits(self, pack: _Pack, sample: dict) -> bool:
        return (pack.tokens + len(sample["input_ids"]) <= self.max_tokens
                and pack.tiles + sample["pixel_values"].shape[0] <= self.max_tiles)

    def _epoch(self, epoch: int, carried: list[Skip]) -> Iterator[dict]:
        """Packs of one pass; skips not yet attached to a pack stay in ``carried`` for the next one."""
        rng = np.random.default_rng((self.seed, epoch))
        n = len(self.dataset)
        order = rng.permutation(n) if self.weights is None else rng.choice(n, size=n, replace=True, p=self.weights)
        buffer: list[_Pack] = []
        produced = False
        for index in order:
            sample = self.dataset[int(index)]
            n, tiles = len(sample["input_ids"]), sample["pixel_values"].shape[0]
            if n > self.max_tokens or tiles > self.max_tiles:
                carried += sample["skipped"] + [Skip(sample["dataset"], "", sample["line"],
                                                     f"{n} tokens / {tiles} tiles exceed a pack "
                                                     f"({self.max_tokens} / {self.max_tiles})")]
                continue
            sample = {**sample, "skipped": carried[:] + sample["skipped"]}
            carried.clear()
            target = next((p for p in buffer if self._fits(p, sample)), None)
            if target is None:
                target = _Pack()
                buffer.append(target)
            target.samples.append(sample)
            target.tokens += n
            target.tiles += tiles
            full = [p for p in buffer if p.tokens == self.max_tokens or p.tiles == self.max_tiles]
            if not full and len(buffer) > self.max_buffer:
                full = [max(buffer, key=lambda p: p.tokens)]
            for pack in full:
                buffer.remove(pack)
                produced = True
                yield pack_samples(pack.samples, self.reduction)
        for pack in sorted(buffer, key=lambda p: -p.tokens):
            produced = True
            yield pack_samples(pack.samples, self.reduction)
        if not produced:
            raise UserInputError(f"no sample fits in a pack of {self.max_tokens} tokens and {self.max_tiles} tiles; "
                                 f"e.g. {carried[-1] if carried else 'every sample was skipped'}")

    def __iter__(self) -> Iterator[dict]:
        carried: list[Skip] = []
        epoch = 0
        while True:
            yield from self._epoch(epoch, carried)
            epoch += 1


class PackedCollator:
    """Stack packed rows, padding each with a block of pad tokens (own positions, no loss).

    The batch also holds the sample boundaries, found here once instead of from the position ids in every
    layer: ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32 cumulative lengths over the flattened ``B * T`` tokens,
    a row's padding block counting as a sample; transformers' flash-attention names), ``max_length_q``/
    ``max_length_k`` (the longest, an int) and ``cu_seq_lens_host`` (the boundaries as a tuple of ints, which
    the Trainer leaves on the host, for attention that loops over samples).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict]) -> dict:
        length = max(len(r["input_ids"]) for r in rows)
        out = {key: [] for key in ("input_ids", "labels", "position_ids", "loss_weight")}
        for r in rows:
            pad = length - len(r["input_ids"])
            out["input_ids"].append(torch.cat([r["input_ids"], torch.full((pad,), self.pad_token_id)]))
            out["labels"].append(torch.cat([r["labels"], torch.full((pad,), IGNORE_INDEX)]))
            out["position_ids"].append(torch.cat([r["position_ids"], torch.arange(pad)]))
            out["loss_weight"].append(torch.cat([r["loss_weight"], torch.zeros(pad)]))
        batch = {key: torch.stack(values) for key, values in out.items()}
        batch["pixel_values"] = torch.cat([r["pixel_values"] for r in rows])
        batch["image_flags"] = torch.cat([r["image_flags"] for r in rows])
        batch["skipped"] = [skip for r in rows for skip in r["skipped"]]
        batch["n_tokens"] = sum(sum(r["sample_lengths"]) for r in rows)
        return batch | sample_boundaries([r["sample_lengths"] for r in rows], length)


def sample_boundaries(rows: Sequence[Sequence[int]], length: int) -> dict:
    """The variable-length attention inputs (see ``PackedCollator``) of rows of samples of the given lengths,
    each row padded to ``length`` tokens."""
    lengths: list[int] = []
    for row in rows:
        pad = length - sum(row)
        lengths += list(row) + ([pad] if pad else [])
    bounds = tuple(int(n) for n in np.cumsum([0] + lengths))
    cu_seq_lens = torch.tensor(bounds, dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest, "cu_seq_lens_host": bounds}

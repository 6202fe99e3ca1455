"""The one engine for local generation: prepared requests in, completions out, in the order given.

This first version wraps the model's left-padded ``generate``: items with the same decoding settings are
generated together, at most ``max_batch_size`` rows and ``max_batch_tokens`` prompt-plus-answer tokens per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlaser.inference.types import Completion, GenerationParams, Prepared
from vlaser.model.chat import answer_decoder


class Engine:
    """Generates answers for :class:`Prepared` items on one model (greedy answers equal ``model.chat``'s)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 8, max_batch_tokens: int = 16384,
                 keep_grounding_tokens: bool = False):
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"need max_batch_size >= 1 and max_batch_tokens >= 1, got {max_batch_size} and "
                             f"{max_batch_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.end_token = model.conv_template.stop_token
        self.end_id = tokenizer.convert_tokens_to_ids(self.end_token)
        self.decode = answer_decoder(tokenizer, self.end_token, keep_grounding_tokens)

    def generate(self, items: Sequence[Prepared], params: GenerationParams | Sequence[GenerationParams]
                 ) -> list[Completion]:
        """One completion per item, in the items' order; ``params`` is one setting for all or one per item."""
        params = _per_item(items, params)
        for item in items:
            if not item.input_ids:
                item.input_ids = self.tokenizer(item.prompt)["input_ids"]
        order = sorted(range(len(items)), key=lambda i: (params[i].greedy, params[i].seed, params[i].temperature,
                                                         params[i].top_p, len(items[i].input_ids)))
        done: dict[int, Completion] = {}
        for batch in self._batches(order, items, params):
            for i, completion in zip(batch, self._run([items[i] for i in batch], [params[i] for i in batch])):
                done[i] = completion
        return [done[i] for i in range(len(items))]

    def _batches(self, order: list[int], items: Sequence[Prepared], params: list[GenerationParams]):
        """Runs of ``order`` that share their decoding and fit ``max_batch_size`` and ``max_batch_tokens``."""
        batch: list[int] = []
        for i in order:
            tokens = sum(len(items[j].input_ids) + params[j].max_new_tokens for j in [*batch, i])
            same = not batch or _decoding(params[batch[0]]) == _decoding(params[i])
            if batch and (not same or len(batch) == self.max_batch_size or tokens > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def _run(self, items: list[Prepared], params: list[GenerationParams]) -> list[Completion]:
        model, tokenizer = self.model, self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = tokenizer([item.prompt for item in items], return_tensors="pt", padding=True).to(model.device)
        finally:
            tokenizer.padding_side = side
        first = params[0]
        config = {"max_new_tokens": max(p.max_new_tokens for p in params), "eos_token_id": self.end_id,
                  "pad_token_id": tokenizer.pad_token_id, "min_new_tokens": first.min_new_tokens}
        config.update({"do_sample": False} if first.greedy else
                      {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0})
        tiles = [item.pixel_values for item in items if item.pixel_values is not None]
        if tiles:
            config["pixel_values"] = torch.cat(tiles).to(model.device, model.dtype)
        if not first.greedy and first.seed is not None:
            torch.manual_seed(first.seed)
        out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **config)
        rows = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._completion(item, p, row) for item, p, row in zip(items, params, rows)]

    def _completion(self, item: Prepared, params: GenerationParams, row: list[int]) -> Completion:
        """The answer of one row: cut at its end token, its ``max_new_tokens`` or its first stop string."""
        row = row[: row.index(self.end_id) + 1] if self.end_id in row else row
        row = row[: params.max_new_tokens]
        text = self.decode(row).strip()
        reason = "stop" if row and row[-1] == self.end_id else "length"
        cuts = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        if cuts:
            text, reason = text[: min(cuts)].strip(), "stop"
        return Completion(text, reason, len(item.input_ids), len(row))


def _per_item(items: Sequence[Prepared], params: GenerationParams | Sequence[GenerationParams]
              ) -> list[GenerationParams]:
    if isinstance(params, GenerationParams):
        return [params] * len(items)
    params = list(params)
    if len(params) != len(items):
        raise ValueError(f"{len(items)} items but {len(params)} generation parameters")
    return params


def _decoding(params: GenerationParams) -> tuple:
    """Items with equal keys share a ``generate`` call (this version's decoding is one setting per call)."""
    if params.greedy:
        return ("greedy", params.min_new_tokens)
    return ("sample", params.temperature, params.top_p, params.seed, params.min_new_tokens)

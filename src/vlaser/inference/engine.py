"""The one engine for local generation, with continuous batching: prepared requests in, completions out.

Each request is a row in one of ``max_batch_size`` slots of a KV cache of vlaser's own (:class:`SlotCache`):
every row writes its keys and values at its own positions, with its own position ids and a 4D attention
mask, so a request joins the running batch at the next step and a finished row frees its slot at once.
New rows are prefilled together (right-padded: causal attention never looks at the padding), their images
through the vision tower in one call; admission is bounded by ``max_batch_tokens`` (prompt plus
``max_new_tokens`` of every running row). Greedy answers equal the batch-1 ``model.chat`` loop.

With ``static_capacity`` the decode step has fixed shapes (see :class:`Engine`), and with ``cuda_graphs`` on
CUDA each batch-size bucket's decode forward is one captured ``torch.cuda.CUDAGraph``, replayed every step.

Two ways in: :meth:`Engine.generate` (a list of items, answers in order; it admits them sorted by tile count and
prompt length) and :meth:`Engine.add` / :meth:`Engine.step` (the server's loop, with streamed deltas).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers.cache_utils import Cache

from vlaser.errors import UserInputError
from vlaser.inference.types import Completion, GenerationParams, Prepared
from vlaser.model.chat import answer_decoder
from vlaser.model.image_features import image_features, write_image_features
from vlaser.model.rope import fixed_rotary, rotary_swapped

log = logging.getLogger(__name__)


class SlotCache(Cache):
    """Keys and values of ``slots`` rows, each row written at its own positions (see :meth:`bind`)."""

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__(layers=[])
        self.shape, self.dtype, self.device, self.num_layers = (slots, kv_heads, 0, head_dim), dtype, device, layers
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = 0
        self._rows = torch.zeros(0, dtype=torch.long)
        self._contiguous = True
        self._positions = torch.zeros(0, 0, dtype=torch.long)
        self._kv_len = 0

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` positions per slot, keeping what is written."""
        if capacity <= self.capacity:
            return
        slots, heads, _, dim = self.shape
        grown = [torch.zeros(slots, heads, capacity, dim, dtype=self.dtype, device=self.device)
                 for _ in range(2 * self.num_layers)]
        for new, old in zip(grown, self.keys + self.values):
            new[:, :, : self.capacity] = old
        self.keys, self.values = grown[: self.num_layers], grown[self.num_layers:]
        self.capacity = capacity

    def bind(self, slots: list[int], positions: torch.Tensor, kv_len: int) -> None:
        """The next forward runs rows ``slots`` (in order), writing row ``b``'s tokens at ``positions[b]`` and
        attending to the first ``kv_len`` positions of its slot."""
        self._rows = torch.tensor(slots, device=self.device)
        self._contiguous = slots == list(range(len(slots)))  # then the rows read a view, no copy
        self._positions, self._kv_len = positions, kv_len

    def bind_rows(self, rows: torch.Tensor, positions: torch.Tensor, kv_len: int) -> None:
        """As :meth:`bind`, with the slots already a tensor on the device (a graph's input buffer, so a replay
        reads whatever slots were copied into it)."""
        self._rows, self._contiguous = rows, False
        self._positions, self._kv_len = positions, kv_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows[:, None], :, self._positions] = key_states.transpose(1, 2)
        values[self._rows[:, None], :, self._positions] = value_states.transpose(1, 2)
        if self._contiguous:
            rows = len(self._rows)
            return keys[:rows, :, : self._kv_len], values[:rows, :, : self._kv_len]
        return keys[self._rows, :, : self._kv_len], values[self._rows, :, : self._kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len


@dataclass(eq=False)
class Row:
    """One request in the engine: its prompt, settings, slot and what it has generated so far."""

    item: Prepared
    params: GenerationParams
    decode: Callable[[list[int]], str]
    on_delta: Callable[[str], None] | None = None  #: streamed text; the deltas add up to the final text
    tag: Any = None  #: the caller's own handle
    slot: int = -1
    length: int = 0  #: positions written in its slot
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""
    text: str = ""  #: the answer so far (left-stripped), decoded incrementally while it streams or has stops
    prefix_offset: int = 0  #: ``tokens[prefix_offset:read_offset]``: the context the next window is decoded with
    read_offset: int = 0
    cancelled: bool = False
    completion: Completion | None = None
    error: BaseException | None = None
    generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.completion is not None or self.error is not None or self.cancelled


class Engine:
    """Continuous batching over a slot KV cache (see the module docstring).

    ``static_capacity`` (positions per slot) makes the decode step fixed-shape, so CUDA graphs can replay it:
    the cache is allocated once, ``max_batch_size`` slots plus a scratch slot of that many positions (a request
    whose prompt and ``max_new_tokens`` exceed it is refused at :meth:`add`), and each decode step runs the
    running rows padded up to a :func:`bucket_size`, attending to all ``static_capacity`` positions (masked past
    each row's own). Padding rows write and read position 0 of the scratch slot, so no real row sees them and no
    softmax row is empty. Prefill stays dynamic. ``cuda_graphs`` captures one graph per bucket on its first step
    (embedding, language model and ``lm_head``; sampling stays outside); it needs ``static_capacity`` and is
    ignored, with one logged warning, off CUDA, so one configuration works on every machine. The fixed-shape step
    reads nothing back from the device: with a dynamic ``rope_scaling`` it runs on fixed rotary frequencies
    (:func:`~vlaser.model.rope.fixed_rotary`), so ``static_capacity`` may not exceed ``max_position_embeddings``,
    and its inputs go up from a pinned host buffer without blocking (on CUDA).
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 8, max_batch_tokens: int = 16384,
                 static_capacity: int | None = None, cuda_graphs: bool = False):
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"need max_batch_size >= 1 and max_batch_tokens >= 1, got {max_batch_size} and "
                             f"{max_batch_tokens}")
        if static_capacity is not None and static_capacity < 1:
            raise ValueError(f"need static_capacity >= 1 (or None), got {static_capacity}")
        if cuda_graphs and static_capacity is None:
            raise ValueError("cuda_graphs needs static_capacity: a graph replays fixed shapes only")
        if cuda_graphs and model.device.type != "cuda":
            _warn_once(f"cuda_graphs ignored: the model is on {model.device.type}, CUDA graphs need CUDA")
            cuda_graphs = False
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.end_token = model.conv_template.stop_token
        self.end_id = tokenizer.convert_tokens_to_ids(self.end_token)
        self.context = model.config.text_config.max_position_embeddings
        self.waiting: deque[Row] = deque()
        self.running: list[Row] = []
        self._decoders: dict[bool, Callable[[list[int]], str]] = {}
        self._cache: SlotCache | None = None
        self.static_capacity, self.cuda_graphs = static_capacity, cuda_graphs
        #: the static step's rotary embedding (None: the model's own, fixed already), refusing too large a capacity
        self._rotary = None if static_capacity is None else fixed_rotary(model.model.language_model, static_capacity)
        #: bucket -> its (3, bucket) ids, positions, slots: on the device, and the host buffer they are staged in
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  #: bucket -> graph, its logits
        self._pool = None  #: the graphs' shared memory pool

    # ---- the list API ------------------------------------------------------------------------------------

    def generate(self, items: Sequence[Prepared], params: GenerationParams | Sequence[GenerationParams],
                 max_batch_size: int | None = None) -> list[Completion]:
        """One completion per item, in the items' order; ``params`` is one setting for all or one per item.
        Items are admitted sorted by tile count and prompt length, so rows that share a prefill are alike.
        ``max_batch_size`` (rows decoding at once) resizes an idle engine's slots; None keeps them."""
        params = _per_item(items, params)
        if max_batch_size is not None:
            self.resize(max_batch_size)
        rows: list[Row] = []
        try:
            for item, p in zip(items, params):
                rows.append(self.add(item, p))
        finally:  # an item refused by add leaves none of the list queued
            for row in rows:
                self.waiting.remove(row)
        self.waiting.extend(sorted(rows, key=lambda r: (sum(r.item.num_patches), len(r.item.input_ids))))
        while self.waiting or self.running:
            self.step()
        for row in rows:
            if row.error is not None:
                raise row.error
        return [row.completion for row in rows]

    def resize(self, max_batch_size: int) -> None:
        """``max_batch_size`` slots from the next step on; the cache and graphs of the old size are dropped."""
        if max_batch_size < 1:
            raise ValueError(f"need max_batch_size >= 1, got {max_batch_size}")
        if max_batch_size == self.max_batch_size:
            return
        if self.waiting or self.running:
            raise RuntimeError("an engine with queued or running rows cannot be resized")
        self.max_batch_size, self._cache = max_batch_size, None
        self._inputs.clear()
        self._graphs.clear()

    # ---- the step API (the server's loop) ----------------------------------------------------------------

    def add(self, item: Prepared, params: GenerationParams, on_delta: Callable[[str], None] | None = None,
            tag: Any = None) -> Row:
        """Queue one request; it joins the running rows at the next :meth:`step` with room for it. A prompt
        whose tokens plus ``max_new_tokens`` exceed the model's context is a :class:`UserInputError`. ``item``
        is left as it is: the row holds a copy with the prompt's tokens."""
        if not item.input_ids:
            item = replace(item, input_ids=self.tokenizer(item.prompt)["input_ids"])
        prompt_tokens, tiles = len(item.input_ids), sum(item.num_patches)
        if prompt_tokens + params.max_new_tokens > self.context:
            raise UserInputError(
                f"the prompt is {prompt_tokens} tokens ({tiles} image tiles of {self.model.num_image_token} tokens "
                f"each) and max_tokens asks for {params.max_new_tokens} more, over the model's context of "
                f"{self.context} tokens; send fewer or smaller images, a lower tile count (max_num) or a lower "
                "max_tokens")
        if self.static_capacity is not None and prompt_tokens + params.max_new_tokens > self.static_capacity:
            raise UserInputError(
                f"the prompt is {prompt_tokens} tokens and max_tokens asks for {params.max_new_tokens} more, over "
                f"this engine's static_capacity of {self.static_capacity} positions per row; send a shorter prompt "
                "or a lower max_tokens, or start the engine with a larger static_capacity")
        row = Row(item, params, self._decoder(params.keep_grounding_tokens), on_delta, tag)
        if not params.greedy:
            row.generator = torch.Generator(self.model.device)
            row.generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ())))
        self.waiting.append(row)
        return row

    def cancel(self, row: Row) -> None:
        """Drop a row: out of the queue, or out of its slot at the next step."""
        row.cancelled = True

    def step(self) -> list[Row]:
        """Admit the waiting rows that fit, prefilled together, then decode one token for every running row.
        Returns the rows that ended in this step (answered, failed or cancelled); their slots are free."""
        ended = [row for row in self.waiting if row.cancelled]
        for row in ended:
            self.waiting.remove(row)
        admitted = self._admit()
        try:
            with torch.inference_mode():
                if admitted:
                    self._prefill(admitted)
                decoding = [row for row in self.running if not row.done and row not in admitted]
                if decoding:
                    self._decode(decoding)
        except Exception as error:  # the rows of a failing forward fail; the engine goes on
            for row in self.running:
                if not row.done:
                    row.error = error
        ended += [row for row in self.running if row.done]
        self.running = [row for row in self.running if not row.done]
        if not self.running and self.static_capacity is None:
            self._cache = None  # nothing to keep: the next batch starts with a cache of its own size
        return ended

    # ---- internals ---------------------------------------------------------------------------------------

    def _admit(self) -> list[Row]:
        """Waiting rows, in order, while a slot is free and the token budget allows (one row always fits)."""
        used = {row.slot for row in self.running}
        budget = sum(len(r.item.input_ids) + r.params.max_new_tokens for r in self.running)
        admitted = []
        while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
            row = self.waiting[0]
            need = len(row.item.input_ids) + row.params.max_new_tokens
            if (self.running or admitted) and budget + need > self.max_batch_tokens:
                break
            self.waiting.popleft()
            row.slot = min(set(range(self.max_batch_size)) - used)
            used.add(row.slot)
            budget += need
            admitted.append(row)
        self.running += admitted
        return admitted

    def _cache_for(self, rows: list[Row]) -> SlotCache:
        text = self.model.config.text_config
        if self._cache is None:
            heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            slots = self.max_batch_size + (self.static_capacity is not None)  # the last one is the scratch slot
            self._cache = SlotCache(text.num_hidden_layers, slots, heads, head_dim, self.model.dtype,
                                    self.model.device)
        self._cache.reserve(self.static_capacity or max(len(r.item.input_ids) + r.params.max_new_tokens
                                                        for r in rows))
        return self._cache

    def _prefill(self, rows: list[Row]) -> None:
        """The prompts of ``rows`` in one forward (right-padded), their images in one vision-tower call."""
        model, device = self.model, self.model.device
        width = max(len(r.item.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row.item.input_ids)] = torch.tensor(row.item.input_ids)
        ids = ids.to(device)
        embeds = model.get_input_embeddings()(ids)
        tiles = [r.item.pixel_values for r in rows if r.item.pixel_values is not None]
        if tiles:
            embeds = write_image_features(embeds, ids, image_features(model, torch.cat(tiles)),
                                          model.config.image_token_id)
        positions = torch.arange(width, device=device).expand(len(rows), width)
        causal = positions[0][None, :] <= positions[0][:, None]  # (T, T)
        allowed = causal.expand(len(rows), 1, width, width)
        last = torch.tensor([len(r.item.input_ids) - 1 for r in rows], device=device)
        hidden = self._forward(rows, embeds, positions, allowed, width)
        self._sample(rows, model.lm_head(hidden[torch.arange(len(rows), device=device), last]))
        for row in rows:
            row.length = len(row.item.input_ids)

    def _decode(self, rows: list[Row]) -> None:
        """One token for each of ``rows``: each writes at its own position and attends to its own slot."""
        if self.static_capacity is not None:
            logits = self._static_decode(rows)
        else:
            device = self.model.device
            ids = torch.tensor([[row.tokens[-1]] for row in rows], device=device)
            lengths = torch.tensor([row.length for row in rows], device=device)
            kv_len = int(lengths.max()) + 1
            allowed = (torch.arange(kv_len, device=device)[None, :] <= lengths[:, None])[:, None, None, :]
            hidden = self._forward(rows, self.model.get_input_embeddings()(ids), lengths[:, None], allowed, kv_len)
            logits = self.model.lm_head(hidden[:, -1])
        self._sample(rows, logits)
        for row in rows:
            row.length += 1

    def _static_decode(self, rows: list[Row]) -> torch.Tensor:
        """The logits of ``rows``' next tokens from the fixed-shape step of their bucket: its inputs copied into
        the bucket's buffer, then its captured graph replayed (or, without graphs, the step run eagerly)."""
        bucket = bucket_size(len(rows), self.max_batch_size)
        pad = bucket - len(rows)
        host = torch.tensor([[row.tokens[-1] for row in rows] + [self.tokenizer.pad_token_id or 0] * pad,
                             [row.length for row in rows] + [0] * pad,
                             [row.slot for row in rows] + [self.max_batch_size] * pad])
        if bucket not in self._inputs:
            self._inputs[bucket] = static_buffers(host.shape, self.model.device)
        inputs, staged = self._inputs[bucket]
        staged.copy_(host)
        if staged is not inputs:  # the previous step's copy is done: its sampling read the logits back
            inputs.copy_(staged, non_blocking=True)
        if not self.cuda_graphs:
            return self._static_step(inputs)[: len(rows)]
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(inputs)
        graph, logits = self._graphs[bucket]
        graph.replay()
        return logits[: len(rows)]

    def _static_step(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embedding, language model and ``lm_head`` of one decode step over the rows in ``inputs`` (ids,
        positions, slots), attending to all ``static_capacity`` positions: every shape is the bucket's."""
        ids, positions, slots = inputs
        self._cache.bind_rows(slots, positions[:, None], self.static_capacity)
        kv = torch.arange(self.static_capacity, device=inputs.device)
        allowed = (kv[None, :] <= positions[:, None])[:, None, None, :]
        with rotary_swapped(self.model.model.language_model, self._rotary):
            hidden = self._lm(self.model.get_input_embeddings()(ids[:, None]), positions[:, None], allowed)
        return self.model.lm_head(hidden[:, -1])

    def _capture(self, inputs: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """One bucket's step as a CUDA graph reading ``inputs``: warmed up on a side stream, then captured (into
        the pool all buckets share). The warm-up runs the current step for real; it writes the same keys and
        values the replay writes again, so running it twice changes nothing."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._static_step(inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._static_step(inputs)
        return graph, logits

    def _forward(self, rows: list[Row], embeds: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                 kv_len: int) -> torch.Tensor:
        """The language model over ``rows`` at ``positions``, attending where ``allowed`` (B, 1, T, kv_len)."""
        cache = self._cache_for(rows)
        cache.bind([row.slot for row in rows], positions, kv_len)
        return self._lm(embeds, positions, allowed)

    def _lm(self, embeds: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The language model's last hidden states over the rows the cache is bound to."""
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
        mask.masked_fill_(~allowed, torch.finfo(embeds.dtype).min)
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                              cache=self._cache, use_cache=True)
        return out.last_hidden_state

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        """The next token of each row from its logits: its end token held back until its ``min_new_tokens``,
        then greedy or sampled with its own generator (temperature, then top-p)."""
        logits = logits.float()
        for b, row in enumerate(rows):
            if len(row.tokens) < row.params.min_new_tokens:
                logits[b, self.end_id] = -float("inf")
        tokens = logits.argmax(-1).tolist()
        for b, row in enumerate(rows):
            if not row.params.greedy:
                tokens[b] = _sample_one(logits[b], row.params, row.generator)
            self._advance(row, tokens[b])

    def _advance(self, row: Row, token: int) -> None:
        """Add a token to a row: it ends at its end token, its first stop string or its ``max_new_tokens``;
        otherwise the part of its answer no later token can change is streamed. Streaming decodes each token
        in a short window (:func:`next_text`) and looks for stops only in the new text, so a row costs O(n)."""
        if row.done:
            return
        row.tokens.append(token)
        stops = row.params.stop
        if token == self.end_id or len(row.tokens) >= row.params.max_new_tokens:
            self._conclude(row, "stop" if token == self.end_id else "length")
            return
        if row.on_delta is None and not stops:
            return  # nothing to stream or cut: the text is decoded once, at the end
        delta, pending, row.prefix_offset, row.read_offset = next_text(row.decode, row.tokens, row.prefix_offset,
                                                                       row.read_offset)
        start = len(row.text)
        row.text = row.text + delta if row.text else delta.lstrip()
        if stops:  # the text waiting on a split character counts too: a stop is cut at the step it completes
            tail = row.text[max(0, start - max(map(len, stops)) + 1):] + (pending if row.text else pending.lstrip())
            if any(s in tail for s in stops) and self._conclude(row, "stop", cut_only=True):
                return
        if not delta:
            return
        end = settled_end(row.text, (*stops, self.end_token))
        if end > len(row.emitted):
            self._emit(row, row.text[:end])

    def _conclude(self, row: Row, reason: str, cut_only: bool = False) -> bool:
        """Finish a row from one decode of its whole answer (so its text is that of ``model.chat``), cut at
        its first stop string; with ``cut_only`` only if there is one. Whether it finished."""
        text = row.decode(row.tokens).lstrip()
        cut = min((i for i in (text.find(s) for s in row.params.stop) if i >= 0), default=None)
        if cut is not None:
            self._finish(row, text[:cut], "stop")
        elif not cut_only:
            self._finish(row, text, reason)
        return row.completion is not None

    def _emit(self, row: Row, text: str) -> None:
        if len(text) > len(row.emitted) and text.startswith(row.emitted):
            if row.on_delta is not None:
                row.on_delta(text[len(row.emitted):])
            row.emitted = text

    def _finish(self, row: Row, text: str, reason: str) -> None:
        text = text.strip()
        self._emit(row, text)
        row.completion = Completion(text, reason, len(row.item.input_ids), len(row.tokens))

    def _decoder(self, keep: bool) -> Callable[[list[int]], str]:
        if keep not in self._decoders:
            self._decoders[keep] = answer_decoder(self.tokenizer, self.end_token, keep)
        return self._decoders[keep]


def bucket_size(rows: int, max_batch_size: int) -> int:
    """The padded batch of a static decode step: the smallest power of two holding ``rows``, capped at
    ``max_batch_size`` (buckets 1, 2, 4, ..., max_batch_size), so few shapes (and graphs) ever exist."""
    return min(1 << (rows - 1).bit_length(), max_batch_size)


def static_buffers(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A static step's input buffer on ``device`` and the host buffer its values are written to first: pinned
    on CUDA, so the upload is an asynchronous copy (a pageable one blocks); on the CPU the same buffer."""
    inputs = torch.zeros(shape, dtype=torch.long, device=device)
    if inputs.device.type != "cuda":
        return inputs, inputs
    return inputs, torch.zeros(shape, dtype=torch.long, pin_memory=True)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _sample_one(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    """One sampled token, as transformers' temperature and top-p warpers then ``multinomial`` (top-k off)."""
    scores = logits / params.temperature
    if params.top_p < 1:
        ordered, index = scores.sort()
        remove = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
        remove[-1] = False  # the likeliest token always stays
        scores = scores.masked_fill(remove.scatter(0, index, remove), -float("inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


def settled_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of a growing (left-stripped) answer that later tokens cannot change, so it can be streamed.

    Held back: trailing U+FFFD (the bytes of an incomplete character), a tail that could begin a stop string
    (the answer may be cut there), and trailing whitespace (the final answer is stripped).
    """
    return text[:settled_end(text, stops)]


def settled_end(text: str, stops: Sequence[str]) -> int:
    """Where :func:`settled_prefix` ends, found from the tail alone (no copy of ``text``)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    cut = end
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text.startswith(stop[:k], end - k):
                cut = min(cut, end - k)
                break
    while cut and text[cut - 1].isspace():
        cut -= 1
    return cut


def next_text(decode: Callable[[list[int]], str], tokens: list[int], prefix_offset: int, read_offset: int
              ) -> tuple[str, str, int, int]:
    """Incremental detokenisation (the offsets scheme of vLLM and TGI): the text the last tokens add, decoded
    from the window ``tokens[prefix_offset:]`` against its context ``tokens[prefix_offset:read_offset]``, so
    each step costs a few tokens. The new text waits while it ends in U+FFFD (a character's bytes are split
    over tokens). Returns ``(new text, waiting text, prefix_offset, read_offset)``."""
    prefix = decode(tokens[prefix_offset:read_offset])
    window = decode(tokens[prefix_offset:])
    if len(window) > len(prefix) and not window.endswith("\ufffd"):
        return window[len(prefix):], "", read_offset, len(tokens)
    return "", window[len(prefix):], prefix_offset, read_offset


def _per_item(items: Sequence[Prepared], params: GenerationParams | Sequence[GenerationParams]
              ) -> list[GenerationParams]:
    if isinstance(params, GenerationParams):
        return [params] * len(items)
    params = list(params)
    if len(params) != len(items):
        raise ValueError(f"{len(items)} items but {len(params)} generation parameters")
    return params

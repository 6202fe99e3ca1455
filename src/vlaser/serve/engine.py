"""The batching engine behind ``vlaser serve``: concurrent chat requests gathered into batched ``generate`` calls,
with per-request streaming, stop strings, usage counts and cancellation.

The interface the server is written against (kept backward compatible)::

    engine = Engine(vlm, max_batch_size=8, max_wait_ms=10, max_queue=64, keep_grounding_tokens=True)
    await engine.start()                       # the batching loop, on the running event loop
    stream = engine.submit(Job(request, Sampling(max_tokens=256), max_num=12))   # QueueFull -> 429
    await stream.prepared()                    # optional: raises a preparation error (e.g. UserInputError) first
    async for delta in stream: ...             # text deltas; their concatenation is the final text
    completion = await stream.result()         # Completion(text, finish_reason, prompt_tokens, completion_tokens)
    stream.cancel()                            # the client went away
    await engine.stop()                        # finishes every job submitted so far, then returns

How jobs are batched. The loop takes the oldest waiting job and gathers the waiting jobs that can share its
``generate`` call, in arrival order, up to ``max_batch_size``; it waits at most ``max_wait_ms`` after that job
was submitted for the batch to fill. Jobs share a call when their decoding is the same: all greedy jobs
(``temperature == 0``, any seed) batch together; sampled jobs batch only with the same ``(temperature, top_p)``
and no seed; a sampled job with a seed runs alone after ``torch.manual_seed(seed)``, so the same seed gives the
same text. Sampling uses temperature and top-p only (top-k off, as in OpenAI's API). Left padding leaves a
greedy answer identical to the same request run alone.

Threads. One ``generate`` call runs at a time, on a worker thread, so the event loop stays responsive; a second
thread tiles the images and renders the prompts of the jobs next in line (at most a batch ahead, which bounds
the memory) while the current batch generates. Only the worker uses the tokenizer: a fast tokenizer's padding
settings are shared state, not safe to change from two threads.

Each row of a batch ends on its own: at the end token, when its answer contains one of its ``stop`` strings
(the answer is cut before it; ``finish_reason == "stop"``), at its own ``max_tokens`` (``"length"``), or
when it is cancelled. The row then resolves its :class:`Completion` at once, without waiting for the other
rows, and the call stops generating for it (transformers' per-row stopping criterion). A row's end token is
masked until it has its own ``min_tokens`` (a per-row logits processor; a greedy answer equals ``generate`` with
that ``min_new_tokens``); a stop string still ends it where it appears. Answers are decoded as
:meth:`InternVLChat.generate_answers` decodes them (cut at ``<|im_end|>``, stripped), each row by its own job's
choice: ``Job.keep_grounding_tokens`` keeps ``<ref>``/``<box>``/``<quad>`` tags, ``None`` takes the engine's
setting, so jobs with different choices share a batch. ``prompt_tokens`` counts the tokenised prompt, image
tokens included; ``completion_tokens`` the row's generated tokens up to and including the end token or the stop,
no padding.

A job whose preparation fails fails alone with that exception, raised by ``prepared()``, ``result()`` and the
iteration: an ``<image>`` count mismatch (a ``ValueError``), or a prompt whose tokens plus ``max_tokens`` exceed
the model's context (a ``UserInputError``, also a ``ValueError``; ``await stream.prepared()`` lets a server answer
400 before it starts streaming). A failing ``generate`` call fails the unfinished jobs of its batch. The loop
keeps serving either way. Cancelling the task that awaits ``result()`` or ``prepared()`` or iterates a stream
cancels its job, so a server whose request handler is cancelled on disconnect frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from vlaser.errors import UserInputError
from vlaser.model.chat import answer_decoder
from vlaser.serve.messages import ChatRequest


@dataclass(frozen=True)
class Sampling:
    """One request's decoding settings; ``temperature == 0`` is greedy decoding."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  #: the answer is cut before the first of these (which is not included)
    min_tokens: int = 0  #: the end token is held back until this many tokens are generated (vLLM's min_tokens)

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if (isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int)
                or not 0 <= self.min_tokens <= self.max_tokens):
            raise ValueError(f"min_tokens must be an integer from 0 to max_tokens ({self.max_tokens}), "
                             f"got {self.min_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")


@dataclass
class Job:
    """One chat request with its decoding settings and tile budget per image."""

    request: ChatRequest
    sampling: Sampling
    max_num: int  #: tiles per image, unless the request sets an image's own (``ChatRequest.tile_limits``)
    keep_grounding_tokens: bool | None = None  #: keep ``<ref>``/``<box>``/``<quad>`` tags; None: the engine's choice


@dataclass
class Completion:
    """A finished job's answer and its OpenAI ``finish_reason`` and ``usage`` counts."""

    text: str
    finish_reason: str  #: "stop" (end token or a stop string) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


class QueueFull(Exception):  # noqa: N818 (the server's name for HTTP 429, fixed by the interface)
    """``max_queue`` jobs are already waiting or running (the server answers 429)."""


class Stream:
    """One submitted job: async-iterate it for text deltas, await :meth:`result` for the :class:`Completion`."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, release: Callable[[Stream], None]):
        self.job = job
        self.cancelled = False  # read by the worker thread, which stops the job's row when it is set
        self.submitted = loop.time()
        self._loop, self._release = loop, release
        self._deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self._done: asyncio.Future[Completion] = loop.create_future()
        self._started = asyncio.Event()  # set when its generation starts or the job ends
        self._prepared: Future | None = None  # its prompt and tiles, made on the engine's preparing thread

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            while (delta := await self._deltas.get()) is not None:
                yield delta
            await self._done  # raises the job's error, if it failed
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def result(self) -> Completion:
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def prepared(self) -> None:
        """Wait until the job is generating (its images tiled, its prompt built); raise its error if it failed
        before that, so a server can still answer with an error status instead of a broken stream."""
        try:
            await self._started.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if self._done.done() and (self._done.cancelled() or self._done.exception() is not None):
            await self._done

    def cancel(self) -> None:
        """Drop the job: out of the queue, or its row stops at the next generation step; a no-op once finished."""
        if self._done.done():
            return
        self.cancelled = True
        self._done.cancel()
        self._end()

    def _end(self) -> None:
        self._started.set()
        self._deltas.put_nowait(None)
        self._release(self)

    # Called on the worker thread; they hand over to the event loop.
    def _start(self) -> None:
        self._loop.call_soon_threadsafe(self._started.set)

    def _push(self, delta: str) -> None:
        self._loop.call_soon_threadsafe(self._deltas.put_nowait, delta)

    def _settle(self, completion: Completion | None = None, error: BaseException | None = None) -> None:
        self._loop.call_soon_threadsafe(self._finish, completion, error)

    def _finish(self, completion: Completion | None, error: BaseException | None) -> None:
        if self._done.done():  # cancelled meanwhile
            return
        if error is None:
            self._done.set_result(completion)
        else:
            self._done.set_exception(error)
        self._end()


@dataclass
class _Row:
    """One job's row in a running batch, and how far it has been decoded and streamed."""

    stream: Stream
    prompt: str
    pixel_values: torch.Tensor | None
    prompt_tokens: int
    decode: Callable[[list[int]], str]  #: its job's answer decoder (with or without the grounding tags)
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""
    done: bool = False


class _BatchTracker(BaseStreamer, StoppingCriteria):
    """Streamer and per-row stopping criterion of one ``generate`` call (both run on the worker thread).

    ``put`` receives each step's tokens (one per row), decodes every unfinished row so far, streams the part
    of its answer no later token can change, and finishes rows; ``__call__`` tells ``generate`` which rows
    are done (finished, cancelled, or at their own ``max_tokens``): it pads those from then on, and returns
    once every row is done. ``generate`` asks the criterion before it hands the step's tokens to ``put``, so a
    row finished by a stop string (which only ``put`` sees) is generated for one step more, unread.
    """

    def __init__(self, rows: list[_Row], end_id: int, end_token: str):
        self.rows, self.end_id, self.end_token = rows, end_id, end_token
        self.prompt_width = 0

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 2:  # the left-padded prompts, sent once before the first step
            self.prompt_width = value.shape[1]
            return
        for row, token in zip(self.rows, value.tolist()):
            if not row.done and not row.stream.cancelled:
                self._step(row, token)

    def end(self) -> None:
        for row in self.rows:  # a row still open here was stopped by generate itself (the model's maximum length)
            if not row.done and not row.stream.cancelled:
                self._finish(row, row.decode(row.tokens), "length")

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        done = [row.done or row.stream.cancelled or generated >= row.stream.job.sampling.max_tokens
                for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _step(self, row: _Row, token: int) -> None:
        row.tokens.append(token)
        text = row.decode(row.tokens).lstrip()
        stops = row.stream.job.sampling.stop
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
        if cut is not None:
            self._finish(row, text[:cut], "stop")
        elif token == self.end_id:
            self._finish(row, text, "stop")
        elif len(row.tokens) >= row.stream.job.sampling.max_tokens:
            self._finish(row, text, "length")
        else:
            self._emit(row, settled_prefix(text, (*stops, self.end_token)))

    def _emit(self, row: _Row, text: str) -> None:
        if len(text) > len(row.emitted) and text.startswith(row.emitted):
            row.stream._push(text[len(row.emitted):])
            row.emitted = text

    def _finish(self, row: _Row, text: str, reason: str) -> None:
        row.done = True
        text = text.strip()
        self._emit(row, text)
        row.stream._settle(Completion(text, reason, row.prompt_tokens, len(row.tokens)))


class _MinTokens(LogitsProcessor):
    """Holds back the end token from each row until it has generated its own ``min_tokens``. transformers'
    ``min_new_tokens`` is one number for the whole call; here rows with different minimums share a batch, and a
    greedy row gets what ``generate`` with its ``min_new_tokens`` alone gives (the same token masked at the same
    steps)."""

    def __init__(self, tracker: _BatchTracker):
        self.tracker = tracker

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.tracker.prompt_width
        short = [i for i, row in enumerate(self.tracker.rows) if generated < row.stream.job.sampling.min_tokens]
        if short:
            scores = scores.clone()
            scores[short, self.tracker.end_id] = -float("inf")
        return scores


def settled_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of a growing (left-stripped) answer that later tokens cannot change, so it can be streamed.

    Held back: trailing U+FFFD (the bytes of an incomplete character), a tail that could begin a stop string
    (the answer may be cut there), and trailing whitespace (the final answer is stripped).
    """
    text = text.rstrip("\ufffd")
    end = len(text)
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                end = min(end, len(text) - k)
                break
    return text[:end].rstrip()


def _batch_key(sampling: Sampling) -> tuple | None:
    """Jobs with equal keys can share a ``generate`` call; ``None``: the job runs alone (seeded sampling)."""
    if sampling.temperature == 0:
        return ("greedy",)
    if sampling.seed is not None:
        return None
    return ("sample", sampling.temperature, sampling.top_p)


def _decoding(sampling: Sampling) -> dict:
    """``generate`` keyword arguments for a batch's decoding (shared by all its jobs)."""
    if sampling.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}


class Engine:
    """Gathers submitted jobs into batched generations on one worker thread (see the module docstring).

    ``keep_grounding_tokens`` is the choice for jobs that make none: off, as in ``model.chat`` and ``vlaser serve``.
    """

    def __init__(self, vlm, max_batch_size: int = 8, max_wait_ms: float = 10, max_queue: int = 64,
                 keep_grounding_tokens: bool = False):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0, got {max_batch_size}, "
                             f"{max_queue} and {max_wait_ms}")
        self.vlm, self.keep_grounding_tokens = vlm, keep_grounding_tokens
        self._decoders: dict[bool, Callable[[list[int]], str]] = {}  # made and used on the worker thread
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self._waiting: deque[Stream] = deque()
        self._pending: set[Stream] = set()  # waiting or running
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the engine is already started")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vlaser-engine")
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="vlaser-engine-prepare")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish every job submitted so far (queued and running), then stop the loop and its threads."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._worker.shutdown()
        self._preparer.shutdown()

    def submit(self, job: Job) -> Stream:
        """Queue a job (on the event loop's thread); :class:`QueueFull` when ``max_queue`` jobs are pending."""
        if self._task is None or self._stopping:
            raise RuntimeError("the engine is not running (start() it; after stop() it takes no new jobs)")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting or running (max_queue={self.max_queue}); "
                            "retry later")
        stream = Stream(job, self._loop, self._release)
        self._pending.add(stream)
        self._waiting.append(stream)
        self._prepare_ahead()
        self._wake.set()
        return stream

    def _release(self, stream: Stream) -> None:
        self._pending.discard(stream)
        with contextlib.suppress(ValueError):
            self._waiting.remove(stream)
        if stream._prepared is not None:
            stream._prepared.cancel()  # a no-op once it has started

    def _prepare_ahead(self, streams: Sequence[Stream] = ()) -> None:
        """Start preparing ``streams`` and the first ``max_batch_size`` waiting jobs, if not started yet."""
        for stream in itertools.chain(streams, itertools.islice(self._waiting, self.max_batch_size)):
            if stream._prepared is None:
                stream._prepared = self._preparer.submit(self._prepare, stream.job)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self._waiting:
                if self._stopping:
                    return
                await self._wake.wait()
                continue
            batch, full = self._next_batch()
            delay = self._waiting[0].submitted + self.max_wait - self._loop.time()
            if not full and delay > 0 and not self._stopping:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            for stream in batch:
                self._waiting.remove(stream)
            self._prepare_ahead(batch)
            await self._loop.run_in_executor(self._worker, self._generate, batch)

    def _next_batch(self) -> tuple[list[Stream], bool]:
        """The oldest job and the waiting jobs that can share its call; whether no more could join."""
        key = _batch_key(self._waiting[0].job.sampling)
        if key is None:
            return [self._waiting[0]], True
        batch = [s for s in self._waiting if _batch_key(s.job.sampling) == key][: self.max_batch_size]
        return batch, len(batch) == self.max_batch_size

    def _prepare(self, job: Job) -> tuple[str, torch.Tensor | None, int]:
        """Tile the images and render the prompt exactly as ``model.chat`` would (on the preparing thread);
        returns the prompt, the tiles and their number."""
        model, request = self.vlm.model, job.request
        media = [self.vlm.media(image, max_num=limit)
                 for image, limit in zip(request.images, request.tile_limits(job.max_num), strict=True)]
        num_patches = [m.num_patches[0] for m in media]
        prompt = request.render(model.conv_template, num_patches, model.num_image_token, model.system_message)
        return prompt, torch.cat([m.pixel_values for m in media]) if media else None, sum(num_patches)

    def _row(self, stream: Stream) -> _Row:
        """The job's row (on the worker thread): its prepared prompt, counted, and checked to leave room for
        ``max_tokens`` in the model's context."""
        prompt, pixel_values, tiles = stream._prepared.result()
        model, max_tokens = self.vlm.model, stream.job.sampling.max_tokens
        prompt_tokens = len(self.vlm.tokenizer(prompt)["input_ids"])
        context = model.config.text_config.max_position_embeddings
        if prompt_tokens + max_tokens > context:
            raise UserInputError(
                f"the prompt is {prompt_tokens} tokens ({tiles} image tiles of {model.num_image_token} tokens each) "
                f"and max_tokens asks for {max_tokens} more, over the model's context of {context} tokens; send "
                "fewer or smaller images, a lower tile count (max_num) or a lower max_tokens")
        return _Row(stream, prompt, pixel_values, prompt_tokens, self._decoder(stream.job))

    def _decoder(self, job: Job) -> Callable[[list[int]], str]:
        """The job's answer decoder, made once per choice: jobs that keep the grounding tags and jobs that drop
        them share batches, each row decoded its own way."""
        keep = self.keep_grounding_tokens if job.keep_grounding_tokens is None else job.keep_grounding_tokens
        if keep not in self._decoders:
            self._decoders[keep] = answer_decoder(self.vlm.tokenizer, self.vlm.model.conv_template.stop_token, keep)
        return self._decoders[keep]

    def _generate(self, batch: list[Stream]) -> None:
        """Generate one batch (on the worker thread) once its jobs are prepared; every job ends settled or
        cancelled."""
        rows = []
        for stream in batch:
            if stream.cancelled:
                continue
            try:
                rows.append(self._row(stream))
            except Exception as error:  # its preparation failed (or it was cancelled meanwhile: then a no-op)
                stream._settle(error=error)
        if not rows:
            return
        for row in rows:
            row.stream._start()
        model, tokenizer = self.vlm.model, self.vlm.tokenizer
        sampling = rows[0].stream.job.sampling
        tiles = [row.pixel_values for row in rows if row.pixel_values is not None]
        try:
            end_token = model.conv_template.stop_token
            tracker = _BatchTracker(rows, tokenizer.convert_tokens_to_ids(end_token), end_token)
            config = {"max_new_tokens": max(row.stream.job.sampling.max_tokens for row in rows), "streamer": tracker,
                      "stopping_criteria": StoppingCriteriaList([tracker]), **_decoding(sampling)}
            if any(row.stream.job.sampling.min_tokens for row in rows):
                config["logits_processor"] = LogitsProcessorList([_MinTokens(tracker)])
            if sampling.temperature > 0 and sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            model.generate_answers(tokenizer, [row.prompt for row in rows], torch.cat(tiles) if tiles else None,
                                   config, keep_grounding_tokens=self.keep_grounding_tokens)
        except Exception as error:
            for row in rows:
                if not row.done:
                    row.done = True
                    row.stream._settle(error=error)

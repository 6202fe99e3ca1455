"""The scheduler behind ``vlaser serve``: concurrent chat requests on the inference core's continuous batching
(it holds a :class:`vlaser.inference.engine.Engine`, ``core``), with per-request streaming, stop strings, usage
counts and cancellation. Only its worker thread uses the model and the tokenizer; arrivals share one prefill while
rows run (``Scheduler._to_join``). Its interface and behaviour: ``docs/engine.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vlaser.inference import engine as core
from vlaser.inference.engine import settled_prefix
from vlaser.inference.prepare import prepare, tile_limit
from vlaser.inference.types import Completion, GenerationParams, Prepared, Request
from vlaser.model.chat import answer_decoder

__all__ = ["Completion", "Job", "QueueFull", "Scheduler", "Stream", "answer_decoder", "settled_prefix"]
log = logging.getLogger(__name__)


@dataclass
class Job:
    """One chat request with its decoding settings."""

    request: Request
    params: GenerationParams


class QueueFull(Exception):  # noqa: N818 (the server's name for HTTP 429, fixed by the interface)
    """``max_queue`` jobs are already waiting or running (the server answers 429)."""


class Stream:
    """One submitted job: async-iterate it for text deltas, await :meth:`result` for the :class:`Completion`."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, release: Callable[[Stream], None]):
        self.job = job
        self.cancelled = False  # read by the worker thread, which stops the job's row when it is set
        self.submitted = time.monotonic()
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


class Scheduler:
    """Serves submitted jobs on one worker thread running the inference core (see the module docstring).

    ``max_batch_tokens`` bounds the prompt and answer tokens of the rows running together; ``max_tiles`` is the
    tile limit of a picture without its own (``Picture.max_tiles``; None: the checkpoint's), the server's default.
    """

    def __init__(self, vlm, max_batch_size: int = 8, max_wait_ms: float = 10, max_queue: int = 64,
                 max_batch_tokens: int = 65536, static_capacity: int | None = None,
                 cuda_graphs: bool = False, max_tiles: int | None = None):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0, got {max_batch_size}, "
                             f"{max_queue} and {max_wait_ms}")
        self.vlm = vlm
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.max_batch_tokens, self.max_tiles = max_batch_tokens, max_tiles
        self.decode = {"static_capacity": static_capacity, "cuda_graphs": cuda_graphs}  #: the core's decode options
        self.core: core.Engine | None = None  # made on the worker thread, the only one that uses the tokenizer
        self._waiting: deque[Stream] = deque()  # submitted, not yet handed to the core (guarded by _lock)
        self._pending: set[Stream] = set()  # waiting or running (event loop thread only)
        self._lock = threading.Condition()
        self._task: asyncio.Future | None = None
        self._stopping = False
        self._prefill_step = 0.0  # seconds the last step that prefilled took (worker thread only)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the scheduler is already started")
        self._loop = asyncio.get_running_loop()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vlaser-engine")
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="vlaser-engine-prepare")
        self._task = self._loop.run_in_executor(self._worker, self._work)

    async def stop(self) -> None:
        """Finish every job submitted so far (queued and running), then stop the worker and its threads."""
        if self._task is None:
            return
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        await self._task
        self._worker.shutdown()
        self._preparer.shutdown()

    def submit(self, job: Job) -> Stream:
        """Queue a job (on the event loop's thread); :class:`QueueFull` when ``max_queue`` jobs are pending."""
        if self._task is None or self._stopping:
            raise RuntimeError("the scheduler is not running (start() it; after stop() it takes no new jobs)")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting or running (max_queue={self.max_queue}); "
                            "retry later")
        stream = Stream(job, self._loop, self._release)
        self._pending.add(stream)
        with self._lock:
            self._waiting.append(stream)
            self._prepare_ahead()
            self._lock.notify_all()
        return stream

    def _release(self, stream: Stream) -> None:
        self._pending.discard(stream)
        with self._lock:
            with contextlib.suppress(ValueError):
                self._waiting.remove(stream)
            self._lock.notify_all()
        if stream._prepared is not None:
            stream._prepared.cancel()  # a no-op once it has started

    def _prepare_ahead(self) -> None:
        """Start preparing the first ``max_batch_size`` waiting jobs not started yet (under the lock)."""
        for stream in itertools.islice(self._waiting, self.max_batch_size):
            if stream._prepared is None:
                stream._prepared = self._preparer.submit(self._prepare, stream.job)

    def _prepare(self, job: Job) -> Prepared:
        """Tile the pictures and render the prompt through the prepare step (on the preparing thread); ``-v``
        logs how each image was cut, as ``vlaser chat -v`` does."""
        prepared = prepare(job.request, self.vlm.model, self.max_tiles)
        if log.isEnabledFor(logging.INFO):
            settings = self.vlm.model.processor_settings
            for k, (picture, size, n) in enumerate(zip(job.request.pictures, prepared.sizes, prepared.num_patches)):
                name = os.fspath(picture.source) if isinstance(picture.source, (str, os.PathLike)) else str(k + 1)
                if not picture.frame:
                    log.info("%s", self.vlm.tiling_note(name, size, n, tile_limit(picture, settings, self.max_tiles)))
        return prepared

    # ---- the worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        """Hand prepared jobs to the core and step it until stopped with nothing left."""
        if self.core is None:
            self.core = core.Engine(self.vlm.model, self.vlm.tokenizer, max_batch_size=self.max_batch_size,
                                    max_batch_tokens=self.max_batch_tokens,
                                    **self.decode)
        while True:
            arrivals = self._arrivals()
            if arrivals is None:
                return
            for stream in arrivals:
                self._add(stream)
            for row in self.core.running + list(self.core.waiting):
                if row.tag.cancelled:
                    self.core.cancel(row)
            if self.core.running or self.core.waiting:
                prefills, start = bool(self.core.waiting), time.monotonic()
                for row in self.core.step():
                    self._settle(row)
                if prefills:
                    self._prefill_step = time.monotonic() - start

    def _busy(self) -> bool:
        return bool(self.core.running or self.core.waiting)

    def _arrivals(self) -> list[Stream] | None:
        """The waiting jobs to hand over now: while rows run, those already prepared (they join at the next
        step); when idle, wait for one (and ``max_wait`` for more to share its prefill). None: stop."""
        with self._lock:
            while not self._busy():
                if not self._waiting:
                    if self._stopping:
                        return None
                    self._lock.wait()
                    continue
                delay = self._waiting[0].submitted + self.max_wait - time.monotonic()
                if len(self._waiting) >= self.max_batch_size or delay <= 0 or self._stopping:
                    break
                self._lock.wait(delay)
            batch = list(itertools.islice(self._waiting, self.max_batch_size))
        busy = self._busy()
        if not busy:  # nothing to hold up: wait for the batch's preparation
            for stream in batch:
                with contextlib.suppress(Exception):  # its error is raised again when it is added
                    stream._prepared.result()
        with self._lock:
            ready = [s for s in batch if s in self._waiting and s._prepared is not None and s._prepared.done()]
            if busy:
                ready = self._to_join(ready)
            for stream in ready:
                self._waiting.remove(stream)
            self._prepare_ahead()
        return ready

    def _to_join(self, ready: list[Stream]) -> list[Stream]:
        """Of the prepared jobs, those to join the running rows now. Each join is a prefill forward of its own,
        which the running rows wait for, so prepared jobs are gathered to share one: they join once they fill
        the free slots, or once the first of them has waited as long as the last prefilling step took (so no
        job waits longer for company than its prefill alone would cost), or when the engine stops. A job whose
        preparation failed is handed over at once (it fails there and takes no slot)."""
        failed = [s for s in ready if s._prepared.cancelled() or s._prepared.exception() is not None]
        ready = [s for s in ready if s not in failed]
        free = self.max_batch_size - len(self.core.running) - len(self.core.waiting)
        if not ready or free <= 0:
            return failed
        waited = time.monotonic() - ready[0].submitted
        if len(ready) >= free or waited >= self._prefill_step or self._stopping:
            return failed + ready[:free]
        return failed

    def _add(self, stream: Stream) -> None:
        """Give a prepared job to the core (on the worker thread); a failed preparation fails only the job."""
        try:
            prepared = stream._prepared.result()
            self.core.add(prepared, stream.job.params, on_delta=stream._push, tag=stream)
        except Exception as error:  # its preparation failed (or it was cancelled meanwhile: then a no-op)
            stream._settle(error=error)
            return
        stream._start()

    @staticmethod
    def _settle(row: core.Row) -> None:
        if row.cancelled:
            return
        row.tag._settle(row.completion, row.error)

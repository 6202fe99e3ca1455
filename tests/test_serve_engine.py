"""The serving engine on the tiny model: batched == alone, streaming == final, stops, seeds, cancel, errors, drain."""

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install 'vlaser[dev]')")

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.streamers import BaseStreamer

from fakes import end_token_first, free_port, wait_for_health
from media import solid_image
from vlaser.errors import UserInputError
from vlaser.inference import GenerationParams, Picture, Prepared, Request, Turn
from vlaser.inference import engine as core
from vlaser.model.template import build_chat_prompt
from vlaser.serve import scheduler as engine_module
from vlaser.serve.scheduler import Completion, Job, QueueFull, Scheduler, settled_prefix


def chat(question, images=(), system=None, history=(), max_tiles=None) -> Request:
    """A request as the server reads it: its tags place its images (``max_tiles``: each one's own limit)."""
    limits = max_tiles or [None] * len(images)
    return Request(question, [Picture(image, n) for image, n in zip(images, limits, strict=True)],
                   [Turn(*turn) for turn in history], system, tagged=bool(images))


REQUESTS = [
    chat("<image>\nWhat is on the table?", [solid_image((200, 20, 20))]),
    chat("Hello, who are you?"),
    chat("Image-1: <image>\nImage-2: <image>\nSame colour?", [solid_image((0, 0, 255), (60, 200)),
                                                              solid_image((0, 255, 0), (300, 100))]),
    chat("And now?", [], system="You are a robot.", history=[("Hi", "Hello! How can I help?")]),
    chat("<image>\nPoint to the cup.", [solid_image((9, 9, 9), (500, 500))], system="You are a robot."),
    chat("Describe it again.", [solid_image((50, 100, 150))], history=[("<image>\nDescribe it.", "A square.")]),
    chat("Which object is left of the green circle?"),
    chat("<image>\nA. B. C. D.", [solid_image((255, 255, 0), (80, 300))], system=""),
]


class _Recorder(BaseStreamer):
    """The generated token ids of a one-prompt ``generate`` call."""

    def __init__(self):
        self.ids = []

    def put(self, value):
        if value.dim() == 1:  # not the prompt
            self.ids.append(int(value[0]))

    def end(self):
        pass


def _alone(vlm, request, max_tokens, max_num=6, min_new_tokens=0):
    """The reference answer, without the engine: the rendered prompt through ``generate_answers`` on its own.
    Returns the text, whether it was cut off at ``max_tokens``, the prompt's token count and the generated ids."""
    media = vlm.media([picture.source for picture in request.pictures], max_tiles=max_num)
    model, recorder = vlm.model, _Recorder()
    system = model.system_message if request.system is None else request.system
    prompt = build_chat_prompt(request.question, model.conv_template, media.num_patches, model.num_image_token,
                               history=[(turn.user, turn.assistant) for turn in request.history],
                               system_message=system)[1]
    config = {"max_new_tokens": max_tokens, "do_sample": False, "streamer": recorder}
    if min_new_tokens:
        config["min_new_tokens"] = min_new_tokens
    texts, cut = model.generate_answers(vlm.tokenizer, [prompt], media.pixel_values, config,
                                        keep_grounding_tokens=True)
    return texts[0], cut[0], len(vlm.tokenizer(prompt)["input_ids"]), recorder.ids


def _serve(vlm, body, **options):
    """Run ``body(engine)`` on a started engine, stop it (draining), and return what the body returned.

    Tests submit their jobs in one go (no ``await`` in between), so no batch needs to wait: ``max_wait_ms=0``;
    pictures without their own limit get 6 tiles."""
    async def main():
        engine = Scheduler(vlm, **{"max_wait_ms": 0, "max_tiles": 6, **options})
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


async def _collect(stream):
    """The streamed text and the completion of one job."""
    return "".join([delta async for delta in stream]), await stream.result()


@pytest.fixture
def batch_sizes(monkeypatch):
    """The number of rows of each prefill (the rows that join the running batch together)."""
    sizes = []
    real = core.Engine._prefill

    def spy(engine, rows):
        sizes.append(len(rows))
        return real(engine, rows)

    monkeypatch.setattr(core.Engine, "_prefill", spy)
    return sizes


class _ThreadRecorder:
    """A stand-in for the tokenizer that notes which threads use it."""

    def __init__(self, real, threads: set):
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_threads", threads)

    def __getattr__(self, name):
        self._threads.add(threading.current_thread().name)
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        setattr(self._real, name, value)

    def __call__(self, *args, **kwargs):
        self._threads.add(threading.current_thread().name)
        return self._real(*args, **kwargs)


def test_concurrent_jobs_batch_and_equal_lone_answers(vlm, batch_sizes, monkeypatch):
    tiling_threads, tokenizer_threads = set(), set()
    real_prepare, real_tokenizer = engine_module.prepare, vlm.tokenizer
    monkeypatch.setattr(engine_module, "prepare", lambda *a, **k: tiling_threads.add(threading.current_thread().name)
                        or real_prepare(*a, **k))
    monkeypatch.setattr(vlm, "tokenizer", _ThreadRecorder(real_tokenizer, tokenizer_threads))
    max_tokens = [12, 5, 12, 9, 12, 12, 3, 12]

    async def body(engine):
        streams = [engine.submit(Job(r, GenerationParams(max_new_tokens=n)))
                   for r, n in zip(REQUESTS, max_tokens)]
        return await asyncio.gather(*[_collect(s) for s in streams])

    # the first job waits (up to 60 s, far more than a busy machine needs) until all 8 are prepared: they fill
    # the free slots and join at once, so the one prefill does not depend on how fast preparing runs
    results = _serve(vlm, body, max_batch_size=8, max_wait_ms=60_000)
    assert batch_sizes == [8]
    assert tiling_threads == {"vlaser-engine-prepare_0"} and tokenizer_threads == {"vlaser-engine_0"}
    monkeypatch.setattr(vlm, "tokenizer", real_tokenizer)
    for request, n, (streamed, completion) in zip(REQUESTS, max_tokens, results):
        text, cut, prompt_tokens, _ = _alone(vlm, request, n)
        assert completion.text == text and streamed == text
        assert completion.prompt_tokens == prompt_tokens
        assert completion.finish_reason == ("length" if cut else "stop")
        assert completion.completion_tokens <= n and (completion.completion_tokens == n) == cut


def test_generation_runs_off_the_event_loop_while_the_next_jobs_are_prepared(vlm, monkeypatch):
    """The first batch is held at the start of generation until the event loop has seen the second job's tiles
    ready: that needs generation off the loop and preparation ahead of it."""
    released = threading.Event()
    real = core.Engine._prefill

    def gated(*args, **kwargs):
        if not released.wait(30):
            raise TimeoutError("the event loop did not run, or the next job was not prepared, while generating")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.Engine, "_prefill", gated)

    async def body(engine):
        first, second = (engine.submit(Job(r, GenerationParams(max_new_tokens=3))) for r in REQUESTS[:2])
        await first.prepared()
        await asyncio.wrap_future(second._prepared)
        released.set()
        return [await first.result(), await second.result()]

    done = _serve(vlm, body, max_batch_size=1)
    assert [c.text for c in done] == [_alone(vlm, r, 3)[0] for r in REQUESTS[:2]]


def test_an_image_s_own_tile_limit_wins(vlm, monkeypatch):
    tiles = []
    real = core.Engine._prefill
    monkeypatch.setattr(core.Engine, "_prefill", lambda engine, rows: tiles.extend(
        len(row.item.pixel_values) for row in rows) or real(engine, rows))
    wide = solid_image((0, 255, 0), (300, 100))  # 3 tiles and the thumbnail at max_num 6, 1 tile at max_num 1
    request = chat("Image-1: <image>\nImage-2: <image>\nSame?", [wide, wide], max_tiles=[1, None])

    async def body(engine):
        return await engine.submit(Job(request, GenerationParams(max_new_tokens=2))).result()

    _serve(vlm, body)
    assert tiles == [1 + 4]


def test_batch_of_eight_equals_eight_sequential_jobs(vlm, batch_sizes):
    async def body(engine):
        jobs = [Job(r, GenerationParams(max_new_tokens=10)) for r in REQUESTS]
        batched = await asyncio.gather(*[engine.submit(j).result() for j in jobs])
        sequential = [await engine.submit(j).result() for j in jobs]
        return batched, sequential

    batched, sequential = _serve(vlm, body, max_batch_size=8)
    # the eight join as they are prepared (how many per prefill depends on the machine's load), then one by one
    assert sum(batch_sizes[:-8]) == 8 and batch_sizes[-8:] == [1] * 8
    assert batched == sequential


def test_batches_hold_at_most_max_batch_size(vlm, batch_sizes, monkeypatch):
    running, real = [], core.Engine._decode
    monkeypatch.setattr(core.Engine, "_decode", lambda engine, rows: (running.append(len(rows)), real(engine, rows))[1])

    async def body(engine):
        return await asyncio.gather(*[engine.submit(Job(r, GenerationParams(max_new_tokens=2))).result()
                                      for r in REQUESTS])

    _serve(vlm, body, max_batch_size=3)  # how the jobs split into prefills depends on the machine's load
    assert sum(batch_sizes) == len(REQUESTS) and max(batch_sizes) <= 3 and max(running) <= 3


def _prepared_job(age: float, error: Exception | None = None) -> SimpleNamespace:
    """A stand-in for a prepared stream submitted ``age`` seconds ago (its preparation failed with ``error``)."""
    future = Future()
    future.set_result(None) if error is None else future.set_exception(error)
    return SimpleNamespace(submitted=time.monotonic() - age, _prepared=future)


@pytest.mark.parametrize(("running", "ages", "stopping", "joining"), [
    (1, [0, 0], False, []),  # two of three free slots claimed, just now: wait for company
    (1, [0, 0, 0], False, [0, 1, 2]),  # they fill the free slots
    (1, [0, 0, 0, 0, 0], False, [0, 1, 2]),  # only as many as there are free slots
    (1, [11, 0], False, [0, 1]),  # the first has waited longer than a prefilling step takes
    (1, [0, 0], True, [0, 1]),  # stopping: no one is left to wait for
    (4, [11, 11], False, []),  # no free slot
])
def test_prepared_jobs_join_together_once_they_fill_the_free_slots_or_waited_a_prefill(running, ages, stopping,
                                                                                       joining):
    engine = Scheduler(vlm=None, max_batch_size=4)
    engine.core = SimpleNamespace(running=[object()] * running, waiting=deque())
    engine._prefill_step, engine._stopping = 10.0, stopping
    ready = [_prepared_job(age) for age in ages]
    assert engine._to_join(ready) == [ready[i] for i in joining]


def test_a_job_whose_preparation_failed_is_handed_over_at_once():
    engine = Scheduler(vlm=None, max_batch_size=4)
    engine.core = SimpleNamespace(running=[object()] * 4, waiting=deque())
    engine._prefill_step = 10.0
    waiting, failed = _prepared_job(0), _prepared_job(0, UserInputError("two <image> tags, one image"))
    assert engine._to_join([waiting, failed]) == [failed]


def test_a_batch_waits_for_jobs_submitted_within_max_wait(vlm, batch_sizes):
    async def body(engine):
        first = engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=2)))
        await asyncio.sleep(0)  # the loop sees one job and waits for more
        second = engine.submit(Job(REQUESTS[1], GenerationParams(max_new_tokens=2)))
        return await first.result(), await second.result()

    _serve(vlm, body, max_batch_size=2, max_wait_ms=60_000)
    assert batch_sizes == [2]


def test_stop_string_cuts_the_answer(vlm, batch_sizes):
    full, _, prompt_tokens, ids = _alone(vlm, REQUESTS[1], 20)
    stop = next(full[i:i + 2] for i in range(3, len(full)) if full[i:i + 2].strip() == full[i:i + 2]
                and "\ufffd" not in full[i:i + 2])
    expected = full[: full.find(stop)].strip()
    decode = engine_module.answer_decoder(vlm.tokenizer, "<|im_end|>", keep_grounding_tokens=True)
    tokens = next(k for k in range(1, 21) if stop in decode(ids[:k]))  # the step that completes the stop
    other_text = _alone(vlm, REQUESTS[0], 20)[0]
    batch_sizes.clear()

    async def body(engine):
        stopped = engine.submit(Job(REQUESTS[1], GenerationParams(max_new_tokens=20, stop=("NEVER SEEN", stop))))
        other = engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=20)))
        return await _collect(stopped), await other.result()

    (streamed, completion), other = _serve(vlm, body)
    assert batch_sizes == [2]
    assert completion == Completion(expected, "stop", prompt_tokens, tokens)
    assert streamed == expected and other.text == other_text


def _track(vlm, ids, sampling, keep_grounding_tokens=True):
    """Feed ``ids`` to one row of the core engine step by step, as decoding does (a prompt of 7 tokens); the
    text streamed after each step and the completions it settled."""
    engine = core.Engine(vlm.model, vlm.tokenizer)
    pushed = []
    row = core.Row(Prepared("prompt", None, [], [], input_ids=[0] * 7), sampling,
                   engine._decoder(keep_grounding_tokens), on_delta=pushed.append)
    streamed = []
    for token in ids:
        engine._advance(row, token)
        streamed.append("".join(pushed))
    return streamed, [row.completion] if row.completion else []


def test_tracker_streams_whole_characters_and_cuts_at_a_stop(vlm):
    """Fed token by token, the tracker streams only settled text (no split characters, no partial stop)."""
    tokenizer = vlm.tokenizer
    answer = "  你是书生·万象, robot arm <ref>cup</ref><box>[[1, 2, 3, 4]]</box> picks up the blue bowl END ignored"
    ids = tokenizer(answer)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    streamed, settled = _track(vlm, ids, GenerationParams(max_new_tokens=100, stop=("END",)))
    expected = "你是书生·万象, robot arm <ref>cup</ref><box>[[1, 2, 3, 4]]</box> picks up the blue bowl"
    assert settled == [Completion(expected, "stop", 7, len(tokenizer(answer[: answer.index(" END") + 4])["input_ids"]))]
    assert streamed[-1] == expected
    assert all(expected.startswith(p) and "\ufffd" not in p for p in streamed)
    assert len(set(streamed)) > 10  # it streamed as it went, not all at the end


def test_end_token_finishes_a_row_with_stop(vlm):
    tokenizer = vlm.tokenizer
    ids = tokenizer("The cup.")["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    streamed, settled = _track(vlm, ids, GenerationParams(max_new_tokens=len(ids)), keep_grounding_tokens=False)
    assert settled == [Completion("The cup.", "stop", 7, len(ids))] and streamed[-1] == "The cup."


def test_a_stop_before_a_split_character_ends_the_row_at_that_token(vlm):
    """A token that completes a stop string and starts a character it does not finish: the row stops there,
    while the engine is still waiting on that character's bytes (hypothesis found it with ``[548, 0]``)."""
    tokenizer = vlm.tokenizer
    decode = engine_module.answer_decoder(tokenizer, "<|im_end|>", False)
    token = next(i for i in range(len(tokenizer)) if (t := decode([i])).endswith("\ufffd") and t[0].isalpha())
    prefix = tokenizer("Go to ")["input_ids"]
    ids = [*prefix, token, *tokenizer(" the cup")["input_ids"]]
    streamed, settled = _track(vlm, ids, GenerationParams(max_new_tokens=len(ids), stop=(decode([token])[0],)),
                               keep_grounding_tokens=False)
    assert settled == [Completion("Go to", "stop", 7, len(prefix) + 1)] and streamed[-1] == "Go to"


@given(data=st.data())
@settings(max_examples=1000, deadline=None)
def test_streamed_text_is_always_the_final_text(vlm, data):
    """Any token sequence (split characters, special and grounding tokens, the end token), any stop strings:
    each streamed text is a prefix of the final one, the deltas add up to it, and it is what
    ``generate_answers`` decodes, cut before the first stop string."""
    tokenizer = vlm.tokenizer
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=25), label="ids")
    keep = data.draw(st.booleans(), label="keep_grounding_tokens")
    decode = engine_module.answer_decoder(tokenizer, "<|im_end|>", keep)
    full = decode(ids).strip()
    stops = tuple(data.draw(st.lists(st.sampled_from([full[i:i + n] for i in range(len(full)) for n in (1, 2, 3)])
                                     if full.strip() else st.just("never"), max_size=2), label="stops"))
    stops = tuple(s for s in stops if s)
    streamed, settled = _track(vlm, ids, GenerationParams(max_new_tokens=len(ids), stop=stops), keep)
    (completion,) = settled
    assert all(completion.text.startswith(p) for p in streamed) and streamed[-1] == completion.text
    used = ids[: completion.completion_tokens]
    text = decode(used).lstrip()
    if completion.finish_reason == "stop" and stops and any(s in text for s in stops):
        assert not any(s in decode(used[:-1]).lstrip() for s in stops)  # the first step that completed a stop
        assert completion.text == text[: min(text.find(s) for s in stops if s in text)].strip()
    else:
        assert completion.text == text.strip()
        assert completion.finish_reason == ("stop" if used[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
                                            else "length")


@pytest.mark.parametrize(("text", "settled"), [
    ("Hello wor", "Hello wor"), ("Hello ", "Hello"), ("ab\ufffd\ufffd", "ab"), ("go ST", "go"), ("go STO", "go"),
    ("go S T", "go S T"), ("x<|im_", "x"), ("", ""),
])
def test_settled_prefix_holds_back_what_may_change(text, settled):
    assert settled_prefix(text, ("STOP", "<|im_end|>")) == settled


def test_seeded_sampling_repeats_whatever_shares_the_batch(vlm, batch_sizes):
    request = REQUESTS[0]

    async def body(engine):
        def submit(**sampling):
            return engine.submit(Job(request, GenerationParams(max_new_tokens=12, **sampling)))

        seeded = [submit(temperature=1.5, seed=7), submit(temperature=1.5, seed=7), submit(temperature=1.5, seed=8)]
        others = [submit(), submit(seed=3), submit(temperature=1.5, top_p=0.9), submit(temperature=0.7, top_p=0.9)]
        together = [await s.result() for s in seeded + others]
        alone = await submit(temperature=1.5, seed=7).result()
        return together, alone

    (a, b, c, greedy, greedy_seeded, *_), alone = _serve(vlm, body)
    # greedy, seeded and sampled rows of different settings run together (joining as they are prepared)
    assert sum(batch_sizes[:-1]) == 7 and batch_sizes[-1] == 1
    assert a.text == b.text == alone.text and a.text != c.text
    assert greedy.text == greedy_seeded.text == _alone(vlm, request, 12)[0]


def test_cancel_a_queued_job(vlm, batch_sizes):
    async def body(engine):
        streams = [engine.submit(Job(r, GenerationParams(max_new_tokens=4))) for r in REQUESTS[:3]]
        streams[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await streams[1].result()
        return [await streams[0].result(), await streams[2].result()]

    done = _serve(vlm, body, max_batch_size=1)
    assert batch_sizes == [1, 1]
    assert [c.text for c in done] == [_alone(vlm, r, 4)[0] for r in (REQUESTS[0], REQUESTS[2])]


def test_cancel_a_running_job_frees_its_row(vlm, monkeypatch):
    """Cancelled after its third token, a row stops at the next step and leaves its slot; the others go on."""
    expected = [_alone(vlm, r, 15)[0] for r in (REQUESTS[0], REQUESTS[3])]
    real_advance = core.Engine._advance
    seen = {}

    def advance(engine, row, token):
        real_advance(engine, row, token)
        if row.tag is seen.get("gone"):
            seen["row"], seen["running"] = row, engine.running
            if len(row.tokens) == 3:  # cancel on the event loop, and wait for it, as a disconnect would
                cancelled = threading.Event()
                stream = row.tag
                stream._loop.call_soon_threadsafe(lambda: (stream.cancel(), cancelled.set()))
                cancelled.wait()

    monkeypatch.setattr(core.Engine, "_advance", advance)

    async def body(engine):
        gone = seen["gone"] = engine.submit(Job(REQUESTS[1], GenerationParams(max_new_tokens=15)))
        stays = [engine.submit(Job(r, GenerationParams(max_new_tokens=15))) for r in (REQUESTS[0], REQUESTS[3])]
        with pytest.raises(asyncio.CancelledError):
            await gone.result()
        return [await s.result() for s in stays], engine.core

    stays, engine = _serve(vlm, body)
    assert [c.text for c in stays] == expected
    assert len(seen["row"].tokens) == 3 and seen["row"] not in engine.running  # no step ran for it after the cancel


def test_failing_preparation_fails_only_that_job(vlm, batch_sizes):
    mismatch = chat("No tag here.", [solid_image((1, 2, 3))], history=[("Hi", "Hello")])
    context = vlm.model.config.text_config.max_position_embeddings

    async def body(engine):
        bad = engine.submit(Job(mismatch, GenerationParams(max_new_tokens=4)))
        too_long = engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=context)))
        good = engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=4)))
        for call in (bad.prepared, bad.result, lambda: _collect(bad)):
            with pytest.raises(ValueError, match=r"for 1 picture\(s\)"):
                await call()
        with pytest.raises(UserInputError, match=rf"max_tokens asks for {context} more, over the model's context"):
            await too_long.prepared()
        await good.prepared()
        return await good.result()

    good = _serve(vlm, body)
    assert batch_sizes == [1] and good.text == _alone(vlm, REQUESTS[0], 4)[0]


def test_failing_generation_fails_its_batch_and_the_loop_goes_on(vlm, monkeypatch):
    real = core.Engine._prefill
    calls = []

    def flaky(engine, rows):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(engine, rows)

    monkeypatch.setattr(core.Engine, "_prefill", flaky)

    async def body(engine):
        first = [engine.submit(Job(r, GenerationParams(max_new_tokens=3))) for r in REQUESTS[:2]]
        for stream in first:
            with pytest.raises(RuntimeError, match="out of memory"):
                await stream.result()
        return await engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=3))).result()

    # the two jobs must share the failing batch: with max_wait_ms=0 a busy machine could let the worker thread take
    # the first one alone (seen once in a full run), so the batch waits for its second job
    assert _serve(vlm, body, max_wait_ms=500).text == _alone(vlm, REQUESTS[0], 3)[0]


def test_stop_drains_submitted_jobs_and_refuses_new_ones(vlm):
    async def main():
        engine = Scheduler(vlm, max_batch_size=2, max_tiles=6)
        await engine.start()
        streams = [engine.submit(Job(r, GenerationParams(max_new_tokens=5))) for r in REQUESTS[:3]]
        await engine.stop()
        with pytest.raises(RuntimeError, match="not running"):
            engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=5)))
        return [s._done.result() for s in streams]  # already resolved: stop() returned after them

    done = asyncio.run(main())
    assert [c.text for c in done] == [_alone(vlm, r, 5)[0] for r in REQUESTS[:3]]


def test_full_queue_is_refused_until_a_slot_frees(vlm):
    async def body(engine):
        streams = [engine.submit(Job(r, GenerationParams(max_new_tokens=2))) for r in REQUESTS[:2]]
        with pytest.raises(QueueFull, match="max_queue=2"):
            engine.submit(Job(REQUESTS[2], GenerationParams(max_new_tokens=2)))
        streams[0].cancel()
        streams.append(engine.submit(Job(REQUESTS[2], GenerationParams(max_new_tokens=2))))
        await streams[2].result()
        await streams[1].result()
        return engine.submit(Job(REQUESTS[3], GenerationParams(max_new_tokens=2)))

    _serve(vlm, body, max_queue=2)


def test_cancelling_the_waiting_task_cancels_the_job(vlm):
    async def body(engine):
        stream = engine.submit(Job(REQUESTS[0], GenerationParams(max_new_tokens=3)))
        waiter = asyncio.ensure_future(stream.result())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return stream.cancelled, engine._pending

    cancelled, pending = _serve(vlm, body)
    assert cancelled and not pending


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"max_new_tokens": 4, "temperature": -1}, "temperature"), ({"max_new_tokens": 4, "top_p": 0}, "top_p"),
    ({"max_new_tokens": 4, "stop": ("",)}, "stop"), ({"max_new_tokens": 4, "stop": ["x"]}, "stop"),
    ({"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens"),
    ({"max_new_tokens": 4, "min_new_tokens": -1}, "min_new_tokens"),
    ({"max_new_tokens": 4, "min_new_tokens": True}, "min_new_tokens"),
])
def test_bad_sampling_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**kwargs)


@pytest.fixture
def ends_first(vlm):
    with end_token_first(vlm) as end:
        yield end


def test_min_tokens_holds_back_an_end_token_that_comes_first(vlm, ends_first):
    request = REQUESTS[1]
    assert _alone(vlm, request, 8)[3] == [ends_first]  # without a minimum the answer ends at once
    expected, _, _, ids = _alone(vlm, request, 8, min_new_tokens=3)
    assert len(ids) == 4 and ends_first not in ids[:3] and ids[3] == ends_first

    async def body(engine):
        plain = await engine.submit(Job(request, GenerationParams(max_new_tokens=8))).result()
        held = engine.submit(Job(request, GenerationParams(max_new_tokens=8, min_new_tokens=3)))
        return plain, await _collect(held)

    plain, (streamed, held) = _serve(vlm, body)
    assert (plain.text, plain.completion_tokens) == ("", 1)
    assert held.text == expected and streamed == expected and held.completion_tokens == 4
    assert held.finish_reason == "stop"


def test_min_tokens_holds_when_sampling_with_top_p(vlm, ends_first):
    """The end token is masked before top-p keeps the likeliest tokens: top-p cannot keep only the masked one."""
    sampling = GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.5, seed=3, min_new_tokens=3)

    async def body(engine):
        return await engine.submit(Job(REQUESTS[1], sampling)).result()

    assert _serve(vlm, body).completion_tokens == 4


def test_rows_with_different_min_tokens_share_a_batch_and_equal_their_lone_runs(vlm, ends_first, batch_sizes):
    jobs = [Job(REQUESTS[0], GenerationParams(max_new_tokens=8)),
            Job(REQUESTS[1], GenerationParams(max_new_tokens=8, min_new_tokens=3))]

    async def body(engine):
        together = await asyncio.gather(*[engine.submit(job).result() for job in jobs])
        return together, [await engine.submit(job).result() for job in jobs]

    together, lone = _serve(vlm, body)
    assert batch_sizes[0] == 2 and together == lone
    assert [c.completion_tokens for c in together] == [1, 4]
    assert together[1].text == _alone(vlm, REQUESTS[1], 8, min_new_tokens=3)[0]


def test_each_job_decodes_the_grounding_tags_its_own_way(vlm, monkeypatch, batch_sizes):
    """Jobs that keep and drop the ``<ref>``/``<box>`` tags share a batch; each streams what it settles on."""
    tokenizer = vlm.tokenizer
    answer = [*tokenizer("<ref>cup</ref><box>[[1, 2, 3, 4]]</box>")["input_ids"],
              tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def fixed(engine, rows, hidden):  # every row generates ``answer``
        for row in rows:
            engine._advance(row, answer[len(row.tokens)])

    monkeypatch.setattr(core.Engine, "_sample", fixed)

    async def body(engine):
        streams = [engine.submit(Job(REQUESTS[1], GenerationParams(max_new_tokens=30, **keep)))
                   for keep in ({"keep_grounding_tokens": True}, {"keep_grounding_tokens": False}, {})]
        return await asyncio.gather(*[_collect(s) for s in streams])

    kept, dropped, default = _serve(vlm, body)
    assert batch_sizes == [3]
    assert kept[0] == kept[1].text == "<ref>cup</ref><box>[[1, 2, 3, 4]]</box>"
    assert dropped[0] == dropped[1].text == default[0] == default[1].text == "cup[[1, 2, 3, 4]]"


@pytest.mark.slow
def test_vlaser_serve_answers_a_short_request_while_a_long_one_streams(tiny_original, tmp_path):
    """Continuous batching end to end: a 4-token request sent once a 256-token stream has produced 8 chunks
    (each at least a token) completes before that stream ends. Ordered by events, not by timing."""
    import http.client
    import json
    import subprocess
    import sys

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "vlaser", "serve", "--model", str(tiny_original), "--port",
                             str(port), "--dtype", "float32", "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)
    events, eight = [], threading.Event()

    def post(body: dict) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        return connection.getresponse()

    def read_long() -> None:
        response = post({"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 256,
                         "min_tokens": 256, "stream": True})
        chunks = 0
        for line in response:
            if line.startswith(b"data: [DONE]"):
                events.append("long done")
            elif line.startswith(b"data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                chunks += 1
                if chunks == 8:
                    eight.set()

    try:
        wait_for_health(proc, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
        reader = threading.Thread(target=read_long)
        reader.start()
        assert eight.wait(120), "the long stream produced fewer than 8 chunks"
        short = json.loads(post({"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}).read())
        events.append("short done")
        reader.join(300)
        assert short["usage"]["completion_tokens"] <= 4
        assert events == ["short done", "long done"]
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()

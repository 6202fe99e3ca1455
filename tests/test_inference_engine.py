"""The inference engine on the tiny model (float32, CPU): every greedy row equals the batch-1 ``model.chat`` loop."""

import pytest
from PIL import Image

from vlaser import VLM
from vlaser.inference import GenerationParams, Prepared
from vlaser.inference.engine import Engine
from vlaser.model.template import build_chat_prompt


@pytest.fixture(scope="module")
def vlm(loaded):
    model, tokenizer = loaded
    return VLM(model, tokenizer)


def _img(color, size):
    return Image.new("RGB", size, color)


QUESTIONS = [  # (image size or None, question): prompts of 0 to 7 tiles
    ((1920, 1080), "What is on the table?"),
    (None, "Hello, who are you?"),
    ((300, 900), "Point to the cup."),
    ((448, 448), "Describe the scene."),
    (None, "Which object is left of the green circle?"),
    ((640, 480), "What colour is it?"),
]


def _prepared(vlm, size, question, max_num=6):
    """What the prepare step makes of one question (the prompt ``model.chat`` builds, and its tiles)."""
    media = vlm.media(None if size is None else _img((size[0] % 255, 90, 30), size), max_num=max_num)
    model = vlm.model
    prompt = build_chat_prompt(question, model.conv_template, media.num_patches, model.num_image_token,
                               system_message=model.system_message)[1]
    return Prepared(prompt, media.pixel_values, media.num_patches, media.sizes), media


def _chat(vlm, media, question, max_new_tokens):
    """The reference: one ``model.chat`` call (batch 1, left padding of nothing)."""
    return vlm.model.chat(vlm.tokenizer, media.pixel_values, question,
                          {"max_new_tokens": max_new_tokens, "do_sample": False},
                          num_patches_list=media.num_patches or None)


@pytest.mark.parametrize("max_batch_size", [1, 3, 8])
def test_greedy_rows_equal_the_batch_1_chat_loop(vlm, max_batch_size):
    engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=max_batch_size)
    pairs = [_prepared(vlm, size, q) for size, q in QUESTIONS]
    budgets = [12, 3, 12, 7, 12, 1]  # rows that stop early beside rows that run on
    done = engine.generate([p for p, _ in pairs], [GenerationParams(max_new_tokens=n) for n in budgets])
    for (_, question), (item, media), n, completion in zip(QUESTIONS, pairs, budgets, done):
        assert completion.text == _chat(vlm, media, question, n)
        assert completion.prompt_tokens == len(vlm.tokenizer(item.prompt)["input_ids"])
        assert 1 <= completion.completion_tokens <= n
        assert completion.truncated == (completion.completion_tokens == n and completion.finish_reason == "length")


def test_params_must_match_the_items():
    with pytest.raises(ValueError, match="2 items but 3 generation parameters"):
        Engine.generate(object.__new__(Engine), [Prepared("a", None, [], [])] * 2, [GenerationParams()] * 3)


def check_join_mid_batch(vlm, engine: Engine) -> None:
    """A short request added while a long one decodes joins at the next step, ends before it, and both answers
    equal the ``model.chat`` loop's."""
    (long_item, long_media), (short_item, short_media) = (_prepared(vlm, s, q) for s, q in QUESTIONS[:2])
    long_row = engine.add(long_item, GenerationParams(max_new_tokens=40, min_new_tokens=40))
    ended = []
    for _ in range(5):
        ended += engine.step()
    short_row = engine.add(short_item, GenerationParams(max_new_tokens=4))
    while engine.running or engine.waiting:
        ended += engine.step()
    assert ended == [short_row, long_row]
    assert short_row.slot != long_row.slot and len(long_row.tokens) == 40
    assert short_row.completion.text == _chat(vlm, short_media, QUESTIONS[1][1], 4)
    reference = vlm.model.chat(vlm.tokenizer, long_media.pixel_values, QUESTIONS[0][1],
                               {"max_new_tokens": 40, "min_new_tokens": 40, "do_sample": False},
                               num_patches_list=long_media.num_patches)
    assert long_row.completion.text == reference


def test_a_row_joining_mid_batch_equals_its_lone_answer_and_finishes_first(vlm):
    check_join_mid_batch(vlm, Engine(vlm.model, vlm.tokenizer, max_batch_size=4))


def test_a_freed_slot_is_reused_and_the_token_budget_holds_rows_back(vlm):
    pairs = [_prepared(vlm, s, q) for s, q in QUESTIONS[:3]]
    items = [p for p, _ in pairs]
    tokens = [len(vlm.tokenizer(item.prompt)["input_ids"]) + 5 for item in items]
    engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=8, max_batch_tokens=max(tokens))
    rows = [engine.add(item, GenerationParams(max_new_tokens=5)) for item in items]
    admitted = []
    while engine.running or engine.waiting:
        engine.step()
        admitted.append(len(engine.running))
    assert max(admitted) == 1  # each row alone fills the budget
    assert [r.completion.text for r in rows] == [_chat(vlm, m, q, 5) for (_, q), (_, m) in zip(QUESTIONS, pairs)]


def test_stop_strings_min_tokens_and_streamed_deltas(vlm):
    item, media = _prepared(vlm, *QUESTIONS[1])
    full = Engine(vlm.model, vlm.tokenizer).generate([item], GenerationParams(max_new_tokens=20))[0]
    text = full.text
    stop = next(text[i:i + 2] for i in range(3, len(text)) if text[i:i + 2].strip() == text[i:i + 2])
    engine = Engine(vlm.model, vlm.tokenizer)
    deltas = []
    row = engine.add(item, GenerationParams(max_new_tokens=20, stop=("NEVER", stop)), on_delta=deltas.append)
    while engine.running or engine.waiting:
        engine.step()
    assert row.completion.text == full.text[: full.text.find(stop)].strip() == "".join(deltas)
    assert row.completion.finish_reason == "stop" and row.completion.completion_tokens < full.completion_tokens


def test_seeded_sampling_repeats_whatever_shares_the_batch(vlm):
    items = [_prepared(vlm, s, q)[0] for s, q in QUESTIONS[:3]]
    sampled = GenerationParams(max_new_tokens=12, temperature=1.5, top_p=0.9, seed=7)
    engine = Engine(vlm.model, vlm.tokenizer)
    alone = engine.generate([items[0]], sampled)[0]
    together = engine.generate(items, [sampled, GenerationParams(max_new_tokens=3), sampled])
    other_seed = engine.generate([items[0]], GenerationParams(max_new_tokens=12, temperature=1.5, seed=8))[0]
    assert together[0] == alone and other_seed.text != alone.text


def test_errors_and_cancels_end_only_their_row(vlm, monkeypatch):
    from vlaser.errors import UserInputError

    item, media = _prepared(vlm, *QUESTIONS[1])
    engine = Engine(vlm.model, vlm.tokenizer)
    with pytest.raises(UserInputError, match="over the model's context"):
        engine.add(item, GenerationParams(max_new_tokens=engine.context))
    gone, stays = (engine.add(item, GenerationParams(max_new_tokens=10)) for _ in range(2))
    engine.step()
    engine.cancel(gone)
    ended = engine.step()
    assert gone in ended and gone.completion is None and len(gone.tokens) == 1
    while engine.running:
        engine.step()
    assert stays.completion.text == _chat(vlm, media, QUESTIONS[1][1], 10)
    failing = engine.add(item, GenerationParams(max_new_tokens=3))
    monkeypatch.setattr(engine, "_decode", lambda rows: (_ for _ in ()).throw(RuntimeError("out of memory")))
    engine.step()
    assert engine.step() == [failing] and isinstance(failing.error, RuntimeError) and not engine.running
    monkeypatch.undo()
    assert engine.generate([item], GenerationParams(max_new_tokens=10))[0] == stays.completion

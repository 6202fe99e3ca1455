"""The inference engine on the tiny model (float32, CPU): every greedy row equals the batch-1 ``model.chat`` loop."""

import pytest
from PIL import Image

from vlaser import VLM
from vlaser.inference import GenerationParams, Prepared
from vlaser.inference.engine import Engine, next_text, settled_prefix
from vlaser.model.chat import answer_decoder
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
    media = vlm.media(None if size is None else _img((size[0] % 255, 90, 30), size), max_tiles=max_num)
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


def _streamed(engine, item, params):
    deltas = []
    row = engine.add(item, params, on_delta=deltas.append)
    while engine.running or engine.waiting:
        engine.step()
    return row, deltas


def _old_deltas(engine, row):
    """What streaming gave before it was incremental: the settled prefix of the whole answer, decoded anew after
    every token (the final step emits the stripped answer)."""
    emitted, deltas = "", []
    for k in range(1, len(row.tokens)):
        text = settled_prefix(row.decode(row.tokens[:k]).lstrip(), (*row.params.stop, engine.end_token))
        if len(text) > len(emitted) and text.startswith(emitted):
            deltas.append(text[len(emitted):])
            emitted = text
    if row.completion.text.startswith(emitted) and len(row.completion.text) > len(emitted):
        deltas.append(row.completion.text[len(emitted):])
    return deltas


def _running_totals(deltas):
    return ["".join(deltas[:k]) for k in range(1, len(deltas) + 1)]


@pytest.mark.parametrize("keep", [False, True])
def test_incremental_text_over_characters_split_across_byte_tokens(vlm, keep):
    tokenizer = vlm.tokenizer
    decode = answer_decoder(tokenizer, vlm.model.conv_template.stop_token, keep)
    text = "Le café 咖啡 est chaud 🙂🚀! <ref>猫</ref><box>[[1, 2, 3, 4]]</box> Ça va? 日本語テキスト 👩‍💻 fin"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in decode([i]) for i in ids)  # some characters' bytes are split over tokens
    prefix_offset = read_offset = 0
    pieces = []
    for k in range(1, len(ids) + 1):
        piece, _, prefix_offset, read_offset = next_text(decode, ids[:k], prefix_offset, read_offset)
        pieces.append(piece)
        assert "\ufffd" not in piece
    assert "".join(pieces) == decode(ids) == (text if keep else text.replace("<ref>", "").replace("</ref>", "")
                                              .replace("<box>", "").replace("</box>", ""))
    assert "" in pieces  # it waited for a character's last byte


def test_a_long_streamed_answer_adds_up_and_streams_as_before(vlm):
    item, media = _prepared(vlm, *QUESTIONS[1])
    engine = Engine(vlm.model, vlm.tokenizer)
    params = GenerationParams(max_new_tokens=240, min_new_tokens=240)
    row, deltas = _streamed(engine, item, params)
    assert len(row.tokens) == 240 and len(row.completion.text) > 200
    assert "".join(deltas) == row.completion.text == engine.generate([item], params)[0].text
    old = _old_deltas(engine, row)
    assert "".join(old) == row.completion.text
    # the same texts streamed, only some later (a window waits while it ends in part of a character)
    assert set(_running_totals(deltas)) <= set(_running_totals(old))
    reference = vlm.model.chat(vlm.tokenizer, media.pixel_values, QUESTIONS[1][1],
                               {"max_new_tokens": 240, "min_new_tokens": 240, "do_sample": False})
    assert row.completion.text == reference


def test_streaming_decodes_o_n_tokens(vlm, monkeypatch):
    """Each step decodes a short window, not the whole answer so far (which made streaming O(n^2))."""
    tokenizer, decoded = vlm.tokenizer, []
    decode = tokenizer.decode
    monkeypatch.setattr(tokenizer, "decode", lambda ids, **kw: decoded.append(len(ids)) or decode(ids, **kw))
    item = _prepared(vlm, *QUESTIONS[1])[0]
    n = 256
    row, deltas = _streamed(Engine(vlm.model, tokenizer), item,
                            GenerationParams(max_new_tokens=n, min_new_tokens=n, stop=("NEVER",)))
    assert len(row.tokens) == n and "".join(deltas) == row.completion.text
    assert sum(decoded) <= 8 * n, (sum(decoded), len(decoded))


def test_a_stop_string_spanning_two_tokens_is_cut(vlm):
    item, _ = _prepared(vlm, *QUESTIONS[1])
    engine = Engine(vlm.model, vlm.tokenizer)
    row, _ = _streamed(engine, item, GenerationParams(max_new_tokens=40))
    text = row.completion.text
    ends = [len(row.decode(row.tokens[:k]).lstrip()) for k in range(1, len(row.tokens))]
    # a stop of the last character of one token and the first two of the next, first found there
    b = next(b for b in ends if 3 < b < len(text) - 2 and text.find(text[b - 1:b + 2]) == b - 1
             and not text[b - 1:b + 2].isspace())
    stop = text[b - 1:b + 2]
    for on_delta in (False, True):
        params = GenerationParams(max_new_tokens=40, stop=(stop,))
        if on_delta:
            cut, deltas = _streamed(engine, item, params)
            assert "".join(deltas) == cut.completion.text
        else:
            cut = engine.add(item, params)
            while engine.running or engine.waiting:
                engine.step()
        assert cut.completion.text == text[:b - 1].strip() and cut.completion.finish_reason == "stop"
        # it ended at the token that completed the stop, which spans more than one token
        done = next(k for k in range(1, len(row.tokens)) if stop in row.decode(row.tokens[:k]))
        assert len(cut.tokens) == done and stop not in row.decode(row.tokens[ends.index(b) + 1:done])


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


def test_add_leaves_the_callers_prepared_item_as_it_was(vlm):
    """Engine.add tokenises the prompt into the row's own copy: the caller's Prepared keeps no engine state, so
    one item can go to two engines (or twice to one) and be compared afterwards."""
    item, media = _prepared(vlm, (640, 480), "What colour is it?")
    engine = Engine(vlm.model, vlm.tokenizer)
    row = engine.add(item, GenerationParams(max_new_tokens=3))
    assert item.input_ids == [] and row.item.input_ids == vlm.tokenizer(item.prompt)["input_ids"]
    while engine.waiting or engine.running:
        engine.step()
    assert item.input_ids == [] and row.completion.text == _chat(vlm, media, "What colour is it?", 3)


def test_next_text_returns_what_its_annotation_says():
    import typing

    decode = "".join  # tokens are characters here
    out = next_text(decode, list("abc"), 0, 2)
    hints = typing.get_type_hints(next_text)["return"]
    assert len(out) == len(typing.get_args(hints)) == 4
    assert all(isinstance(value, kind) for value, kind in zip(out, typing.get_args(hints)))

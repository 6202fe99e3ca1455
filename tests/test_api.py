"""The friendly VLM API: it must build exactly the prompts the original API builds."""

import torch

import vlaser
from media import solid_image
from vlaser.inference import Completion, GenerationParams
from vlaser.inference.engine import Engine

VLM_SETTINGS = {"max_new_tokens": 10}  # the conftest ``vlm``'s; the tests compare against chat(max_new_tokens=10)


def test_ask_equals_model_chat(vlm):
    model, tok = vlm.model, vlm.tokenizer
    image = solid_image((200, 20, 20), (300, 120))
    pv = vlaser.load_image(image, input_size=56, max_num=12)
    assert vlm.ask(image, "What is it?") == model.chat(tok, pv, "What is it?", dict(max_new_tokens=10, do_sample=False))
    assert vlm.ask(None, "Hello") == model.chat(tok, None, "Hello", dict(max_new_tokens=10, do_sample=False))


def test_multi_image_ask_uses_image_prefixes(vlm):
    a, b = solid_image((255, 0, 0)), solid_image((0, 0, 255), (60, 200))
    pa, pb = vlaser.load_image(a, input_size=56), vlaser.load_image(b, input_size=56)
    expected = vlm.model.chat(vlm.tokenizer, torch.cat([pa, pb]), "Image-1: <image>\nImage-2: <image>\nSame?",
                              dict(max_new_tokens=10, do_sample=False), num_patches_list=[len(pa), len(pb)])
    assert vlm.ask([a, b], "Same?") == expected


def test_ask_batch_equals_single_asks(vlm):
    requests = [(solid_image((255, 0, 0)), "Colour?"),
                ([solid_image((0, 255, 0)), solid_image((0, 0, 9))], "Compare these."), (None, "Hi")]
    assert vlm.ask_batch(requests) == [vlm.ask(images, q) for images, q in requests]


def test_session_is_multi_turn_chat(vlm):
    image = solid_image((10, 200, 10))
    session = vlm.session(image)
    first, second = session.ask("What is it?"), session.ask("And the colour?")
    pv = vlaser.load_image(image, input_size=56)
    gen = dict(max_new_tokens=10, do_sample=False)
    r1, hist = vlm.model.chat(vlm.tokenizer, pv, "What is it?", gen, return_history=True)
    r2, hist = vlm.model.chat(vlm.tokenizer, pv, "And the colour?", gen, history=hist, return_history=True)
    assert (first, second) == (r1, r2) and session.history == hist


def test_point_parses_and_scales(vlm, monkeypatch):
    seen = {}

    def fake_generate(engine, items, params):
        seen.update(prompts=[i.prompt for i in items], tiles=items[0].pixel_values.shape[0], params=params,
                    keep=params.keep_grounding_tokens)
        return [Completion("<point>[[500, 250], [100, 900]]</point> <ref>cup</ref><box>[[0, 0, 500, 500]]</box>")]

    monkeypatch.setattr(Engine, "generate", fake_generate)
    answer = vlm.point(solid_image((0, 0, 0), (640, 480)), "Point to the cup.")
    assert answer.points == [(500.0, 250.0), (100.0, 900.0)]
    assert answer.pixels == [(320, 120), (64, 432)]
    assert answer.box_pixels == [(0, 0, 320, 240)]
    assert vlaser.POINT_PROMPT + " Point to the cup.<|im_end|>" in seen["prompts"][0]
    # Vlaser's evaluate_point_*: max_new_tokens=100, min_new_tokens=1, greedy
    assert seen["params"] == GenerationParams(max_new_tokens=100, min_new_tokens=1, keep_grounding_tokens=True)
    assert seen["keep"]


def test_point_uses_at_most_six_tiles(vlm, monkeypatch):
    tiles = {}
    monkeypatch.setattr(Engine, "generate", lambda engine, items, params: tiles.setdefault(
        "n", items[0].pixel_values.shape[0]) and [Completion("")])
    vlm.point(solid_image((0, 0, 0), (1000, 1000)), "Point.")
    assert tiles["n"] == 5  # a 2x2 grid plus the thumbnail; with 12 tiles it would be 3x3 plus the thumbnail


def test_ask_about_a_video(vlm, tmp_path):
    from test_preprocess import _write_video

    path = tmp_path / "v.mp4"
    _write_video(path)
    pv, counts = vlaser.load_video(path, input_size=56, num_segments=4)
    question = "".join(f"Frame-{i + 1}: <image>\n" for i in range(4)) + "What happens?"
    expected = vlm.model.chat(vlm.tokenizer, pv, question, dict(max_new_tokens=10, do_sample=False),
                              num_patches_list=counts)
    assert vlm.ask(None, "What happens?", video=path, num_segments=4) == expected


def test_session_refuses_unknown_keywords_and_runs_on_the_engine(vlm, monkeypatch):
    """Session.ask takes the keywords VLM.ask takes, and generates through the one engine."""
    import pytest

    from vlaser.errors import UserInputError

    session = vlm.session(solid_image((10, 200, 10)))
    with pytest.raises(UserInputError, match="num_beams"):
        session.ask("What is it?", num_beams=2)
    assert session.history is None
    calls = []
    generate = Engine.generate

    def counting(engine, items, params, *args, **kwargs):
        calls.append(params)
        return generate(engine, items, params, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", counting)
    session.ask("What is it?", max_new_tokens=3)
    session.ask("And now?")
    assert [p.max_new_tokens for p in calls] == [3, 10]
    assert [q for q, _ in session.history] == ["<image>\nWhat is it?", "And now?"]


def test_text_only_session_equals_model_chat(vlm):
    session = vlm.session()
    gen = dict(max_new_tokens=10, do_sample=False)
    r1, hist = vlm.model.chat(vlm.tokenizer, None, "Hi", gen, return_history=True)
    r2, hist = vlm.model.chat(vlm.tokenizer, None, "Again", gen, history=hist, return_history=True)
    assert (session.ask("Hi"), session.ask("Again")) == (r1, r2) and session.history == hist

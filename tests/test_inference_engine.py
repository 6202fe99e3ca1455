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

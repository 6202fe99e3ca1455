"""The original chat API on the tiny model: prompts reach generate, histories, batch == single."""

import pytest
import torch
from PIL import Image

import vlaser
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

GEN = dict(max_new_tokens=12, do_sample=False)


def _pixels(n, seed):
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def _captured_prompt(model, tokenizer, monkeypatch, call):
    seen = {}
    real = model.generate

    def spy(input_ids=None, **kw):
        seen["text"] = tokenizer.decode(input_ids[0])
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(model, "generate", spy)
    call()
    return seen["text"]


def test_chat_sends_the_original_prompt(loaded, monkeypatch):
    model, tokenizer = loaded
    text = _captured_prompt(model, tokenizer, monkeypatch,
                            lambda: model.chat(tokenizer, _pixels(2, 0), "Describe the image.", dict(GEN)))
    expected = (f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n<img>"
                + "<IMG_CONTEXT>" * 8 + "</img>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected


def test_seed_eval_example_runs_with_changed_imports(loaded, tmp_path):
    """The seed's eval_example calls, with `from vlaser import load_image` as the only change."""
    model, tokenizer = loaded
    path = tmp_path / "scene.jpg"
    Image.new("RGB", (640, 480), (30, 120, 200)).save(path)
    pixel_values = vlaser.load_image(path, input_size=56, max_num=12).to(torch.float32)
    generation_config = dict(max_new_tokens=8, do_sample=False)
    response = model.chat(tokenizer, pixel_values, "<image>\nPlease describe the image shortly.", generation_config)
    assert isinstance(response, str)
    response, history = model.chat(tokenizer, pixel_values, "<image>\nPlease describe the image in detail.",
                                   generation_config, history=None, return_history=True)
    response, history = model.chat(tokenizer, pixel_values, "Please write a poem according to the image.",
                                   generation_config, history=history, return_history=True)
    assert len(history) == 2 and history[0][0].startswith("<image>\n")
    pv1 = vlaser.load_image(path, input_size=56, max_num=12)
    pv2 = vlaser.load_image(path, input_size=56, max_num=2)
    pixel_values = torch.cat((pv1, pv2), dim=0)
    num_patches_list = [pv1.size(0), pv2.size(0)]
    question = "Image-1: <image>\nImage-2: <image>\nWhat are the similarities and differences between these two images."
    response = model.chat(tokenizer, pixel_values, question, generation_config, num_patches_list=num_patches_list)
    responses = model.batch_chat(tokenizer, pixel_values, num_patches_list=num_patches_list,
                                 questions=["Describe the image in detail."] * 2, generation_config=generation_config)
    assert len(responses) == 2 and response is not None
    assert model.chat(tokenizer, None, "Hello, who are you?", generation_config) is not None


def test_batch_chat_equals_separate_chats(loaded):
    model, tokenizer = loaded
    tiles = [1, 3, 2, 5]
    questions = ["What?", "Describe the image in a long sentence please.", "Point to the red cube.", "Is it left?"]
    pixel_values = torch.cat([_pixels(n, i) for i, n in enumerate(tiles)])
    batched = model.batch_chat(tokenizer, pixel_values, questions, dict(GEN), num_patches_list=tiles)
    singles, start = [], 0
    for n, q in zip(tiles, questions):
        singles.append(model.chat(tokenizer, pixel_values[start:start + n], q, dict(GEN)))
        start += n
    assert batched == singles
    assert len(set(singles)) > 1  # the answers differ, so the comparison means something


def test_batch_chat_pure_text_and_multi_image_questions(loaded):
    model, tokenizer = loaded
    questions = ["Hello", "Tell me about robots and tables."]
    assert model.batch_chat(tokenizer, None, questions, dict(GEN)) == [
        model.chat(tokenizer, None, q, dict(GEN)) for q in questions
    ]
    pv = torch.cat([_pixels(1, 1), _pixels(2, 2), _pixels(1, 3)])
    multi = "Image-1: <image>\nImage-2: <image>\nCompare."
    batched = model.batch_chat(tokenizer, pv, [multi, "One?"], dict(GEN), num_patches_list=[[1, 2], [1]])
    assert batched[0] == model.chat(tokenizer, pv[:3], multi, dict(GEN), num_patches_list=[1, 2])
    assert batched[1] == model.chat(tokenizer, pv[3:], "One?", dict(GEN))


def test_tile_count_mismatches_are_errors(loaded):
    model, tokenizer = loaded
    with pytest.raises(ValueError, match="sums to 3 tiles but pixel_values holds 2"):
        model.chat(tokenizer, _pixels(2, 0), "Hi", dict(GEN), num_patches_list=[3])
    with pytest.raises(ValueError, match="1 '<image>' tag"):
        model.chat(tokenizer, _pixels(2, 0), "<image>\nHi", dict(GEN), num_patches_list=[1, 1])
    with pytest.raises(ValueError, match="num_patches_list"):
        model.batch_chat(tokenizer, _pixels(2, 0), ["a", "b"], dict(GEN))


def test_checkpoint_system_message_is_used(tmp_path, monkeypatch):
    from vlaser.model.tiny import build_tiny_checkpoint

    for layout in ("original", "hf"):
        path = build_tiny_checkpoint(tmp_path / layout, layout=layout, system_message="You are a robot.")
        model, tokenizer = vlaser.load_model(path, dtype=torch.float32, device="cpu")
        assert model.system_message == "You are a robot."
        text = _captured_prompt(model, tokenizer, monkeypatch,
                                lambda m=model, t=tokenizer: m.chat(t, None, "Hi", dict(GEN)))
        assert text.startswith("<|im_start|>system\nYou are a robot.<|im_end|>\n")


def test_mismatched_tokenizer_is_refused(loaded):
    """A tokenizer from another checkpoint (different <IMG_CONTEXT> id) would misplace image features."""
    from transformers import Qwen2Tokenizer

    model, _ = loaded
    other = Qwen2Tokenizer()
    other.add_tokens(["<a>", "<IMG_CONTEXT>"], special_tokens=True)
    assert other.convert_tokens_to_ids("<IMG_CONTEXT>") != model.img_context_token_id
    with pytest.raises(ValueError, match="image_token_id"):
        model.chat(other, None, "Hi", dict(GEN))

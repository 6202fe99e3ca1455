"""Prompt strings for every chat mode, compared with hand-written expectations."""

import pytest
from jinja2.exceptions import TemplateError

from vlaser.model.template import (
    INTERNVL2_5_SYSTEM_MESSAGE,
    Segment,
    build_chat_prompt,
    expand_user_images,
    get_template,
    multi_image_prefix,
    video_prefix,
    with_image_tag,
    with_video_frames,
)

T = get_template("internvl2_5")
SYS = f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n"


def img(n_tiles, per_tile=4):
    return "<img>" + "<IMG_CONTEXT>" * (n_tiles * per_tile) + "</img>"


def test_single_image_gets_image_tag_prepended():
    question, prompt = build_chat_prompt("Describe the image.", T, [2], 4)
    assert question == "<image>\nDescribe the image."
    assert prompt == f"{SYS}<|im_start|>user\n{img(2)}\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"


def test_pure_text():
    _, prompt = build_chat_prompt("Hello", T, [], 4)
    assert prompt == f"{SYS}<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_multi_turn_keeps_history_and_does_not_prepend_again():
    history = [("<image>\nWhat is this?", "A cube.")]
    question, prompt = build_chat_prompt("What colour?", T, [1], 4, history=history)
    assert question == "What colour?"
    assert prompt == (f"{SYS}<|im_start|>user\n{img(1)}\nWhat is this?<|im_end|>\n<|im_start|>assistant\nA cube."
                      "<|im_end|>\n<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n")


def test_multi_image_prompt():
    question = multi_image_prefix(2) + "Compare them."
    assert question == "Image-1: <image>\nImage-2: <image>\nCompare them."
    _, prompt = build_chat_prompt(question, T, [1, 3], 4)
    assert prompt == (f"{SYS}<|im_start|>user\nImage-1: {img(1)}\nImage-2: {img(3)}\nCompare them.<|im_end|>\n"
                      "<|im_start|>assistant\n")


def test_video_prompt():
    question = video_prefix(3) + "What happens?"
    assert question == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nWhat happens?"
    _, prompt = build_chat_prompt(question, T, [1, 1, 1], 256)
    assert prompt.count("<IMG_CONTEXT>") == 768 and prompt.count("Frame-") == 3


def test_checkpoint_system_message_replaces_default():
    _, prompt = build_chat_prompt("Hi", T, [], 4, system_message="You are a robot.")
    assert prompt.startswith("<|im_start|>system\nYou are a robot.<|im_end|>\n<|im_start|>user\nHi")


def test_empty_history_list_does_not_prepend_like_the_original():
    with pytest.raises(ValueError, match="0 '<image>' tag"):
        build_chat_prompt("Describe.", T, [1], 4, history=[])


@pytest.mark.parametrize(("question", "counts"), [("<image>\n<image>\nTwo?", [1]), ("<image>\nOne?", [1, 2])])
def test_tag_image_count_mismatch_is_an_error(question, counts):
    with pytest.raises(ValueError, match="tag"):
        build_chat_prompt(question, T, counts, 4)


def test_unknown_template_lists_supported():
    with pytest.raises(ValueError, match="internvl2_5"):
        get_template("Hermes-3")


def test_special_tokens_tokenise_as_single_ids(loaded):
    _, tokenizer = loaded
    _, prompt = build_chat_prompt("Point to it.", T, [2], 4)
    ids = tokenizer(prompt)["input_ids"]
    vocab = tokenizer.get_vocab()
    assert ids.count(vocab["<IMG_CONTEXT>"]) == 8
    assert ids.count(vocab["<img>"]) == 1 and ids.count(vocab["</img>"]) == 1
    assert ids.count(vocab["<|im_end|>"]) == 2 and ids.count(vocab["<|im_start|>"]) == 3
    assert tokenizer.decode(ids) == prompt


def test_segments_tag_each_piece_with_its_role_and_join_into_the_prompt():
    messages = [("user", "Hi"), ("assistant", "Hello."), ("user", "Bye"), ("assistant", None)]
    segments = T.segments(messages, system_message="Be brief.")
    assert segments == [
        Segment("system", "<|im_start|>system\nBe brief.<|im_end|>\n"),
        Segment("user", "<|im_start|>user\nHi<|im_end|>\n"),
        Segment("assistant", "<|im_start|>assistant\nHello.<|im_end|>\n"),
        Segment("user", "<|im_start|>user\nBye<|im_end|>\n"),
        Segment("assistant", "<|im_start|>assistant\n"),
    ]
    assert "".join(s.text for s in segments) == build_chat_prompt("Bye", T, [], 4, history=[("Hi", "Hello.")],
                                                                  system_message="Be brief.")[1]
    assert T.stop_token == "<|im_end|>" and T.sep == T.stop_token + "\n"


def test_segments_reject_an_unknown_role():
    with pytest.raises(ValueError, match="'tool'"):
        T.segments([("tool", "x")])


def test_training_expands_only_the_user_turns_images():
    segments = T.segments([("user", "<image>\nA?"), ("assistant", "an <image> tag")], system_message="<image>")
    out = expand_user_images(segments, [2], 4)
    assert out[1].text == f"<|im_start|>user\n{img(2)}\nA?<|im_end|>\n"
    assert out[0] == segments[0] and out[2] == segments[2]  # tags outside the user turns stay text
    with pytest.raises(ValueError, match="the user turns have 1 '<image>' tag.* 2 image"):
        expand_user_images(segments, [1, 1], 4)


def test_image_and_video_tags_of_training_records():
    assert with_image_tag("What?") == "<image>\nWhat?"
    assert with_image_tag("What is <image>?") == "What is <image>?"
    assert with_video_frames("<video>\nWhat happens?", 2) == "Frame-1: <image>\nFrame-2: <image>\nWhat happens?"
    with pytest.raises(ValueError, match="needs '<video>"):
        with_video_frames("What happens?", 2)


def test_jinja_renders_the_templates_strings_with_any_system_message(loaded):
    _, tokenizer = loaded
    system = 'Say "hi" \\ don\'t {{ stop }}\n你好'
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
                {"role": "assistant", "content": "No."}, {"role": "user", "content": "Why?"}]
    text = tokenizer.apply_chat_template(messages, chat_template=T.jinja(system), tokenize=False,
                                         add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nImage-1: <IMG_CONTEXT>\n"
                    "Image-2: <IMG_CONTEXT>\nSame?<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n"
                    "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n")
    clip = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    video = tokenizer.apply_chat_template(clip, chat_template=T.jinja(), tokenize=False)
    assert video == f"{SYS}<|im_start|>user\n<video>\n?<|im_end|>\n"
    with pytest.raises(TemplateError, match="user and assistant turns, not tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=T.jinja(), tokenize=False)

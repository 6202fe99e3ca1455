"""Training and inference render one conversation the same way, for random conversations.

A training sample (``SFTDataset``, from a real record with real images or a video) must be the inference
prompt of each turn, tokenised as ``model.chat`` tokenises it, followed by that turn's answer and stop
token, with only the answers and their stop tokens supervised. The chat template written by
``vlaser convert --to hf`` must render, under transformers' ``apply_chat_template``, the prompt
``model.chat`` sends (once ``InternVLProcessor``'s image-token expansion is applied to it).
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install 'vlaser[dev]')")

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.model.constants import IMG_CONTEXT_TOKEN
from vlaser.model.loss import IGNORE_INDEX
from vlaser.model.template import build_chat_prompt, image_tokens, multi_image_prefix, video_prefix

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMAGE_SIZES = [(200, 56), (56, 120), (90, 70)]
MEDIA = ["none", "image", "image-tagged", "image-inline", "images", "video"]

# No "<" or ">" (a random text must not spell a tag) and no control characters. An answer starts with a visible
# character: the original tokenises ``<|im_start|>assistant\n`` and the answer as one piece, so an answer that
# began with a line break would merge with the header's ``\n`` (InternVL's masking has the same limit).
_VISIBLE = st.characters(categories=("L", "N", "P", "S"), exclude_characters="<>")
_TEXT = st.text(st.one_of(_VISIBLE, st.characters(categories=("Zs",)), st.just("\n")), min_size=1, max_size=20)
_ANSWER = st.tuples(_VISIBLE, _TEXT | st.just("")).map("".join)
_SYSTEM = st.none() | st.just("") | _TEXT
_TURNS = st.lists(st.tuples(_TEXT, _ANSWER), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    from test_preprocess import _write_video

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for i, size in enumerate(IMAGE_SIZES):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{i}.png")
    _write_video(root / "clip.mp4", n_frames=12)
    return root


def _record(system, turns, media: str, n_images: int) -> dict:
    """An InternVL-format record, its first question tagged the way a data author writes it for ``media``."""
    first = {"none": "{q}", "image": "{q}", "image-tagged": "<image>\n{q}", "image-inline": "{q} <image>",
             "images": multi_image_prefix(n_images) + "{q}", "video": "<video>\n{q}"}[media]
    conversations = [] if system is None else [{"from": "system", "value": system}]
    for i, (question, answer) in enumerate(turns):
        value = first.replace("{q}", question) if i == 0 else question
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    record = {"conversations": conversations}
    if media.startswith("image"):
        record["image"] = "0.png" if media != "images" else [f"{i}.png" for i in range(n_images)]
    elif media == "video":
        record["video"] = "clip.mp4"
    return record


def _training_item(media_dir: Path, tokenizer, num_image_token: int, record: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        annotation = Path(tmp) / "ann.jsonl"
        annotation.write_text(json.dumps(record) + "\n")
        meta = Path(tmp) / "meta.json"
        meta.write_text(json.dumps({"d": {"root": str(media_dir), "annotation": str(annotation)}}))
        config = DataConfig(num_image_token=num_image_token, force_image_size=56, max_seq_length=1 << 16,
                            dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=4,
                            min_num_frame=1, max_num_frame=4)
        item = SFTDataset(meta, tokenizer, config)[0]
    assert not item["skipped"], item["skipped"]
    return item


def _chat_question(question: str, media: str, n_images: int, n_frames: int) -> str:
    """The first question as a ``model.chat`` user passes it (``chat`` itself prepends a single image's tag)."""
    return {"image-tagged": f"<image>\n{question}", "image-inline": f"{question} <image>",
            "images": multi_image_prefix(n_images) + question, "video": video_prefix(n_frames) + question,
            }.get(media, question)


@PROPERTY
@given(system=_SYSTEM, turns=_TURNS, media=st.sampled_from(MEDIA), n_images=st.integers(2, 3))
def test_training_sample_is_each_chat_prompt_followed_by_its_answer(loaded, media_dir, system, turns, media,
                                                                     n_images):
    model, tokenizer = loaded
    template, k = model.conv_template, model.num_image_token
    item = _training_item(media_dir, tokenizer, k, _record(system, turns, media, n_images))
    ids, labels, tiles = item["input_ids"].tolist(), item["labels"].tolist(), item["tiles"]
    if media == "video":
        assert 1 <= len(tiles) <= 4 and set(tiles) == {1}
    else:
        assert len(tiles) == {"none": 0, "images": n_images}.get(media, 1)
    system_message = model.system_message if system is None else system
    history, supervised = None, set()
    for i, (question, answer) in enumerate(turns):
        asked = _chat_question(question, media, n_images, len(tiles)) if i == 0 else question
        recorded, prompt = build_chat_prompt(asked, template, tiles, k, history=history, system_message=system_message)
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(answer + template.stop_token)["input_ids"]
        start = len(prompt_ids)
        assert ids[:start] == prompt_ids, f"turn {i}: the sample does not start with the chat prompt"
        assert ids[start:start + len(answer_ids)] == answer_ids, f"turn {i}: the answer does not follow the prompt"
        supervised.update(range(start, start + len(answer_ids)))
        history = [*(history or []), (recorded, answer)]
    assert ids == tokenizer(prompt + answer + template.sep)["input_ids"]
    assert labels == [t if j in supervised else IGNORE_INDEX for j, t in enumerate(ids)]


@pytest.fixture(scope="module")
def converted(tiny_hf):
    from transformers import AutoTokenizer

    config = json.loads((tiny_hf / "config.json").read_text())
    return AutoTokenizer.from_pretrained(tiny_hf), config["image_seq_length"]


def _processor_expand(text: str, tiles: list[int], image_seq_length: int) -> str:
    """What ``InternVLProcessor`` does to the rendered text: each ``<IMG_CONTEXT>``, in order, becomes
    ``<img>`` + ``<IMG_CONTEXT>`` x (``image_seq_length`` x the image's tiles) + ``</img>``."""
    head, *rest = text.split(IMG_CONTEXT_TOKEN)
    assert len(rest) == len(tiles), f"{len(rest)} image placeholders for {len(tiles)} images"
    return head + "".join(image_tokens(n, image_seq_length) + part for n, part in zip(tiles, rest))


@PROPERTY
@given(system=_SYSTEM, turns=_TURNS, tiles=st.lists(st.integers(1, 5), max_size=3), as_parts=st.booleans())
def test_converted_chat_template_renders_the_chat_prompt(loaded, converted, system, turns, tiles, as_parts):
    model, _ = loaded
    tokenizer, image_seq_length = converted
    messages = [] if system is None else [{"role": "system", "content": system}]
    system_message = model.system_message if system is None else system
    history = None
    for i, (question, answer) in enumerate(turns):
        pictures = [{"type": "image"}] * len(tiles) if i == 0 else []
        text = [{"type": "text", "text": question}] if as_parts or pictures else question
        messages.append({"role": "user", "content": pictures + text if pictures else text})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        asked = multi_image_prefix(len(tiles)) + question if i == 0 and len(tiles) > 1 else question
        recorded, prompt = build_chat_prompt(asked, model.conv_template, tiles, model.num_image_token,
                                             history=history, system_message=system_message)
        assert _processor_expand(rendered, tiles, image_seq_length) == prompt
        messages.append({"role": "assistant", "content": answer})
        history = [*(history or []), (recorded, answer)]


def test_chat_records_what_build_chat_prompt_renders(loaded, monkeypatch):
    """The property tests use ``build_chat_prompt``; this pins that ``model.chat`` sends exactly its prompt."""
    model, tokenizer = loaded
    sent = []
    monkeypatch.setattr(model, "generate_text", lambda tok, prompts, *a, **kw: sent.extend(prompts) or ["Red."])
    pixels = torch.zeros(3, 3, 56, 56)
    _, history = model.chat(tokenizer, pixels, "What is it?", {}, return_history=True)
    model.chat(tokenizer, pixels, "Colour?", {}, history=history)
    expected_history = [("<image>\nWhat is it?", "Red.")]
    assert history[:1] == expected_history
    assert sent == [build_chat_prompt("What is it?", model.conv_template, [3], model.num_image_token,
                                      system_message=model.system_message)[1],
                    build_chat_prompt("Colour?", model.conv_template, [3], model.num_image_token,
                                      history=expected_history, system_message=model.system_message)[1]]

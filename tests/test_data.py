"""The SFT data pipeline against hand-built expectations from InternVL's rules."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlaser.data.collator import SFTCollator
from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.data.meta import MetaError, load_meta
from vlaser.data.tokenize import IGNORE_INDEX
from vlaser.errors import UserInputError
from vlaser.model.preprocess import dynamic_preprocess
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

SYS = f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n"


@pytest.fixture(scope="module")
def tok(tiny_original):
    from vlaser.model.tokenizer import load_tokenizer

    return load_tokenizer(tiny_original)


def _config(**kw):
    base = dict(num_image_token=4, force_image_size=56, max_seq_length=4096, max_dynamic_patch=6,
                dynamic_image_size=True, use_thumbnail=True)
    base.update(kw)
    return DataConfig(**base)


def _write(tmp_path, lines, name="ds", **entry):
    ann = tmp_path / f"{name}.jsonl"
    ann.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    meta = tmp_path / f"{name}_meta.json"
    meta.write_text(json.dumps({name: {"root": str(tmp_path), "annotation": str(ann), **entry}}))
    return meta


def _img(tmp_path, name, size, color=(200, 30, 30)):
    rng = np.random.default_rng(len(name))
    arr = (np.array(color, dtype=np.uint8) + rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8))
    Image.fromarray(arr).save(tmp_path / name)
    return name


def _expected(tok, pieces_roles):
    """Concatenate separately tokenised turns; labels per the original's masking rule."""
    prefix = len(tok("<|im_start|>assistant\n")["input_ids"])
    ids, labels = [], []
    for text, role in pieces_roles:
        piece = tok(text)["input_ids"]
        ids += piece
        if role == "gpt":
            labels += [IGNORE_INDEX] * prefix + piece[prefix:-1] + [IGNORE_INDEX]
        else:
            labels += [IGNORE_INDEX] * len(piece)
    return ids, labels


def _img_tokens(tiles, per_tile=4):
    return "<img>" + "<IMG_CONTEXT>" * (tiles * per_tile) + "</img>"


def _supervised_text(tok, item):
    return tok.decode([i for i, lab in zip(item["input_ids"].tolist(), item["labels"].tolist()) if lab != IGNORE_INDEX])


def test_single_image_with_prepended_tag(tmp_path, tok):
    _img(tmp_path, "a.png", (200, 56))
    meta = _write(tmp_path, [{"id": "s1", "image": "a.png", "width": 200, "conversations": [
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "Red."}]}])
    item = SFTDataset(meta, tok, _config())[0]
    tiles = len(dynamic_preprocess(Image.open(tmp_path / "a.png"), 1, 6, 56, True))
    assert item["tiles"] == [tiles] and item["pixel_values"].shape == (tiles, 3, 56, 56)
    ids, labels = _expected(tok, [(SYS, "system"),
                                  (f"<|im_start|>user\n{_img_tokens(tiles)}\nWhat colour is it?<|im_end|>\n", "human"),
                                  ("<|im_start|>assistant\nRed.<|im_end|>\n", "gpt")])
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    assert _supervised_text(tok, item) == "Red.<|im_end|>"
    assert item["image_flags"].tolist() == [1] * tiles and item["id"] == "s1" and item["line"] == 1


def test_multi_turn_supervises_every_answer(tmp_path, tok):
    _img(tmp_path, "a.png", (56, 56))
    meta = _write(tmp_path, [{"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cube."},
        {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red"}]}])
    item = SFTDataset(meta, tok, _config())[0]
    ids, labels = _expected(tok, [(SYS, "system"),
                                  (f"<|im_start|>user\n{_img_tokens(1)}\nWhat is it?<|im_end|>\n", "human"),
                                  ("<|im_start|>assistant\nA cube.<|im_end|>\n", "gpt"),
                                  ("<|im_start|>user\nColour?<|im_end|>\n", "human"),
                                  ("<|im_start|>assistant\nRed<|im_end|>\n", "gpt")])
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    assert _supervised_text(tok, item) == "A cube.<|im_end|>Red<|im_end|>"


def test_multi_image_splits_the_tile_budget(tmp_path, tok):
    _img(tmp_path, "a.png", (200, 56))
    _img(tmp_path, "b.png", (56, 120))
    meta = _write(tmp_path, [{"image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nSame?"}, {"from": "gpt", "value": "No."}]}])
    item = SFTDataset(meta, tok, _config(max_dynamic_patch=6))[0]
    expected_tiles = [len(dynamic_preprocess(Image.open(tmp_path / n), 1, 3, 56, True)) for n in ("a.png", "b.png")]
    assert item["tiles"] == expected_tiles and expected_tiles != [
        len(dynamic_preprocess(Image.open(tmp_path / n), 1, 6, 56, True)) for n in ("a.png", "b.png")]
    a, b = (_img_tokens(n) for n in expected_tiles)
    user = f"<|im_start|>user\nImage-1: {a}\nImage-2: {b}\nSame?"
    ids, labels = _expected(tok, [(SYS, "system"), (user + "<|im_end|>\n", "human"),
                                  ("<|im_start|>assistant\nNo.<|im_end|>\n", "gpt")])
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels


def test_pure_text_gets_a_dummy_tile_with_flag_zero(tmp_path, tok):
    meta = _write(tmp_path, [{"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi!"}]}])
    item = SFTDataset(meta, tok, _config())[0]
    assert item["pixel_values"].shape == (1, 3, 56, 56) and item["image_flags"].tolist() == [0]
    assert item["tiles"] == []
    ids, labels = _expected(tok, [(SYS, "system"), ("<|im_start|>user\nHello<|im_end|>\n", "human"),
                                  ("<|im_start|>assistant\nHi!<|im_end|>\n", "gpt")])
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels


def test_system_turn_overrides_the_default(tmp_path, tok):
    meta = _write(tmp_path, [{"conversations": [{"from": "system", "value": "You are a robot."},
                                                {"from": "human", "value": "Go"}, {"from": "gpt", "value": "Ok"}]}])
    item = SFTDataset(meta, tok, _config())[0]
    ids, _ = _expected(tok, [("<|im_start|>system\nYou are a robot.<|im_end|>\n", "system"),
                             ("<|im_start|>user\nGo<|im_end|>\n", "human"),
                             ("<|im_start|>assistant\nOk<|im_end|>\n", "gpt")])
    assert item["input_ids"].tolist() == ids


def test_video_sample_gets_frame_lines(tmp_path, tok):
    from test_preprocess import _write_video

    _write_video(tmp_path / "clip.mp4", n_frames=20)
    meta = _write(tmp_path, [{"video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It brightens."}]}])
    item = SFTDataset(meta, tok, _config(min_num_frame=3, max_num_frame=5))[0]
    n = len(item["tiles"])
    assert 3 <= n <= 5 and item["tiles"] == [1] * n
    text = tok.decode(item["input_ids"].tolist())
    frames = "\n".join(f"Frame-{i + 1}: {_img_tokens(1)}" for i in range(n))
    assert f"<|im_start|>user\n{frames}\nWhat happens?<|im_end|>" in text
    assert _supervised_text(tok, item) == "It brightens.<|im_end|>"


def test_broken_samples_are_skipped_counted_and_named(tmp_path, tok):
    _img(tmp_path, "ok.png", (56, 56))
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    good = {"image": "ok.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    lines = [
        {"image": "missing.png", "conversations": good["conversations"]},
        "{not json",
        {"image": "corrupt.png", "conversations": good["conversations"]},
        {"image": "ok.png", "conversations": [{"from": "human", "value": "<image>\n<image>\nQ"},
                                              {"from": "gpt", "value": "A"}]},
        good,
    ]
    ds = SFTDataset(_write(tmp_path, lines), tok, _config())
    assert len(ds) == 4 and len(ds.load_skips) == 1 and ds.load_skips[0].line == 2
    assert "invalid JSON" in ds.load_skips[0].reason
    item = ds[0]
    assert item["line"] == 5
    reasons = {s.line: s.reason for s in item["skipped"]}
    assert set(reasons) == {1, 3, 4}
    assert "missing.png" in reasons[1] and "corrupt.png" in reasons[3] and "2 '<image>' tag" in reasons[4]


def test_max_seq_length_never_cuts_image_tokens(tmp_path, tok):
    _img(tmp_path, "a.png", (200, 56))
    lines = [{"image": "a.png", "conversations": [{"from": "human", "value": "describe the scene " * 12 + "<image>"},
                                                  {"from": "gpt", "value": "A"}]},
             {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "the blue bowl " * 40}]}]
    full = SFTDataset(_write(tmp_path, lines, name="full"), tok, _config())
    img_start = full[0]["input_ids"].tolist().index(tok.convert_tokens_to_ids("<img>"))
    limit = img_start + 3  # inside the first image's tokens
    assert len(full[1]["input_ids"]) > limit and len(full[0]["input_ids"]) > limit
    ds = SFTDataset(_write(tmp_path, lines, name="cut"), tok, _config(max_seq_length=limit))
    item = ds[0]  # the image sample would be cut inside its image tokens: skipped; the text one is cut in text
    assert item["line"] == 2 and len(item["input_ids"]) == limit
    assert item["input_ids"].tolist() == full[1]["input_ids"].tolist()[:limit]
    assert "cut inside the image tokens" in item["skipped"][0].reason
    short = SFTDataset(_write(tmp_path, lines[1:], name="short"), tok, _config(max_seq_length=10))
    with pytest.raises(UserInputError, match="no supervised"):  # a data problem: one line from the CLI
        short[0]


def test_repeat_time_and_augment(tmp_path, tok):
    _img(tmp_path, "a.png", (120, 56))
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    rows = [{"id": i, "image": "a.png", "conversations": turns} for i in range(4)]
    half = SFTDataset(_write(tmp_path, rows, name="h", repeat_time=0.5), tok, _config())
    assert len(half) == 2 and [half[i]["id"] for i in range(2)] == [0, 1]
    assert len(SFTDataset(_write(tmp_path, rows, name="r", repeat_time=3), tok, _config())) == 12
    plain = SFTDataset(_write(tmp_path, rows, name="p"), tok, _config())[0]["pixel_values"]
    aug_ds = SFTDataset(_write(tmp_path, rows, name="g", data_augment=True), tok, _config())
    augmented = aug_ds[0]["pixel_values"]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    assert torch.equal(aug_ds[0]["pixel_values"], augmented)  # seeded per index: reproducible


def test_meta_errors_name_the_entry(tmp_path):
    bad = tmp_path / "meta.json"
    bad.write_text(json.dumps({"d": {"root": "x", "annotation": "a.json"}}))
    with pytest.raises(MetaError, match="'d'.*jsonl"):
        load_meta(bad)
    bad.write_text(json.dumps({"d": {"annotation": "a.jsonl", "repeat_time": 1.5}}))
    with pytest.raises(MetaError, match="repeat_time"):
        load_meta(bad)


def test_collator_pads_with_pad_id_and_real_mask(tmp_path, tok):
    rows = [{"conversations": [{"from": "human", "value": "Hi" * n}, {"from": "gpt", "value": "!"}]} for n in (1, 9)]
    ds = SFTDataset(_write(tmp_path, rows), tok, _config())
    batch = SFTCollator(tok.pad_token_id)([ds[0], ds[1]])
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(n0, n1))
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (n1 - n0)
    assert (batch["input_ids"][0, n0:] == tok.pad_token_id).all() and (batch["labels"][0, n0:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == 2 and batch["image_flags"].tolist() == [0, 0]


def test_meta_paths_beside_the_meta_file_or_from_the_working_directory(tmp_path, monkeypatch):
    """vlaser writes paths relative to the meta file; InternVL's metas hold paths relative to where it runs."""
    (tmp_path / "metas").mkdir()
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "a.jsonl").write_text("")
    internvl = tmp_path / "metas" / "internvl.json"
    internvl.write_text(json.dumps({"d": {"root": "data/images", "annotation": "data/a.jsonl"}}))
    monkeypatch.chdir(tmp_path)
    spec, = load_meta(internvl)
    assert (spec.root, spec.annotation) == ("data/images", Path("data/a.jsonl"))  # from the working directory
    beside = tmp_path / "data" / "beside.json"
    beside.write_text(json.dumps({"d": {"root": "images", "annotation": "a.jsonl"}}))
    monkeypatch.chdir(tmp_path / "metas")
    spec, = load_meta(beside)
    assert (spec.root, spec.annotation) == (str(tmp_path / "data" / "images"), tmp_path / "data" / "a.jsonl")
    (tmp_path / "metas" / "a.jsonl").write_text("")  # the same name in the working directory: which one?
    with pytest.raises(MetaError, match=r"annotation 'a.jsonl' is both .*data/a.jsonl \(beside the meta file\) and "
                                        r".*metas/a.jsonl \(from the working directory\)"):
        load_meta(beside)

"""vlaser's model (transformers' InternVL + key mapping) against an independent original forward."""

import json
import shutil

import pytest
import torch

import vlaser
from reference_internvl import ReferenceInternVL
from vlaser.model.checkpoint import read_state_dict
from vlaser.model.template import build_chat_prompt, get_template


def _inputs(tokenizer, model, tiles_per_image):
    torch.manual_seed(0)
    pixel_values = torch.randn(sum(tiles_per_image), 3, 56, 56)
    question = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(tiles_per_image))) + "What is on the table?"
    _, prompt = build_chat_prompt(question, get_template("internvl2_5"), tiles_per_image, model.num_image_token)
    return tokenizer(prompt, return_tensors="pt")["input_ids"], pixel_values


def _reference(path, tokenizer):
    config = json.loads((path / "config.json").read_text())
    return ReferenceInternVL(read_state_dict(path), config, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))


@pytest.mark.parametrize("tiles", [[1], [3, 1], [2, 5]])
def test_logits_match_independent_original_forward(tiny_original, loaded, tiles):
    model, tokenizer = loaded
    input_ids, pixel_values = _inputs(tokenizer, model, tiles)
    expected = _reference(tiny_original, tokenizer).logits(input_ids, pixel_values)
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert (input_ids == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum() == 4 * sum(tiles)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_image_features_change_logits(loaded):
    """Guards the test above against passing vacuously: the image must matter."""
    model, tokenizer = loaded
    input_ids, pixel_values = _inputs(tokenizer, model, [2])
    with torch.no_grad():
        a = model(input_ids=input_ids, pixel_values=pixel_values).logits
        b = model(input_ids=input_ids, pixel_values=pixel_values.flip(-1)).logits
    assert (a - b).abs().max() > 1e-3


def test_select_layer_is_honoured(tiny_original, tmp_path):
    ckpt = tmp_path / "select-2"
    shutil.copytree(tiny_original, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["select_layer"] = -2
    (ckpt / "config.json").write_text(json.dumps(config))
    model, tokenizer = vlaser.load_model(ckpt, dtype=torch.float32, device="cpu")
    assert model.config.vision_feature_layer == -2
    input_ids, pixel_values = _inputs(tokenizer, model, [2])
    expected = _reference(ckpt, tokenizer).logits(input_ids, pixel_values)
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_lm_head_is_untied_and_from_checkpoint(tiny_original, loaded):
    model, _ = loaded
    state = read_state_dict(tiny_original)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.lm_head.weight, state["language_model.lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def test_greedy_tokens_match_reference(tiny_original, loaded):
    """Greedy decoding through transformers' generate equals argmax decoding of the reference forward."""
    model, tokenizer = loaded
    input_ids, pixel_values = _inputs(tokenizer, model, [2])
    ref = _reference(tiny_original, tokenizer)
    ids = input_ids
    for _ in range(6):
        nxt = ref.logits(ids, pixel_values)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    out = model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False,
                         eos_token_id=None, min_new_tokens=6)
    assert torch.equal(out, ids)

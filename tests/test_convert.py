"""Layout detection, key/config mapping both ways, and `vlaser convert` on disk."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, InternVLForConditionalGeneration

import vlaser
from vlaser.cli import main
from vlaser.model.checkpoint import CheckpointError, inspect_checkpoint, read_state_dict
from vlaser.model.convert import hf_to_original_state_dict, original_to_hf_state_dict
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE


def _ids(tokenizer, text="<|im_start|>user\nPoint to the red cube.<|im_end|>\n"):
    return tokenizer(text, return_tensors="pt")["input_ids"]


def test_mapping_matches_transformers_keys_and_inverts_exactly(tiny_original, loaded):
    model, _ = loaded
    original = read_state_dict(tiny_original)
    hf = original_to_hf_state_dict(original)
    assert set(hf) == set(model.state_dict())
    assert not any("qkv" in k for k in hf)
    back = hf_to_original_state_dict(hf)
    assert set(back) == set(original)
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key


def test_qkv_split_is_by_row_blocks(tiny_original):
    original = read_state_dict(tiny_original)
    hf = original_to_hf_state_dict(original)
    fused = original["vision_model.encoder.layers.1.attn.qkv.weight"]
    d = fused.shape[1]
    for i, name in enumerate("qkv"):
        split = hf[f"model.vision_tower.encoder.layer.1.attention.{name}_proj.weight"]
        assert torch.equal(split, fused[i * d:(i + 1) * d])


def test_legacy_hf_prefixes_are_understood(tiny_original):
    original = read_state_dict(tiny_original)
    legacy = {}
    for k, v in original_to_hf_state_dict(original).items():
        k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        legacy[k.replace("model.vision_tower.", "vision_tower.").replace("model.multi_modal", "multi_modal")] = v
    back = hf_to_original_state_dict(legacy)
    assert set(back) == set(original)


def test_unknown_tensor_is_an_error_naming_it(tiny_original):
    state = read_state_dict(tiny_original)
    state["vision_model.encoder.layers.0.attn.qkv.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="lora_A"):
        original_to_hf_state_dict(state)


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_cli_round_trip_is_bit_exact(tiny_original, tmp_path):
    hf_dir, back_dir = tmp_path / "hf", tmp_path / "back"
    assert main(["convert", str(tiny_original), str(hf_dir), "--to", "hf"]) == 0
    assert main(["convert", str(hf_dir), str(back_dir), "--to", "original"]) == 0
    src, back = _tensors(tiny_original), _tensors(back_dir)
    assert set(src) == set(back)
    for key in src:
        assert src[key].dtype == back[key].dtype and torch.equal(src[key], back[key]), key
    config = json.loads((back_dir / "config.json").read_text())
    source = json.loads((tiny_original / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling", "hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size",
                "rms_norm_eps", "max_position_embeddings", "torch_dtype", "architectures", "model_type"):
        assert config["llm_config"][key] == source["llm_config"][key], key  # readable by InternVL's own code
    assert "rope_parameters" not in config["llm_config"]
    for key, value in source["vision_config"].items():
        assert config["vision_config"][key] == value, key
    assert config["architectures"] == ["InternVLChatModel"]
    assert config["template"] == "internvl2_5" and config["llm_config"]["tie_word_embeddings"] is False
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert inspect_checkpoint(back_dir).layout == "original"


def test_hf_output_loads_with_plain_transformers(tiny_original, tiny_hf, loaded):
    model, tokenizer = loaded
    plain = InternVLForConditionalGeneration.from_pretrained(tiny_hf)
    assert type(plain) is InternVLForConditionalGeneration
    assert plain.lm_head.weight.data_ptr() != plain.get_input_embeddings().weight.data_ptr()
    ids = _ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == (f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n"
                    "<IMG_CONTEXT>\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert json.loads((tiny_hf / "generation_config.json").read_text())["eos_token_id"] == tok.convert_tokens_to_ids(
        "<|im_end|>")


def test_both_layouts_load_to_the_same_model(tiny_hf, loaded):
    model, tokenizer = loaded
    other, _ = vlaser.load_model(tiny_hf, dtype=torch.float32, device="cpu")
    for (k, a), (k2, b) in zip(sorted(model.state_dict().items()), sorted(other.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k


def test_sharded_output_loads(tiny_original, tmp_path, loaded):
    model, tokenizer = loaded
    out = tmp_path / "sharded"
    vlaser.convert_checkpoint(tiny_original, out, to="original", max_shard_size="200KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    sharded, _ = vlaser.load_model(out, dtype=torch.float32, device="cpu")
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(sharded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_bin_checkpoint_loads(tiny_original, tmp_path, loaded):
    model, tokenizer = loaded
    out = tmp_path / "bin"
    shutil.copytree(tiny_original, out)
    torch.save(read_state_dict(out), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    from_bin, _ = vlaser.load_model(out, dtype=torch.float32, device="cpu")
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(from_bin(input_ids=ids).logits, model(input_ids=ids).logits)


def test_dtype_is_applied(tiny_original):
    model, _ = vlaser.load_model(tiny_original, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16


def _edit_config(src, dst, edit):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_non_qwen2_language_model_is_refused_by_name(tiny_original, tmp_path):
    def edit(c):
        c["llm_config"].update(architectures=["InternLM2ForCausalLM"], model_type="internlm2")

    with pytest.raises(CheckpointError, match="InternLM2ForCausalLM"):
        vlaser.load_model(_edit_config(tiny_original, tmp_path / "ilm", edit))


def test_neither_layout_says_what_it_found(tiny_original, tmp_path):
    def edit(c):
        c.update(architectures=["LlavaForConditionalGeneration"], model_type="llava")

    with pytest.raises(CheckpointError, match="llava.*LlavaForConditionalGeneration"):
        vlaser.load_model(_edit_config(tiny_original, tmp_path / "llava", edit))


def test_missing_pieces_are_named(tmp_path, tiny_original):
    with pytest.raises(CheckpointError, match="not found"):
        vlaser.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        vlaser.load_model(tmp_path / "empty")
    no_weights = tmp_path / "noweights"
    shutil.copytree(tiny_original, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        vlaser.load_model(no_weights)


def test_ps_version_v1_is_refused(tiny_original, tmp_path):
    with pytest.raises(CheckpointError, match="ps_version"):
        vlaser.load_model(_edit_config(tiny_original, tmp_path / "v1", lambda c: c.update(ps_version="v1")))


def test_hf_checkpoint_with_legacy_key_names_loads(tiny_hf, tmp_path, loaded):
    """Hub `-hf` checkpoints store `language_model.model.*`, `vision_tower.*`, `language_model.lm_head`."""
    from safetensors.torch import save_file

    model, tokenizer = loaded
    legacy_dir = tmp_path / "legacy-hf"
    shutil.copytree(tiny_hf, legacy_dir)
    legacy = {}
    for k, v in _tensors(tiny_hf).items():
        k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        legacy[k.replace("model.vision_tower.", "vision_tower.").replace("model.multi_modal", "multi_modal")] = v
    save_file(legacy, legacy_dir / "model.safetensors", metadata={"format": "pt"})
    other, _ = vlaser.load_model(legacy_dir, dtype=torch.float32, device="cpu")
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(other(input_ids=ids).logits, model(input_ids=ids).logits)
    back = tmp_path / "back"
    vlaser.convert_checkpoint(legacy_dir, back, to="original")
    assert set(_tensors(back)) == set(hf_to_original_state_dict(read_state_dict(tiny_hf)))


def test_sharded_bin_checkpoint_loads(tiny_original, tmp_path, loaded):
    model, tokenizer = loaded
    out = tmp_path / "sharded-bin"
    shutil.copytree(tiny_original, out)
    state = read_state_dict(out)
    (out / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in shards.items():
        torch.save({k: state[k] for k in part}, out / name)
        weight_map.update(dict.fromkeys(part, name))
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    from_bin, _ = vlaser.load_model(out, dtype=torch.float32, device="cpu")
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(from_bin(input_ids=ids).logits, model(input_ids=ids).logits)
    (out / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        vlaser.load_model(out)


def test_save_pretrained_writes_the_plain_transformers_class(loaded, tmp_path):
    model, tokenizer = loaded
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert config["internvl_chat"]["template"] == "internvl2_5"
    plain = InternVLForConditionalGeneration.from_pretrained(tmp_path / "saved")
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, model(input_ids=ids).logits)


def _siblings(path):
    """Everything next to ``path`` that is named after it (its temporary or set-aside folders)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_convert_refuses_a_non_empty_destination_without_overwrite(tiny_original, tmp_path, capsys):
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    assert main(["convert", str(tiny_original), str(dst), "--to", "hf"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["notes.txt"] and not _siblings(dst)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(tiny_original), str(empty), "--to", "hf"]) == 0  # an empty folder is fine
    assert inspect_checkpoint(empty).layout == "hf"


def test_convert_overwrite_replaces_the_old_folder(tiny_original, tmp_path):
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "notes.txt").write_text("old")
    assert main(["convert", str(tiny_original), str(dst), "--to", "hf", "--overwrite"]) == 0
    assert not (dst / "notes.txt").exists() and inspect_checkpoint(dst).layout == "hf"
    assert not _siblings(dst)


def _fail_after_the_weights(monkeypatch):
    import vlaser.model.convert as convert

    real = convert.save_weights

    def save_then_fail(state, dst, max_shard_size):
        real(state, dst, max_shard_size)
        assert any(dst.iterdir())  # one file is on disk when the failure comes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "save_weights", save_then_fail)


def test_a_failed_convert_leaves_no_destination_and_no_temporary_folder(tiny_original, tmp_path, monkeypatch):
    _fail_after_the_weights(monkeypatch)
    dst = tmp_path / "out" / "hf"
    with pytest.raises(OSError, match="No space left"):
        vlaser.convert_checkpoint(tiny_original, dst, to="hf")
    assert not dst.exists() and not _siblings(dst)


def test_a_failed_overwrite_keeps_the_old_checkpoint(tiny_original, tmp_path, monkeypatch):
    dst = tmp_path / "orig"
    shutil.copytree(tiny_original, dst)
    before = sorted(p.name for p in dst.iterdir())
    _fail_after_the_weights(monkeypatch)
    with pytest.raises(OSError):
        vlaser.convert_checkpoint(tiny_original.parent / tiny_original.name, dst, to="hf", overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == before and inspect_checkpoint(dst).layout == "original"
    assert not _siblings(dst)


@pytest.mark.slow
def test_a_killed_convert_leaves_no_checkpoint_at_the_destination(tiny_original, tmp_path):
    """SIGKILL after the first file: the destination does not exist; only a hidden temporary folder remains."""
    import subprocess
    import sys

    dst = tmp_path / "hf"
    script = (
        "import os, signal, sys\n"
        "import vlaser.model.convert as c\n"
        "real = c.save_weights\n"
        "def die(state, dst, size):\n"
        "    real(state, dst, size)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.save_weights = die\n"
        "c.convert_checkpoint(sys.argv[1], sys.argv[2], to='hf')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_original), str(dst)], timeout=300)
    assert proc.returncode == -9
    assert not dst.exists()
    leftovers = _siblings(dst)
    assert len(leftovers) == 1 and leftovers[0].startswith(".hf.tmp-")


def test_converted_checkpoint_is_readable_by_others_under_the_umask(tiny_original, tmp_path, umask):
    from conftest import modes

    umask(0o022)
    assert main(["convert", str(tiny_original), str(tmp_path / "hf"), "--to", "hf"]) == 0
    got = modes(tmp_path / "hf")
    assert got["."] == 0o755 and "model.safetensors" in got
    assert got == {name: 0o755 if (tmp_path / "hf" / name).is_dir() else 0o644 for name in got}

"""``vlaser vla convert``: the release's ``step{N}.pt`` (``{"model": PiZero.state_dict()}``) becomes a vlaser policy
whose actions and text logits equal the release's forward (tests/reference_pizero.py) on the same tensors; names
the release does not have, names it needs, shared tensors that disagree and wrong shapes are errors naming them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from reference_pizero import ReferencePiZero, release_state_dict
from vlaser.cli import main
from vlaser.errors import UserInputError
from vlaser.vla.config import preset
from vlaser.vla.policy import VLAPolicy
from vlaser.vla.release import load_release_state, release_norm_stats, split_release_state

TASKS = ["put the spoon on the towel", "pick up the blue bowl"]


@pytest.fixture(scope="module")
def release(tiny_original, tmp_path_factory):
    """``(config.json, VLAConfig, state dict, step.pt)``: a tiny release checkpoint as torch.compile saves it."""
    config = json.loads((tiny_original / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_original))
    tokenizer.add_tokens([f"<a{i}>" for i in range(256)], special_tokens=True)  # as get_internvl3 does
    vla = preset("tiny", num_action_tokens_added=256, proprio_dim=7, action_dim=7)
    state = release_state_dict(config, len(tokenizer), vla, seed=3)
    path = tmp_path_factory.mktemp("release") / "step45390.pt"
    torch.save({"cnt_update": 45390, "model": {"_orig_mod." + k: v for k, v in state.items()}}, path)
    return config, vla, state, path


@pytest.fixture(scope="module")
def converted(release, tiny_original, tmp_path_factory):
    _, vla, _, path = release
    out = tmp_path_factory.mktemp("policy") / "released"
    overrides = json.dumps({"num_action_tokens_added": 256, "proprio_dim": 7, "action_dim": 7})
    assert main(["vla", "convert", str(path), "--vlm", str(tiny_original), "--preset", "tiny",
                 "--config", overrides, "--out", str(out)]) == 0
    return VLAPolicy.from_pretrained(out)


def _batch(policy, n: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [[Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))] for _ in range(n)]
    batch = policy.collator.prefix(images, TASKS[:n])
    cfg = policy.config
    gen = torch.Generator().manual_seed(seed)
    state = torch.rand(n, cfg.proprio_dim, generator=gen) * 2 - 1
    noise = torch.randn(n, cfg.chunk_size, cfg.action_dim, generator=gen)
    return batch, state, noise


def _reference(release, policy) -> ReferencePiZero:
    config, vla, state, _ = release
    tok = policy.tokenizer
    return ReferencePiZero(state, config, vla, tok.convert_tokens_to_ids("<IMG_CONTEXT>"), tok.pad_token_id)


def test_converted_actions_equal_the_release_forward(release, converted):
    batch, state, noise = _batch(converted)
    want = _reference(release, converted).sample(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                                 state, noise)
    for use_cache in (True, False):
        got = converted.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                             state, noise=noise, use_cache=use_cache)
        assert (got - want).abs().max().item() <= 1e-5
    assert want.abs().max().item() > 1e-2  # not a trivially zero chunk


def test_converted_text_head_equals_the_release(release, converted):
    """The VLM's last layer after attention, final norm and LM head are unused by actions: the text path checks them."""
    batch, _, _ = _batch(converted, n=1)
    reference = _reference(release, converted)
    embeds = reference.embed(batch["input_ids"], batch["pixel_values"])[:, :40]
    want = reference.text_logits(embeds)
    vlm = converted.model.vlm
    with torch.no_grad():
        hidden = vlm.model.language_model(inputs_embeds=embeds, position_ids=torch.arange(40)[None]).last_hidden_state
        got = vlm.lm_head(hidden)
    assert (got - want).abs().max().item() <= 1e-4
    assert converted.model.embed_prefix(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).sub(
        reference.embed(batch["input_ids"], batch["pixel_values"])).abs().max().item() <= 1e-5


def test_a_wrong_time_period_changes_the_actions(release, converted):
    """The converted actions depend on time_max_period (the release trains with 100): a 10000 period differs."""
    batch, state, noise = _batch(converted)
    base = converted.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], state,
                                          noise=noise)
    converted.model.config.time_max_period = 10000.0
    try:
        other = converted.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                               state, noise=noise)
    finally:
        converted.model.config.time_max_period = 100.0
    assert (other - base).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def fresh(release, tiny_original):
    return VLAPolicy.from_vlm(tiny_original, release[1])


def test_unknown_names_are_errors_naming_them(release, fresh):
    state = dict(release[2])
    state["vision_tower1.vision_model.embeddings.class_embedding"] = torch.zeros(1)  # DEBUG_IMGFEAT's extra tower
    state["multi_modal_projector1.3.weight"] = torch.zeros(1)
    with pytest.raises(UserInputError, match=r"2 tensor name\(s\) the release's PiZero does not have: "
                                             r"multi_modal_projector1.3.weight, vision_tower1"):
        load_release_state(fresh, state)
    state = dict(release[2])
    state["joint_model.mixtures.vlm.layers.0.self_attn.q_norm.weight"] = torch.zeros(1)  # Qwen3's, not Qwen2's
    with pytest.raises(UserInputError, match=r"1 tensor\(s\) with no place in the policy.*: "
                                             r"joint_model.mixtures.vlm.layers.0.self_attn.q_norm.weight$"):
        load_release_state(fresh, state)


def test_missing_names_are_errors_naming_them(release, fresh):
    dropped = ("action_decoder.bias", "layers.1.mlp.up_proj.weight")
    state = {k: v for k, v in release[2].items() if not k.endswith(dropped)}
    with pytest.raises(UserInputError, match=r"missing 3 tensor\(s\): action_decoder.bias, "
                                             r"joint_model.mixtures.action.layers.1.mlp.up_proj.weight, "
                                             r"joint_model.mixtures.vlm.layers.1.mlp.up_proj.weight"):
        load_release_state(fresh, state)


def test_shared_tensors_that_differ_are_errors(release, fresh):
    state = dict(release[2])
    key = "joint_model.mixtures.proprio.layers.0.mlp.down_proj.weight"
    state[key] = state[key] + 1
    with pytest.raises(UserInputError, match="differ: joint_model.mixtures.proprio.layers.0.mlp.down_proj.weight != "
                                             "joint_model.mixtures.action.layers.0.mlp.down_proj.weight"):
        split_release_state(state)


def test_wrong_shapes_name_the_tensor(release, tiny_original, tmp_path, capsys):
    """A preset whose proprio size differs from the checkpoint's fails on the CLI with the tensor's name."""
    code = main(["vla", "convert", str(release[3]), "--vlm", str(tiny_original), "--preset", "tiny",
                 "--config", '{"num_action_tokens_added": 256, "action_dim": 7}', "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2
    assert "proprio_encoder.weight (32, 7) (the policy needs (32, 4))" in err
    assert not (tmp_path / "p").exists()


def test_release_statistics_become_the_normaliser(tmp_path):
    stats = {"action": {"p01": [-1.0, 0.0], "p99": [1.0, 4.0], "mean": [0, 0], "std": [1, 1]},
             "proprio": {"p01": [0.0, 0.0, 0.0], "p99": [2.0, 2.0, 1.0]}, "num_transitions": 10}
    path = tmp_path / "bridge_statistics.json"
    path.write_text(json.dumps(stats))
    from vlaser.vla.data import Normalizer

    norm = Normalizer.from_json(release_norm_stats(path))
    assert np.allclose(norm.normalize("observation.state", np.array([2.0, 1.0, 0.0])), [1.0, 0.0, -1.0])
    assert np.allclose(norm.normalize("action", np.array([0.0, 0.7])), [0.0, 0.7])  # the gripper passes through
    path.write_text(json.dumps({"action": stats["action"]}))
    with pytest.raises(UserInputError, match="bridge_statistics.json: not the release's dataset statistics"):
        release_norm_stats(path)


def test_bfloat16_checkpoints_load_exactly(release, fresh):
    """The release trains and saves in bfloat16; a float32 policy holds those values exactly."""
    state = {k: v.bfloat16() for k, v in release[2].items()}
    load_release_state(fresh, state)
    expert, vlm = fresh.model.expert.state_dict(), fresh.model.vlm.state_dict()
    assert torch.equal(expert["layers.1.self_attn.k_proj.bias"],
                       state["joint_model.mixtures.action.layers.1.self_attn.k_proj.bias"].float())
    assert torch.equal(vlm["model.language_model.embed_tokens.weight"], state["embed_tokens.weight"].float())
    assert expert["action_decoder.weight"].dtype == torch.float32


def test_a_file_that_is_not_a_release_checkpoint_is_named(tiny_original, tmp_path, capsys):
    path = tmp_path / "step1.pt"
    torch.save({"state_dict": {}}, path)
    assert main(["vla", "convert", str(path), "--vlm", str(tiny_original), "--preset", "tiny",
                 "--out", str(tmp_path / "p")]) == 2
    assert f"{path}: not a release checkpoint" in capsys.readouterr().err
    path.write_bytes(b"not a pickle")
    assert main(["vla", "convert", str(path), "--vlm", str(tiny_original), "--preset", "tiny",
                 "--out", str(tmp_path / "p")]) == 2
    assert f"{path}: cannot read a release checkpoint" in capsys.readouterr().err

"""`vlaser train` on the tiny model: learning, freezing, LoRA, per-module rates, saving, resuming, DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

import vlaser
from vlaser.cli import main
from vlaser.model.checkpoint import inspect_checkpoint, read_state_dict
from vlaser.model.convert import hf_to_original_state_dict
from vlaser.train.sft import train

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}


def colour_data(tmp_path, n_text=1):
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (80, 56), rgb).save(tmp_path / f"{name}.png")
        rows.append({"id": f"img-{i}", "image": f"{name}.png", "conversations": [
            {"from": "human", "value": "What colour is the image?"}, {"from": "gpt", "value": f"It is {name}."}]})
    for i in range(n_text):
        rows.append({"id": f"txt-{i}", "conversations": [{"from": "human", "value": f"Say hello {i}"},
                                                        {"from": "gpt", "value": "hello"}]})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"colours": {"root": str(tmp_path), "annotation": str(tmp_path / "data.jsonl")}}))
    return meta


def flags(model, meta, out, *extra):
    return ["--model_name_or_path", str(model), "--meta_path", str(meta), "--output_dir", str(out),
            "--conv_style", "internvl2_5", "--force_image_size", "56", "--max_dynamic_patch", "4",
            "--dynamic_image_size", "True", "--use_thumbnail", "True", "--per_device_train_batch_size", "5",
            "--learning_rate", "2e-3", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--use_cpu", "True", "--seed", "0", "--dataloader_num_workers", "0", "--disable_tqdm", "True", *extra]


def losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow  # 120 training steps: the longest test of the fast tier (31 s of 480 on a busy 2-core machine)
def test_tiny_model_overfits_and_repeats_answers(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "120", "--warmup_steps", "0.05",
                      "--lr_scheduler_type", "cosine", "--grad_checkpoint", "False"))
    curve = losses(out)
    assert curve[0] / min(curve[-5:]) >= 10, curve
    assert inspect_checkpoint(out).layout == "original"  # saved in the layout it started from
    model, tok = vlaser.load_model(out, dtype=torch.float32, device="cpu")
    for name, rgb in COLOURS.items():
        pv = vlaser.load_image(Image.new("RGB", (80, 56), rgb), input_size=56, max_num=4)
        answer = model.chat(tok, pv, "What colour is the image?", dict(max_new_tokens=20, do_sample=False))
        assert answer == f"It is {name}.", (name, answer)


class LayerCalls(TrainerCallback):
    """Counts how often each language-model decoder layer runs in training (twice when recomputed). The hook
    sits on the layer's first norm: transformers checkpoints ``forward``, so the layer's own hooks run once."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from vlaser.train.trainer import decoder_layers
        self.calls = [0] * len(decoder_layers(model))
        for i, layer in enumerate(decoder_layers(model)):
            layer.input_layernorm.register_forward_pre_hook(lambda *_, i=i: self.calls.__setitem__(i,
                                                                                                  self.calls[i] + 1))


@pytest.mark.parametrize("extra, calls", [((), [2, 2]), (("--grad_checkpoint", "False"), [1, 1]),
                                          (("--grad_checkpoint_every", "2"), [2, 1])])
def test_grad_checkpoint_recomputes_the_language_model_layers(tiny_original, tmp_path, extra, calls):
    """InternVL's ``--grad_checkpoint`` (on by default) really recomputes in backward: transformers 5 ignores
    ``gradient_checkpointing`` set on TrainingArguments after they are built, which once left it off."""
    counter = LayerCalls()
    train(flags(tiny_original, colour_data(tmp_path), tmp_path / "out", "--max_steps", "1", *extra),
          callbacks=[counter])
    assert counter.calls == calls


def test_freezing_and_per_module_rates(tiny_original, tmp_path, monkeypatch):
    from vlaser.train import trainer as trainer_module

    seen = {}
    original_create = trainer_module.SFTTrainer.create_optimizer

    def spy(self, model=None):
        opt = original_create(self, model)
        seen["lrs"] = sorted({g["lr"] for g in opt.param_groups})
        return opt

    monkeypatch.setattr(trainer_module.SFTTrainer, "create_optimizer", spy)
    meta = colour_data(tmp_path)
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "3", "--freeze_backbone", "True",
                      "--mlp_lr", "5e-4", "--save_format", "hf"))
    before = read_state_dict(tiny_original)
    after = hf_to_original_state_dict(load_file(out / "model.safetensors"))
    vision = [k for k in before if k.startswith("vision_model.")]
    assert vision and all(torch.equal(after[k], before[k]) for k in vision), "the frozen vision tower changed"
    assert not torch.equal(after["mlp1.1.weight"], before["mlp1.1.weight"])
    assert not torch.equal(after["language_model.lm_head.weight"], before["language_model.lm_head.weight"])
    assert seen["lrs"] == [5e-4, 2e-3]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["InternVLForConditionalGeneration"]


def test_frozen_vision_tower_is_bit_identical(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "3", "--freeze_backbone", "True",
                      "--freeze_llm", "True"))
    before, after = read_state_dict(tiny_original), read_state_dict(out)
    for key, tensor in before.items():
        changed = not torch.equal(after[key], tensor)
        assert changed == key.startswith("mlp1."), key


def test_lora_trains_adapters_and_saves_merged(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "4", "--use_llm_lora", "4",
                      "--use_backbone_lora", "2", "--freeze_mlp", "True"))
    before, after = read_state_dict(tiny_original), read_state_dict(out)
    assert set(before) == set(after), "LoRA weights must be merged, not saved separately"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("language_model.model.layers.") and "proj" in k for k in changed)
    assert any(k.startswith("vision_model.encoder.layers.") for k in changed)
    assert not any(k.startswith("mlp1.") or "embed_tokens" in k or "norm" in k for k in changed), changed


def test_resume_continues_the_same_curve(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    common = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--lr_scheduler_type", "linear"]
    full = train(flags(tiny_original, meta, tmp_path / "full", *common))  # its checkpoint-4 is the "kill"
    resumed = train(flags(tiny_original, meta, tmp_path / "resumed", *common, "--resume_from_checkpoint",
                          str(full / "checkpoint-4")))
    assert losses(full)[4:] == pytest.approx(losses(resumed)[-4:], abs=1e-6)


def test_legacy_flags_and_config_file(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in {
        "model_name_or_path": tiny_original, "meta_path": meta, "output_dir": tmp_path / "out",
        "force_image_size": 56, "max_dynamic_patch": 2, "dynamic_image_size": True, "per_device_train_batch_size": 5,
        "max_steps": 2, "report_to": "none", "use_cpu": True, "save_strategy": "no"}.items()) + "\n")
    assert main(["train", str(config)]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    out = train(flags(tiny_original, meta, tmp_path / "legacy", "--max_steps", "2", "--evaluation_strategy", "no",
                      "--warmup_ratio", "0.03", "--overwrite_output_dir", "True", "--group_by_length", "True",
                      "--do_train", "True", "--use_fast_tokenizer", "False", "--drop_path_rate", "0.0"))
    assert losses(out)


def test_bad_flags_are_reported_together(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    with pytest.raises(ValueError, match="(?s)ps_version.*normalize_type"):
        train(flags(tiny_original, meta, tmp_path / "o", "--ps_version", "v1", "--normalize_type", "clip"))
    with pytest.raises(ValueError, match="force_image_size 448"):
        train(flags(tiny_original, meta, tmp_path / "o", "--force_image_size", "448", "--max_steps", "1"))


def test_skipped_samples_are_counted_in_the_log(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write("{broken json\n")
        f.write(json.dumps({"image": "missing.png", "conversations": [{"from": "human", "value": "Q"},
                                                                      {"from": "gpt", "value": "A"}]}) + "\n")
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "3"))
    state = json.loads((out / "trainer_state.json").read_text())
    counts = [e["skipped_samples"] for e in state["log_history"] if "skipped_samples" in e]
    assert counts[0] >= 1 and counts[-1] == 2  # the bad JSON line at once, the missing image when drawn (once)


@pytest.mark.slow
def test_two_processes_match_one(tiny_original, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with the same global batch gives the same loss curve."""
    meta = colour_data(tmp_path, n_text=4)
    common = ["--max_steps", "4", "--loss_reduction", "sample", "--grad_checkpoint", "False"]
    single = train(flags(tiny_original, meta, tmp_path / "one", *common, "--per_device_train_batch_size", "4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlaser", "train", *flags(tiny_original, meta, tmp_path / "two", *common,
                                           "--per_device_train_batch_size", "2", "--ddp_backend", "gloo")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(single), abs=1e-4)


def test_data_resampling_draws_datasets_by_sqrt_size(tiny_original, tmp_path):
    from vlaser.data.dataset import DataConfig, SFTDataset
    from vlaser.data.packing import PackedSFTDataset
    from vlaser.model.tokenizer import load_tokenizer

    meta = {}
    for name, n in (("small", 4), ("large", 36)):
        rows = [{"conversations": [{"from": "human", "value": f"{name} {i}"}, {"from": "gpt", "value": "ok"}]}
                for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        meta[name] = {"root": str(tmp_path), "annotation": str(tmp_path / f"{name}.jsonl")}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    ds = SFTDataset(tmp_path / "meta.json", load_tokenizer(tiny_original), DataConfig(num_image_token=4,
                                                                                      force_image_size=56))
    weights = ds.resampling_weights()
    share = {name: sum(w for w, r in zip(weights, ds.records) if r.spec.name == name) for name in ("small", "large")}
    assert share["large"] / share["small"] == pytest.approx(3.0)  # sqrt(36) / sqrt(4)
    packer = PackedSFTDataset(ds, max_packed_tokens=4096, num_images_expected=40, weights=weights)
    drawn = [n for pack in packer._epoch(0, []) for n in pack["sample_lengths"]]
    assert len(drawn) == len(ds)
    out = train(flags(tiny_original, tmp_path / "meta.json", tmp_path / "out", "--max_steps", "3",
                      "--use_data_resampling", "True"))
    assert len(losses(out)) == 3


def test_inputs_and_output_are_checked_before_the_weights_load(tiny_original, tmp_path, monkeypatch, capsys):
    import vlaser.train.sft as sft

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the inputs were checked")

    monkeypatch.setattr(sft, "load_model", no_weights)
    meta = colour_data(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": str(tmp_path / "gone.jsonl")}}))
    (tmp_path / "a_file").write_text("x")
    for meta_path, out, message in (
            (tmp_path / "missing.json", tmp_path / "o", f"cannot read meta file {tmp_path / 'missing.json'}"),
            (broken, tmp_path / "o", f"cannot read meta file {broken}"),
            (stray, tmp_path / "o", f"dataset 'd': annotation file not found: {tmp_path / 'gone.jsonl'}"),
            (meta, tmp_path / "a_file", f"--output_dir {tmp_path / 'a_file'}: exists and is not a folder")):
        assert main(["train", *flags(tiny_original, meta_path, out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vlaser train: error: ") and message in err[0], err


def test_train_argument_errors_are_one_line_naming_train_and_the_flag(tiny_original, tmp_path, capsys):
    meta = colour_data(tmp_path)
    for extra, message in ((["--num_train_epochs", "abc"], "argument --num_train_epochs"),
                           (["--ps_version", "v1", "--pad2square", "True"], "--ps_version: only v2")):
        assert main(["train", *flags(tiny_original, meta, tmp_path / "o", *extra)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vlaser train: error: ") and message in err[0], err
        assert "--pad2square" in err[0] or extra[0] == "--num_train_epochs"


@pytest.mark.slow
def test_trained_checkpoints_follow_the_umask(tiny_original, tmp_path, umask):
    from conftest import modes

    umask(0o022)
    meta = colour_data(tmp_path)
    out = train(flags(tiny_original, meta, tmp_path / "out", "--max_steps", "2", "--save_strategy", "steps",
                      "--save_steps", "2"))
    got = modes(out)
    assert {"model.safetensors", "checkpoint-2/model.safetensors", "config.json"} <= set(got)
    assert got == {name: 0o755 if (out / name).is_dir() else 0o644 for name in got}


@pytest.mark.parametrize(("optim", "device", "fused"), [
    ("adamw_torch", "cuda", True), ("adamw_torch", "cpu", None), ("adamw_torch_fused", "cpu", True),
    ("sgd", "cuda", None)])
def test_adamw_is_fused_on_cuda(tmp_path, monkeypatch, optim, device, fused):
    from transformers import TrainingArguments

    from vlaser.train.trainer import SFTTrainer

    monkeypatch.setattr(TrainingArguments, "device", property(lambda self: torch.device(device)))
    args = TrainingArguments(output_dir=str(tmp_path), optim=optim, report_to=[])
    _, kwargs = SFTTrainer.get_optimizer_cls_and_kwargs(args)
    assert kwargs.get("fused") is fused

"""The distributed engines on the CPU (gloo): two processes train as one with the same global batch, and the
checkpoint they save holds the same weights.

transformers/accelerate's FSDP does not run on a CPU, and says nothing: accelerate's ``AcceleratorState`` makes
the run FSDP only for GPU-like distributed types, so with ``--use_cpu`` (MULTI_CPU) the FSDP plugin is dropped and
the Trainer wraps the model in DDP (its log shows DDP's ``find_unused_parameters`` warning). ``vlaser train``
refuses ``--fsdp`` there by name. So the checks here are: ``vlaser train`` under torchrun with DDP (what the
Trainer runs on a CPU), and torch's FSDP2 (``fully_shard`` on the layer classes of the shipped
``recipes/fsdp/fsdp_config.json``, full state gathered with ``get_model_state_dict``) driving vlaser's model,
data, loss and ``save_checkpoint`` (tests/fsdp2_train.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlaser
from test_train import colour_data, flags, losses
from vlaser.errors import UserInputError
from vlaser.train.args import parse_args
from vlaser.train.saving import save_checkpoint
from vlaser.train.sft import train

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "recipes" / "fsdp" / "fsdp_config.json"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _logits(checkpoint: Path) -> torch.Tensor:
    """The logits of one image question under the checkpoint's weights (loaded as a user loads them)."""
    model, tok = vlaser.load_model(checkpoint, dtype=torch.float32, device="cpu")
    pixels = vlaser.load_image(Image.new("RGB", (80, 56), (230, 20, 20)), input_size=56, max_num=4)
    ids = tok("What colour is the image?", return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.full((1, model.num_image_token * pixels.shape[0]), model.config.image_token_id), ids], 1)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, image_flags=torch.ones(pixels.shape[0])).logits


def test_shipped_fsdp_config_wraps_the_model_layers(tiny_original, tmp_path):
    """The config parses into FSDP2 with full-state saves, and its wrap classes are the model's layer classes."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard", fsdp_config=str(FSDP_CONFIG))
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["state_dict_type"] == "FULL_STATE_DICT"
    model, _ = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    classes = {type(m).__name__ for m in model.modules()}
    assert set(plugin["transformer_cls_names_to_wrap"].split(",")) <= classes


def test_fsdp_on_the_cpu_is_refused_by_name(tiny_original, tmp_path):
    meta = colour_data(tmp_path)
    argv = flags(tiny_original, meta, tmp_path / "out", "--fsdp", "full_shard", "--fsdp_config", str(FSDP_CONFIG))
    with pytest.raises(UserInputError, match="--fsdp: accelerate shards with FSDP on GPUs only"):
        parse_args(argv)


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_a_gathered_state_of_views_is_saved(loaded, tmp_path, layout):
    """FSDP's gathered full state holds views of padded buffers (a first dimension that does not divide among the
    processes); the save writes them as the tensors they show."""
    model, tok = loaded
    state = {k: torch.cat([v, v])[: v.shape[0]] if v.ndim else v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(model, tok, tmp_path / "out", layout=layout, state_dict=state)
    reloaded, _ = vlaser.load_model(tmp_path / "out", dtype=torch.float32, device="cpu")
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in reloaded.state_dict().items())


@pytest.mark.slow
def test_two_ddp_processes_train_and_save_as_one(tiny_original, tmp_path):
    """``vlaser train`` under torchrun (2 processes, gloo): per-step losses within 1e-5 of one process with the same
    global batch, and the saved checkpoints give the same logits."""
    meta = colour_data(tmp_path, n_text=4)
    common = ["--max_steps", "3", "--loss_reduction", "sample", "--grad_checkpoint", "False"]
    one = train(flags(tiny_original, meta, tmp_path / "one", *common, "--per_device_train_batch_size", "4"))
    _run([*TORCHRUN, "-m", "vlaser", "train", *flags(tiny_original, meta, tmp_path / "two", *common,
                                                     "--per_device_train_batch_size", "2", "--ddp_backend", "gloo")])
    assert losses(tmp_path / "two") == pytest.approx(losses(one), abs=1e-5)
    torch.testing.assert_close(_logits(tmp_path / "two"), _logits(one), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_fsdp2_processes_train_and_save_as_one(tiny_original, tmp_path):
    """FSDP2 over 2 processes (gloo) with the shipped config's wrap classes: the losses of one process within 1e-5,
    and the gathered full state, saved and loaded, gives the same logits."""
    meta = colour_data(tmp_path, n_text=4)
    driver = [str(Path(__file__).with_name("fsdp2_train.py"))]
    argv = ["--", *flags(tiny_original, meta, tmp_path / "unused", "--loss_reduction", "sample")]
    _run([sys.executable, *driver, str(tmp_path / "one"), "4", "3", str(FSDP_CONFIG), *argv])
    _run([*TORCHRUN, *driver, str(tmp_path / "two"), "4", "3", str(FSDP_CONFIG), *argv])
    one, two = (json.loads((tmp_path / name / "losses.json").read_text()) for name in ("one", "two"))
    assert two == pytest.approx(one, abs=1e-5) and one[0] > one[-1]  # it learns, and identically
    torch.testing.assert_close(_logits(tmp_path / "two"), _logits(tmp_path / "one"), atol=1e-5, rtol=0)

"""Checkpoint folders appear whole or not at all (``vlaser.model.atomic``) and the final save of training uses it."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlaser.errors import UserInputError
from vlaser.model.atomic import atomic_directory, staged_checkpoint
from vlaser.model.checkpoint import inspect_checkpoint


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_directory_appears_only_when_complete(tmp_path):
    dst = tmp_path / "ckpt"
    with atomic_directory(dst) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not dst.exists() and tmp.parent == tmp_path and tmp.name.startswith(".ckpt.tmp-")
    assert (dst / "config.json").is_file() and not _hidden(tmp_path)


def test_atomic_directory_refuses_a_file_and_a_non_empty_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="not a folder"), atomic_directory(tmp_path / "file", overwrite=True):
        pass
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(UserInputError, match="--overwrite"), atomic_directory(tmp_path / "full"):
        pass
    assert not _hidden(tmp_path)


def test_staged_checkpoint_replaces_an_older_one_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "trainer_state.json").write_text("{}")
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json"):
        (out / name).write_text("old")
    with staged_checkpoint(out) as staged:
        (staged / "model.safetensors").write_text("new")
        (staged / "config.json").write_text('{"new": true}')
        assert (out / "config.json").read_text() == "old"  # nothing moves before the block completes
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-10", "config.json", "model.safetensors",
                                                     "trainer_state.json"]
    assert json.loads((out / "config.json").read_text()) == {"new": True}


def test_a_failed_staged_save_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(OSError), staged_checkpoint(out) as staged:
        (staged / "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"] and (out / "config.json").read_text() == "old"


class _FakeTrainer:
    """The parts of a transformers Trainer ``save_final`` uses, for one process."""

    is_deepspeed_enabled = is_fsdp_enabled = False

    def __init__(self, model):
        self.model, self.waited = model, 0
        self.accelerator = SimpleNamespace(wait_for_everyone=self._wait)

    def _wait(self):
        self.waited += 1

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_save_final_publishes_a_whole_checkpoint(loaded, tiny_original, tmp_path, layout):
    from vlaser.train.saving import save_final

    model, tokenizer = loaded
    trainer = _FakeTrainer(model)
    out = tmp_path / "run"
    (out / "checkpoint-1").mkdir(parents=True)
    save_final(trainer, tokenizer, out, layout=layout, source=tiny_original)
    assert inspect_checkpoint(out).layout == layout and (out / "checkpoint-1").is_dir()
    assert not _hidden(out) and trainer.waited == 1


def test_a_failed_final_save_leaves_no_checkpoint(loaded, tiny_original, tmp_path, monkeypatch):
    import vlaser.train.saving as saving

    real = saving.save_weights

    def save_then_fail(state, dst, max_shard_size):
        real(state, dst, max_shard_size)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saving, "save_weights", save_then_fail)
    model, tokenizer = loaded
    out = tmp_path / "run"
    with pytest.raises(OSError):
        saving.save_final(_FakeTrainer(model), tokenizer, out, layout="original", source=tiny_original)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("mask, folder, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_published_folders_and_files_follow_the_umask(tmp_path, umask, mask, folder, file):
    import os
    import tempfile

    from conftest import modes

    umask(mask)
    with atomic_directory(tmp_path / "ckpt") as tmp:
        fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as the safetensors writer
        os.close(fd)
        Path(tempfile.mkdtemp(dir=tmp)).joinpath("x.json").write_text("{}")
    with staged_checkpoint(tmp_path / "run") as staged:
        os.close(os.open(staged / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600))
        (staged / "config.json").write_text("{}")
    for root in (tmp_path / "ckpt", tmp_path / "run"):
        got = modes(root)
        assert got == {name: folder if (root / name).is_dir() else file for name in got}, root

"""The `vlaser` command end to end on the tiny checkpoints."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from vlaser.cli import main


def test_info_describes_both_layouts(tiny_original, tiny_hf, capsys):
    assert main(["info", str(tiny_original)]) == 0
    out = capsys.readouterr().out
    assert "original layout" in out and "'<IMG_CONTEXT>'" in out and "internvl2_5" in out
    assert main(["info", str(tiny_hf), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "hf" and info["language_model"]["model_type"] == "qwen2"
    assert info["parameters"]["total"] == sum(v for k, v in info["parameters"].items() if k != "total")


def test_chat_answers_a_question(tiny_original, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (90, 60), (255, 0, 0)).save(image)
    assert main(["chat", "--model", str(tiny_original), "--image", str(image), "--max-new-tokens", "5",
                 "--dtype", "float32", "What is this?"]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_point_draws(tiny_original, tmp_path, capsys):
    image, out = tmp_path / "a.png", tmp_path / "drawn.png"
    Image.new("RGB", (90, 60), (255, 0, 0)).save(image)
    assert main(["chat", "--model", str(tiny_original), "--image", str(image), "--point", "--draw", str(out),
                 "--max-new-tokens", "5", "Point to the cube."]) == 0
    printed = capsys.readouterr().out
    assert "points (pixels):" in printed and Image.open(out).size == (90, 60)


@pytest.mark.slow  # a fresh interpreter importing torch and loading the model: 26 s on a busy 2-core machine
def test_interactive_chat_reads_turns_from_stdin(tiny_original, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (90, 60), (0, 255, 0)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "vlaser", "chat", "--model", str(tiny_original), "--image", str(image),
         "--max-new-tokens", "4"],
        input="first question\nsecond question\n\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) >= 1
    assert "multi-turn chat" in proc.stderr


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "missing"), "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlaser chat: error: ") and "checkpoint directory not found" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_a_missing_file_the_user_named_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlaser train: error: ") and str(missing) in err and "Traceback" not in err


def test_a_bug_inside_vlaser_shows_its_traceback(tiny_original, monkeypatch, capsys):
    import vlaser.cli.info

    def broken(path):
        raise KeyError("llm_config")  # what a bug looks like: not a VlaserError

    monkeypatch.setattr(vlaser.cli.info, "describe", broken)
    assert main(["info", str(tiny_original)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'llm_config'" in err and "bug in vlaser" in err

    def wrong_value(path):
        raise ValueError("an invariant broke")  # a plain ValueError is a bug too, not a user mistake

    monkeypatch.setattr(vlaser.cli.info, "describe", wrong_value)
    assert main(["info", str(tiny_original)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_file_vlaser_derived_but_missing_is_a_bug(tiny_original, monkeypatch, capsys):
    import vlaser.cli.info

    def open_derived(path):
        return open(tiny_original / "not_a_user_path.json")

    monkeypatch.setattr(vlaser.cli.info, "describe", open_derived)
    assert main(["info", str(tiny_original)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["--debug", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.strip().splitlines()[-1].startswith("vlaser info: error: ")


def test_usage_errors_exit_2_with_argparse_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "a"])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_convert_cli(tiny_original, tmp_path, capsys):
    assert main(["convert", str(tiny_original), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["convert", str(tiny_original), str(tiny_original), "--to", "hf"]) == 2
    assert "source directory" in capsys.readouterr().err


def test_info_counts_bin_checkpoints(tiny_original, tmp_path, capsys):
    import shutil

    import torch

    from vlaser.model.checkpoint import read_state_dict

    out = tmp_path / "bin"
    shutil.copytree(tiny_original, out)
    state = read_state_dict(out)
    torch.save(state, out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == sum(t.numel() for t in state.values())
    assert info["dtypes"] == {"float32": info["parameters"]["total"]}


def test_data_preview_shows_supervised_spans(tiny_original, tmp_path, capsys):
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there"}]},
            "{oops"]
    (tmp_path / "d.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    entry = {"root": str(tmp_path), "annotation": str(tmp_path / "d.jsonl")}
    (tmp_path / "meta.json").write_text(json.dumps({"d": entry}))
    out = tmp_path / "preview.jsonl"
    assert main(["data", "preview", "--meta", str(tmp_path / "meta.json"), "--model", str(tiny_original),
                 "--out", str(out), "--force_image_size", "56", "--max_seq_length", "512"]) == 0
    line = json.loads(out.read_text().splitlines()[0])
    assert line["id"] == "a" and line["line"] == 1 and line["tiles"] == []
    assert line["text"].endswith("<|im_start|>assistant\n[[Hello there<|im_end|>]]\n")
    assert line["n_supervised"] == sum(label != -100 for label in line["labels"]) > 0
    assert "invalid JSON" in capsys.readouterr().err


def test_train_help_lists_every_flag_with_its_help(capsys):
    import dataclasses

    from transformers import TrainingArguments

    from vlaser.train.args import DataTrainingArguments, ModelArguments

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    for name, text in (("--max_dynamic_patch", "most tiles per image"),
                       ("--freeze_backbone", "freeze the vision tower"),
                       ("--learning_rate", "The initial learning rate"), ("--deepspeed", "Enable DeepSpeed")):
        assert f"{name} " in out and text in out, name
    for cls in (ModelArguments, DataTrainingArguments, TrainingArguments):
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f"--{f.name} " not in out]
        assert not missing, (cls.__name__, missing)
    assert "--evaluation_strategy -> --eval_strategy" in out  # the translated 4.37-era spellings are named


def test_option_errors_are_one_line_naming_the_subcommand_and_option(capsys):
    for argv, start, option in ((["eval", "run", "--benchmark", "x", "--limit", "0"], "vlaser eval run: error: ",
                                 "argument --limit: must be at least 1"),
                                (["serve", "--model", "m", "--port", "x"], "vlaser serve: error: ", "argument --port"),
                                (["eval", "score", "--benchmark", "b", "--data", "d", "--out", "o", "--predictions",
                                  "p", "--bogus"],
                                 "vlaser eval score: error: ", "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(start) and option in err[0] and "usage:" not in err[0], err


def test_serve_says_a_port_in_use_before_loading_the_model(monkeypatch, capsys):
    import socket

    import vlaser.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(vlaser.api.VLM, "from_pretrained", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "anything", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"vlaser serve: error: --host 127.0.0.1 --port {port}: cannot listen"), err


def test_serve_binds_first_and_hands_uvicorn_that_socket(tiny_original, monkeypatch):
    import uvicorn

    import vlaser.api
    import vlaser.cli.serve as serve

    order, handed = [], []
    bind, load = serve.bind, vlaser.api.VLM.from_pretrained
    monkeypatch.setattr(serve, "bind", lambda *a: order.append("bind") or bind(*a))
    monkeypatch.setattr(vlaser.api.VLM, "from_pretrained", lambda *a, **k: order.append("load") or load(*a, **k))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: handed.extend(sockets or []))
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    assert main(["serve", "--model", str(tiny_original), "--port", "0", "--dtype", "float32", "--device", "cpu"]) == 0
    assert order == ["bind", "load"] and len(handed) == 1
    host, port = handed[0].getsockname()[:2]
    assert host == "127.0.0.1" and port > 0  # bound (port 0: a free one), so nothing else can take it meanwhile
    handed[0].close()


def test_train_help_opens_with_examples_and_vlasers_own_sections_required_flags_marked(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    examples = lines.index("examples:")
    assert lines[examples + 1].strip().startswith("vlaser train --model_name_or_path")
    assert any(line.strip().startswith("torchrun ") for line in lines[examples + 1:examples + 5])
    sections = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert sections == ["examples", "model", "data", "tiling", "freezing and LoRA", "packing",
                        "training (transformers' TrainingArguments)"]
    flat = " ".join(out.split())
    assert "--model-name-or-path MODEL_NAME_OR_PATH (required) checkpoint directory" in flat
    assert "--meta-path META_PATH (required) meta JSON" in flat and flat.count("(required)") == 2
    assert flat.index("--model_name_or_path") < flat.index("--max_dynamic_patch") < flat.index("--freeze_llm") \
        < flat.index("--use_packed_ds") < flat.index("--learning_rate")
    assert lines.index("model:") < 20  # no longer under 500 lines of TrainingArguments


def test_eval_help_names_the_benchmarks_their_folders_and_every_setting(capsys):
    from vlaser.eval.benchmark import REGISTRY
    from vlaser.eval.suite import LAYOUTS

    for verb in ("run", "suite"):
        with pytest.raises(SystemExit):
            main(["eval", verb, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        for flag in ("--batch-size BATCH_SIZE items generated together", "--dtype DTYPE with --model: auto",
                     "--device DEVICE with --model: cpu"):
            assert flag in out, (verb, flag)
        if verb == "run":
            assert f"--benchmark NAME one of: {', '.join(REGISTRY)}" in out
        else:
            assert all(f"{name}/ ({' '.join(LAYOUTS[name].split())})" in out for name in REGISTRY)

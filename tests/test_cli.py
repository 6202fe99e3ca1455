"""The `vlaser` command end to end on the tiny checkpoints."""

import json
import subprocess
import sys

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
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


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

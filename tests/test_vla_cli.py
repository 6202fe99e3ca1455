"""``vlaser vla data|train|serve|quickstart``: thin layers over the Python API, with one-line user errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the server's tests need fastapi (pip install 'vlaser[serve]')")

from fastapi.testclient import TestClient

from vlaser.cli import build_parser, main
from vlaser.vla import env as reach
from vlaser.vla.config import VLAConfig
from vlaser.vla.policy import CONFIG_FILE, VLAPolicy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return reach.write_demonstrations(tmp_path_factory.mktemp("vla-cli") / "demos", 6, seed=4)


def test_data_prints_the_summary_and_json(demos, capsys):
    assert main(["vla", "data", str(demos)]) == 0
    text = capsys.readouterr().out
    assert "episodes: 6" in text and f"{reach.CAMERA} (image" in text and "truncated episodes: 0" in text
    assert main(["vla", "data", str(demos), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 6 and summary["features"][reach.STATE]["shape"] == [2]
    assert summary["frames"] == summary["expected_frames"] > 0


def test_data_names_a_missing_file(demos, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demos, broken)
    (broken / "meta" / "info.json").unlink()
    assert main(["vla", "data", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlaser vla data: error:") and str(broken / "meta" / "info.json") in err


def test_train_reads_the_config_and_flags_override_it(tiny_original, demos, tmp_path, capsys):
    config = tmp_path / "vla.yaml"
    out = tmp_path / "policy"
    config.write_text(f"vlm: {tiny_original}\noutput_dir: {out}\ndataset: {demos}\npreset: tiny\n"
                      "config: {proprio_dim: 2, action_dim: 2, chunk_size: 3, act_steps: 2}\n"
                      "gripper_dims: {}\nmax_steps: 1000\nper_device_train_batch_size: 2\nwarmup_steps: 0\n"
                      "save_strategy: 'no'\nreport_to: none\n")
    code = main(["vla", "train", str(config), "--max_steps", "2", "--disable-tqdm", "true", "--config",
                 '{"proprio_dim": 2, "action_dim": 2, "chunk_size": 3, "act_steps": 3}'])
    assert code == 0, capsys.readouterr().err
    assert f"saved the VLA policy to {out}" in capsys.readouterr().out
    saved = VLAConfig.load(out / CONFIG_FILE)
    assert (saved.chunk_size, saved.act_steps) == (3, 3)  # the flag's dict replaced the file's
    assert not list(out.glob("checkpoint-*"))
    policy = VLAPolicy.from_pretrained(out)
    obs = reach.ReachEnv.from_seed(0).observation()
    assert policy.predict(obs["image"], obs["state"], obs["instruction"]).shape == (3, 2)


def test_train_errors_are_one_line(tmp_path, capsys):
    assert main(["vla", "train"]) == 2
    assert "the following arguments are required: --output_dir/--output-dir, --vlm" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vlm": "x", "output_dir": "y", "learning_rat": 1}))
    assert main(["vla", "train", str(bad)]) == 2
    assert "not used by the HfArgumentParser: ['--learning_rat', '1']" in capsys.readouterr().err
    assert main(["vla", "train", "--vlm", "x", "--output_dir", "y", "--bf16", "maybe"]) == 2
    assert "argument --bf16: Truthy value expected" in capsys.readouterr().err
    assert main(["vla", "train", "--vlm", "x", "--output_dir", "y", "--config", "[1]"]) == 2
    assert "config: expected a JSON object" in capsys.readouterr().err


def test_train_help_describes_every_flag_and_lists_the_presets(capsys):
    from vlaser.vla.config import PRESETS

    with pytest.raises(SystemExit) as exit_info:
        main(["vla", "train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--preset {" + ",".join(PRESETS) + "}" in text
    from vlaser.cli.vla import help_parser

    actions = [a for a in help_parser("vlaser vla train")._actions if a.option_strings]
    assert len(actions) > 100  # the VLA's fields and every TrainingArguments flag
    undescribed = [a.option_strings[0] for a in actions if not (a.help or "").strip("* ").strip()]
    assert undescribed == []
    for flag in ("--vlm", "--dataset", "--config", "--gripper_dims", "--expert_learning_rate", "--freeze_vlm"):
        assert flag in text
    flat = " ".join(text.split())
    assert "* Number of steps for a linear warmup" in flat and "(default: 200)" in flat  # the release's, shown
    assert "(default: constant_with_warmup)" in flat


def test_serve_loads_the_policy_and_hands_the_app_to_uvicorn(tiny_original, demos, tmp_path, monkeypatch):
    from vlaser.vla.train import train_vla

    out = train_vla({"vlm": str(tiny_original), "output_dir": str(tmp_path / "p"), "dataset": str(demos),
                     "preset": "tiny", "config": {"proprio_dim": 2, "action_dim": 2}, "max_steps": 1,
                     "per_device_train_batch_size": 2, "save_strategy": "no", "disable_tqdm": True})
    seen = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["vla", "serve", str(out), "--port", "8123"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    health = TestClient(seen["app"]).get("/health").json()
    assert health["policy"] == str(out) and health["normalized"] is True
    assert main(["vla", "serve", str(tmp_path)]) == 2  # not a policy folder


def test_quickstart_flags_parse(capsys):
    from vlaser.vla.quickstart import DEFAULT_STEPS, DEMOS

    args = build_parser().parse_args(["vla", "quickstart", "--out", "q", "--max-steps", "50", "--episodes", "10",
                                      "--eval-episodes", "5", "--minutes", "2", "--overwrite"])
    assert (args.max_steps, args.episodes, args.eval_episodes, args.minutes, args.overwrite) == (50, 10, 5, 2.0, True)
    defaults = build_parser().parse_args(["vla", "quickstart"])
    assert (defaults.max_steps, defaults.episodes, defaults.eval_episodes, defaults.overwrite) == (None, DEMOS, 100,
                                                                                                  False)
    for bad in (["--max-steps", "0"], ["--steps", "50"]):  # --steps is vlaser quickstart's --max-steps now
        with pytest.raises(SystemExit):
            build_parser().parse_args(["vla", "quickstart", *bad])
    with pytest.raises(SystemExit):
        main(["vla", "quickstart", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {DEFAULT_STEPS:,}, the tested budget" in text and f"default: {DEMOS:,}, the tested" in text


@pytest.mark.parametrize("robot", ["bridge", "fractal"])
def test_vla_recipes_hold_the_release_settings(robot, tmp_path):
    from pathlib import Path

    from vlaser.vla.config import preset
    from vlaser.vla.train import parse_args

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "vla" / f"vlaser_2b_{robot}.yaml"
    train = parse_args([str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "True"])  # no bf16 device in CI
    assert train.output_dir == str(tmp_path) and train.preset == f"vlaser_2b_{robot}"
    assert train.vla_config() == preset(f"vlaser_2b_{robot}")
    assert (train.learning_rate, train.expert_learning_rate, train.max_grad_norm) == (5e-5, 5e-5, 1.0)
    assert train.per_device_train_batch_size * 32 == 1024 and train.bf16 and train.normalization == "quantile"

"""Protocols, truncation, provenance, the resume guard, the OpenAI backend's policies and CLI number checks."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from fakes import ChatServer, ScriptedBackend
from test_eval import where2place
from vlaser.cli import main
from vlaser.errors import UserInputError
from vlaser.eval.backends import OpenAIBackend, ServerError, TransformersBackend
from vlaser.eval.benchmark import REGISTRY, get_benchmark
from vlaser.eval.runner import run
from vlaser.inference import GenerationParams, Request


def test_every_benchmark_declares_cited_versioned_protocols():
    for name in REGISTRY:
        bench = get_benchmark(name)
        assert bench.protocols[0].name == bench.protocol and bench.settings is bench.protocols[0]
        for protocol in bench.protocols:
            assert protocol.version >= 1 and protocol.source, (name, protocol)
            assert protocol.prompt in ("vlaser", "official")
    # the settings Vlaser's numbers came from (eval_example.py; Vlaser's own evaluators for Pixmo and PACO)
    for name in ("where2place", "point_bench", "refspatial"):
        s = get_benchmark(name).settings
        assert (s.prompt, s.max_tiles, s.max_new_tokens, s.min_new_tokens) == ("vlaser", 12, 1024, 0)
        assert get_benchmark(name, protocol="official").settings.prompt == "official"
    for name in ("pixmo_points", "paco_lvis"):
        s = get_benchmark(name).settings
        assert (s.prompt, s.max_tiles, s.max_new_tokens, s.min_new_tokens) == ("vlaser", 6, 100, 1)
    with pytest.raises(ValueError, match=r"unknown protocol 'x'; choose from \['vlaser', 'official'\]"):
        get_benchmark("where2place", protocol="x")


def test_default_run_uses_the_protocol_and_records_how_it_was_made(tmp_path):
    data = where2place(tmp_path / "w", n=2)
    backend = ScriptedBackend()
    metrics = run(get_benchmark("where2place"), backend, data, tmp_path / "out")
    assert backend.generation == GenerationParams(max_new_tokens=1024, min_new_tokens=0)
    assert backend.asked[0].startswith("<image>\nYou are InternVL.")  # the vlaser prompt builder
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["settings"] == {"prompt": "vlaser", "max_tiles": 12, "max_new_tokens": 1024, "min_new_tokens": 0,
                                  "frames": None, "do_sample": False}
    assert (record["protocol"], record["protocol_version"]) == ("vlaser", 1)
    assert "eval_example.py" in record["protocol_source"] and record["vlaser_version"] == "0.1.0"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", record["git_commit"])  # this checkout's commit
    assert metrics["run"]["settings"] == record["settings"] and metrics["protocol_version"] == 1

    run(get_benchmark("where2place"), ScriptedBackend(), data, tmp_path / "out")  # same settings: continues
    with pytest.raises(ValueError, match=r"settings.max_new_tokens: 1024 -> 100; settings.prompt: 'vlaser' -> "
                                         r"'official'"):
        run(get_benchmark("where2place"), ScriptedBackend(), data, tmp_path / "out", max_new_tokens=100,
            prompt="official")
    with pytest.raises(ValueError, match="protocol"):
        run(get_benchmark("where2place", protocol="official"), ScriptedBackend(), data, tmp_path / "out")
    again = run(get_benchmark("where2place"), ScriptedBackend(), data, tmp_path / "out")
    assert again["n_items"] == 2  # a refused resume changed nothing


def test_cut_off_answers_are_marked_counted_and_warned_about(tiny_original, tmp_path):
    data = where2place(tmp_path / "w", n=3)
    backend = TransformersBackend(str(tiny_original), dtype=torch.float32, device="cpu")
    metrics = run(get_benchmark("where2place"), backend, data, tmp_path / "cut", max_new_tokens=2, pictures=0)
    records = [json.loads(line) for line in (tmp_path / "cut" / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(r["truncated"], bool) for r in records)
    assert metrics["n_truncated"] == sum(r["truncated"] for r in records) >= 1  # random weights rarely stop at once
    assert f"{metrics['n_truncated']} answer(s) were cut off at max_new_tokens (2)" in (
        tmp_path / "cut" / "report.md").read_text()
    assert backend.info()["config_sha256"] == __import__("hashlib").sha256(
        (tiny_original / "config.json").read_bytes()).hexdigest()


def test_generate_answers_knows_which_rows_stopped(loaded):
    model, tokenizer = loaded
    from vlaser.model.template import build_chat_prompt

    prompt = build_chat_prompt("Hi", model.conv_template, [], model.num_image_token,
                               system_message=model.system_message)[1]
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts, cut = model.generate_answers(tokenizer, [prompt, prompt], None,
                                        {"max_new_tokens": 1, "do_sample": False, "suppress_tokens": [stop]})
    assert cut == [True, True]  # one token, and it cannot be the end token
    _, stopped = model.generate_answers(tokenizer, [prompt], None,
                                        {"max_new_tokens": 3, "do_sample": False, "begin_suppress_tokens": None,
                                         "forced_eos_token_id": None, "sequence_bias": {(stop,): 100.0}})
    assert stopped == [False]  # the end token, biased up, comes first


OK = {"choices": [{"message": {"content": "B"}, "finish_reason": "length"}]}


@pytest.mark.parametrize("status", [400, 404, 422])
def test_openai_client_errors_fail_at_once_with_the_servers_message(status):
    server = ChatServer([(status, {"error": {"message": "max_tokens is too large"}})] + [(200, OK)] * 3)
    try:
        with pytest.raises(ServerError, match=f"answered {status}: .*max_tokens is too large"):
            OpenAIBackend(server.url, "m", retries=3).generate([Request("hi")], GenerationParams(8))
    finally:
        server.close()
    assert len(server.seen) == 1  # not retried


def test_openai_transient_failures_are_retried_and_truncation_read(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server = ChatServer([(503, {}), (429, {}), (200, OK)])
    try:
        backend = OpenAIBackend(server.url, "m", retries=3, system_message="")
        (answer,) = backend.generate([Request("hi")], GenerationParams(8, min_new_tokens=1))
    finally:
        server.close()
    assert (answer.text, answer.truncated) == ("B", True)  # finish_reason "length"
    assert len(server.seen) == 3 and server.seen[-1]["messages"] == [{"role": "user", "content": "hi"}]
    # system_message="" sends none; a prompt without images goes as a plain string
    assert (server.seen[-1]["min_tokens"], server.seen[-1]["min_new_tokens"]) == (1, 1)
    assert "mm_processor_kwargs" not in server.seen[-1]  # no pictures, no tile setting


@pytest.mark.parametrize("argv, message", [
    (["eval", "run", "--limit", "-1"], "--limit: must be at least 1, got -1"),
    (["eval", "run", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["eval", "run", "--max-num", "0"], "--max-num: must be at least 1, got 0"),
    (["eval", "run", "--max-new-tokens", "zero"], "--max-new-tokens: expected an integer, got 'zero'"),
    (["eval", "run", "--frames", "0"], "--frames: must be at least 1, got 0"),
    (["eval", "run", "--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
    (["chat", "--model", "m", "--max-num", "0", "q"], "--max-num: must be at least 1, got 0"),
])
def test_cli_numbers_are_checked(argv, message, capsys):
    common = ["--benchmark", "where2place", "--data", "d", "--out", "o", "--model", "m"] if argv[0] == "eval" else []
    with pytest.raises(SystemExit) as stop:
        main(argv + common)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_python_api_numbers_are_checked(tmp_path):
    data = where2place(tmp_path / "w", n=1)
    bench = get_benchmark("where2place")
    for kwargs, message in (({"limit": -1}, "--limit must be at least 1"), ({"batch_size": 0}, "--batch-size"),
                            ({"max_tiles": 0}, "--max-num must be an integer of at least 1"),
                            ({"frames": 0}, "--frames must be an integer of at least 1")):
        with pytest.raises(ValueError, match=message):
            run(bench, ScriptedBackend(), data, tmp_path / "o", **kwargs)


def test_a_misspelt_option_is_refused_for_every_benchmark():
    for name in REGISTRY:
        with pytest.raises(ValueError, match=rf"{name}: unknown option\(s\) \['no_such_option'\]; it takes"):
            get_benchmark(name, no_such_option=True)
    assert get_benchmark("where2place", binarize=True).options == {"binarize": True}


def test_mmsi_prompt_is_the_official_text(tmp_path):
    from test_eval import _mmsi

    bench = get_benchmark("mmsi_bench")
    item = bench.load(_mmsi(tmp_path / "m"))[0]
    expected = ("Which image is red?\nOptions: A: the first, B: the second, C: both, D: neither 0\nAnswer with the "
                "option's letter from the given choices directly. Enclose the option's letter within ``.")
    assert bench.prompt(item, "official") == bench.prompt(item, "vlaser") == expected


def test_resuming_with_another_engine_payload_is_refused(tmp_path):
    """The engine decides where the images go in the request, so answers made with another one are not mixed."""
    from vlaser.eval.provenance import check_and_write, differences

    record = {"benchmark": "mmsi_bench", "settings": {"max_tiles": 6}, "started_at": "t0",
              "backend": {"backend": "openai", "model": "m", "server": "vllm", "system_message": "s"}}
    check_and_write(tmp_path, record)
    check_and_write(tmp_path, {**record, "started_at": "t1"})  # the same run goes on
    other = {**record, "backend": {**record["backend"], "server": "openai"}}
    assert differences(record, other) == ['backend.server: "vllm" -> "openai"']
    with pytest.raises(UserInputError, match="other settings .*backend.server"):
        check_and_write(tmp_path, other)


def test_a_run_recorded_with_the_old_tile_name_resumes_and_a_changed_limit_is_named(tmp_path):
    """``run.json`` files written before the tile limit was named ``max_tiles`` still resume."""
    from vlaser.eval.provenance import check_and_write

    old = {"benchmark": "mmsi_bench", "settings": {"max_num": 6, "max_new_tokens": 1024}, "started_at": "t0"}
    (tmp_path / "run.json").write_text(json.dumps(old))
    now = {"benchmark": "mmsi_bench", "settings": {"max_tiles": 6, "max_new_tokens": 1024}, "started_at": "t1"}
    check_and_write(tmp_path, now)
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["settings"] == now["settings"] and written["started_at"] == "t0"
    (tmp_path / "run.json").write_text(json.dumps(old))
    with pytest.raises(UserInputError, match=r"settings.max_tiles: 6 -> 12"):
        check_and_write(tmp_path, {**now, "settings": {**now["settings"], "max_tiles": 12}})


def test_the_local_backend_holds_the_core_and_hands_settings_straight_to_it(monkeypatch):
    """The runner's tile limits reach the prepare step and its generation settings reach the engine unchanged
    (the walk in docs/engine.md): the backend holds the core's Preparer and Engine, it is neither."""
    from vlaser.inference.engine import Engine
    from vlaser.inference.prepare import Preparer

    assert not issubclass(TransformersBackend, (Preparer, Engine))
    backend = object.__new__(TransformersBackend)
    seen = []
    backend.preparer = SimpleNamespace(prepare=lambda request, pending: seen.append(("prepare", request, pending)),
                                       tiling=lambda picture, limit: seen.append(("tiling", picture, limit)))
    backend.engine = SimpleNamespace(generate=lambda items, params, size: seen.append(("generate", items, params,
                                                                                        size)))
    params = GenerationParams(7)
    backend.prepare("request", "pending"), backend.tiling("a.png", 6), backend.generate(["item"], params, 3)
    assert seen == [("prepare", "request", "pending"), ("tiling", "a.png", 6), ("generate", ["item"], params, 3)]

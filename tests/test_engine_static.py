"""The engine's fixed-shape decode (``static_capacity``: bucketed batch, scratch slot, full kv length) on the tiny
model in float32: greedy answers equal the dynamic engine and the batch-1 ``model.chat`` loop."""

import logging

import pytest
import torch

from test_inference_engine import QUESTIONS, _chat, _prepared, check_join_mid_batch
from vlaser.errors import UserInputError
from vlaser.inference import GenerationParams
from vlaser.inference.engine import Engine, bucket_size

BUDGETS = [12, 3, 12, 7, 12, 1]  # rows that stop early (one at prefill) beside rows that run on


def _capacity(vlm, pairs, extra):
    return max(len(vlm.tokenizer(item.prompt)["input_ids"]) for item, _ in pairs) + extra


def _spy_steps(engine, monkeypatch):
    """Records (bucket, padding rows) of every static decode step."""
    seen, step = [], engine._static_step

    def spy(inputs):
        seen.append((inputs.shape[1], int((inputs[2] == engine.max_batch_size).sum())))
        return step(inputs)

    monkeypatch.setattr(engine, "_static_step", spy)
    return seen


@pytest.mark.parametrize(("rows", "max_batch_size", "bucket"), [
    (1, 8, 1), (2, 8, 2), (3, 8, 4), (4, 8, 4), (5, 8, 8), (7, 8, 8), (8, 8, 8),
    (1, 1, 1), (2, 3, 2), (3, 3, 3), (5, 6, 6), (3, 6, 4), (9, 16, 16),
])
def test_bucket_size_is_the_next_power_of_two_capped_at_the_batch(rows, max_batch_size, bucket):
    assert bucket_size(rows, max_batch_size) == bucket


@pytest.mark.parametrize("max_batch_size", [1, 3, 8])
def test_static_greedy_rows_equal_the_dynamic_engine_and_the_chat_loop(vlm, monkeypatch, max_batch_size):
    pairs = [_prepared(vlm, size, q) for size, q in QUESTIONS]
    items, params = [p for p, _ in pairs], [GenerationParams(max_new_tokens=n) for n in BUDGETS]
    capacity = _capacity(vlm, pairs, max(BUDGETS) + 5)
    engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=max_batch_size, static_capacity=capacity)
    seen = _spy_steps(engine, monkeypatch)
    static = engine.generate(items, params)
    dynamic = Engine(vlm.model, vlm.tokenizer, max_batch_size=max_batch_size).generate(items, params)
    assert static == dynamic
    for (_, question), (_, media), n, completion in zip(QUESTIONS, pairs, BUDGETS, static):
        assert completion.text == _chat(vlm, media, question, n)
    buckets = {b for b, _ in seen}
    assert buckets <= {bucket_size(r, max_batch_size) for r in range(1, max_batch_size + 1)}
    if max_batch_size == 8:  # 5 rows decode after the prefill: bucket 8, 3 rows of padding
        assert seen[0] == (8, 3) and len(buckets) > 1
    cache = engine._cache  # the slots and a scratch slot, each of static_capacity positions
    assert (cache.keys[0].shape[0], cache.keys[0].shape[2]) == (max_batch_size + 1, capacity)
    assert engine.generate(items[:2], params[:2]) == static[:2] and engine._cache is cache  # allocated once


def test_a_static_row_joining_mid_batch_equals_its_lone_answer_and_finishes_first(vlm, monkeypatch):
    long_item, _ = _prepared(vlm, *QUESTIONS[0])
    capacity = len(vlm.tokenizer(long_item.prompt)["input_ids"]) + 40
    engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=4, static_capacity=capacity)
    seen = _spy_steps(engine, monkeypatch)
    check_join_mid_batch(vlm, engine)
    assert (1, 0) in seen and (2, 0) in seen  # alone, then beside the short row, then alone again


def test_a_request_over_the_static_capacity_is_refused_naming_the_numbers(vlm):
    item, media = _prepared(vlm, *QUESTIONS[1])
    prompt = len(vlm.tokenizer(item.prompt)["input_ids"])
    engine = Engine(vlm.model, vlm.tokenizer, static_capacity=prompt + 5)
    with pytest.raises(UserInputError, match=f"prompt is {prompt} tokens and max_tokens asks for 6 more, over "
                                             f"this engine's static_capacity of {prompt + 5} positions"):
        engine.add(item, GenerationParams(max_new_tokens=6))
    with pytest.raises(UserInputError, match="static_capacity"):
        engine.generate([item, item], [GenerationParams(max_new_tokens=5), GenerationParams(max_new_tokens=6)])
    assert not engine.waiting  # nothing of a refused list stays queued
    assert engine.generate([item], GenerationParams(max_new_tokens=5))[0].text == _chat(vlm, media, QUESTIONS[1][1], 5)


def test_settings_cuda_graphs_needs_and_its_warning_off_cuda(vlm, caplog, monkeypatch):
    from vlaser.inference import engine as engine_module

    monkeypatch.setattr(engine_module, "_warned", set())
    with pytest.raises(ValueError, match="cuda_graphs needs static_capacity"):
        Engine(vlm.model, vlm.tokenizer, cuda_graphs=True)
    with pytest.raises(ValueError, match="static_capacity >= 1"):
        Engine(vlm.model, vlm.tokenizer, static_capacity=0)
    if vlm.model.device.type == "cuda":
        pytest.skip("the model is on CUDA: cuda_graphs applies")
    with caplog.at_level(logging.WARNING, logger="vlaser.inference.engine"):
        engine = Engine(vlm.model, vlm.tokenizer, static_capacity=64, cuda_graphs=True)
        Engine(vlm.model, vlm.tokenizer, static_capacity=64, cuda_graphs=True)
    assert not engine.cuda_graphs
    assert [r.message for r in caplog.records].count("cuda_graphs ignored: the model is on cpu, CUDA graphs need "
                                                     "CUDA") == 1  # once, however many engines


@pytest.mark.gpu
def test_cuda_graph_answers_equal_the_eager_static_path(tiny_original):
    import vlaser
    from vlaser.api import VLM

    model, tokenizer = vlaser.load_model(tiny_original, dtype=torch.float32, device="cuda")
    vlm = VLM(model, tokenizer)
    pairs = [_prepared(vlm, size, q) for size, q in QUESTIONS]
    items, params = [p for p, _ in pairs], [GenerationParams(max_new_tokens=n) for n in BUDGETS]
    capacity = _capacity(vlm, pairs, max(BUDGETS) + 5)
    graphed = Engine(model, tokenizer, max_batch_size=8, static_capacity=capacity, cuda_graphs=True)
    eager = Engine(model, tokenizer, max_batch_size=8, static_capacity=capacity)
    assert graphed.generate(items, params) == eager.generate(items, params)
    assert len(graphed._graphs) > 1  # several buckets captured, each replayed
    assert graphed.generate(items[::-1], params[::-1]) == eager.generate(items[::-1], params[::-1])


def test_eval_and_serve_take_the_static_decode_from_their_flags(tiny_original, tmp_path, capsys):
    """``--static-capacity`` reaches the engine of ``eval run`` (same predictions as the growing cache) and of
    ``vlaser serve``; ``--cuda-graphs`` alone is refused by name."""
    import asyncio
    import json

    from test_eval import where2place
    from vlaser.api import VLM
    from vlaser.cli import main
    from vlaser.cli.serve import add_parser
    from vlaser.serve.scheduler import Job
    from vlaser.serve.scheduler import Scheduler as ServeEngine

    data = where2place(tmp_path / "w", n=3)
    common = ["eval", "run", "--model", str(tiny_original), "--dtype", "float32", "--device", "cpu", "--benchmark",
              "where2place", "--data", str(data), "--max-new-tokens", "6", "--pictures", "0"]
    assert main([*common, "--out", str(tmp_path / "dynamic")]) == 0
    assert main([*common, "--out", str(tmp_path / "static"), "--static-capacity", "4096"]) == 0
    answers = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("dynamic", "static")]
    assert answers[0] == answers[1] and len(answers[0].splitlines()) == 3
    assert main([*common, "--out", str(tmp_path / "graphs"), "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs --static-capacity" in capsys.readouterr().err

    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "m", "--static-capacity", "512"])
    assert (args.static_capacity, args.cuda_graphs) == (512, False)
    vlm = VLM.from_pretrained(tiny_original, dtype=torch.float32, device="cpu")

    async def main_loop():
        engine = ServeEngine(vlm, max_wait_ms=0, static_capacity=512, max_tiles=1)
        await engine.start()
        try:
            from vlaser.inference import Request

            stream = engine.submit(Job(Request("Hi"), GenerationParams(max_new_tokens=4)))
            await stream.result()
            return engine.core._cache.capacity  # the static cache, allocated at its full size
        finally:
            await engine.stop()

    assert asyncio.run(main_loop()) == 512
    assert json.loads((tmp_path / "static" / "run.json").read_text())["backend"]["decode"] == {
        "static_capacity": 4096, "cuda_graphs": False}

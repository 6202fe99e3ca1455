"""The device check: everything a lent GPU should measure, in two parts that each fit one device command.

    python bench/device_check.py --part 1      # gpu tests, 2B SFT chunked vs plain, 2B decode
    python bench/device_check.py --part 2      # 8B SFT, fp32 answer parity, the VLA at 2B shapes, DeepSpeed

Each step runs in its own subprocess under its own time limit (a part's limits add up to at most 280 s, so a
part fits a 5-minute command with the machine's start-up to spare); a step that fails or runs out of time is
recorded and the part goes on. Each step writes ``$OUT/<step>.json`` (``--out``, else $OUT, else
``device-check/``) and its log ``$OUT/<step>.log``; the part ends with a summary table. Models are made on the
device in their dtype (never initialised on the device's CPU and copied). ``--cpu`` runs every step with the tiny
model on the CPU, so the script is checked (tests/test_device_check.py) before a GPU ever sees it.
Why each number and its target: docs/engine.md ("The device check").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
#: part -> (step, seconds allowed); each part's limits add up to at most PART_BUDGET
STEPS = {1: [("gpu_tests", 80), ("sft_2b", 100), ("decode_2b", 100)],
         2: [("sft_8b", 110), ("fp32_parity", 60), ("vla_2b", 50), ("deepspeed", 60)]}
PART_BUDGET = 280
#: environment each step's process starts with (the allocator setting must precede CUDA's start)
STEP_ENV = {"sft_8b": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}
CPU_LIMIT_SCALE = 3  #: --cpu: the limits tripled (the tiny steps are short, but a shared 2-core CPU is slow to start)
PEAK_TFLOPS = 989.0  #: bf16 dense peak of an H100/H200 SXM, the MFU's denominator


class StepSkippedError(Exception):
    """A step that cannot run here, with the reason (recorded as ``skipped``, never silently)."""


# ---- the orchestrator ---------------------------------------------------------------------------------------

def run_step(name: str, limit: float, out: Path, cpu: bool) -> dict:
    """Run one step in a subprocess (its own process group, killed whole at ``limit`` seconds); its JSON result,
    or one that says how it failed (timeout, exit status) with the log's last lines."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", str(out), *(["--cpu"] * cpu)]
    env = {**os.environ, **STEP_ENV.get(name, {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    result_file = out / f"{name}.json"
    result_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = round(time.perf_counter() - start, 1)
    if code == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        status = "timeout" if code is None else "error"
        result = {"step": name, "status": status, "exit_code": code,
                  "error": f"ran past its {limit:g} s limit" if code is None else f"exited with status {code}",
                  "log_tail": (out / f"{name}.log").read_text(errors="replace")[-2000:]}
    result |= {"wall_s": seconds, "limit_s": limit}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(results: list[dict]) -> str:
    """The table printed at the end of a part: one line per step, its status, time and headline numbers."""
    rows = [("step", "status", "s / limit", "result")]
    for r in results:
        rows.append((r["step"], r["status"], f"{r['wall_s']:.0f} / {r['limit_s']:g}",
                     r.get("headline") or r.get("reason") or r.get("error", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def run_part(part: int, out: Path, cpu: bool) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, limit in STEPS[part]:
        limit *= CPU_LIMIT_SCALE if cpu else 1
        print(f"== {name} (limit {limit} s)", flush=True)
        results.append(run_step(name, limit, out, cpu))
        print(f"   {results[-1]['status']} after {results[-1]['wall_s']} s", flush=True)
    print(f"\ndevice check part {part} ({'cpu, tiny sizes' if cpu else 'device'}); results in {out}/")
    print(summary(results), flush=True)
    return results


def run_one(name: str, out: Path, cpu: bool) -> None:
    """The body of a step's subprocess: run it and write its JSON (``ok``, ``failed``, ``skipped`` or ``error``)."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **STEP_FUNCTIONS[name](cpu, out)}
    except StepSkippedError as why:
        result = {"status": "skipped", "reason": str(why)}
    except Exception as error:  # recorded in the JSON; the part goes on with its next step
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"[:1000]}
    result = {"step": name, **result, "step_s": round(time.perf_counter() - start, 2), "device": _device_name(cpu)}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _device_name(cpu: bool) -> str:
    import torch

    return "cpu" if cpu or not torch.cuda.is_available() else torch.cuda.get_device_name()


# ---- shared helpers -----------------------------------------------------------------------------------------

def _torch_setup(cpu: bool):
    """(torch, device name); the bench folder on the path for the bench modules the steps reuse."""
    import torch

    sys.path.insert(0, str(BENCH))
    if not cpu and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (use --cpu for the CPU run of this check)")
    return torch, "cpu" if cpu else "cuda"


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gib(torch, device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


# ---- the steps ----------------------------------------------------------------------------------------------

def step_gpu_tests(cpu: bool, out: Path) -> dict:
    """``pytest -m gpu tests/``: counts from its JUnit XML (on the CPU every gpu test is skipped, with the reason)."""
    import xml.etree.ElementTree as ET

    xml = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}", "tests/"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    status = "ok" if proc.returncode in (0, 5) and not failed else "failed"
    headline = (f"{counts['passed']} passed, {counts['failures'] + counts['errors']} failed, "
                f"{counts['skipped']} skipped (pytest exit {proc.returncode})")
    return {"status": status, "pytest_exit": proc.returncode, **counts, "failed_tests": failed,
            "headline": headline, "pytest_tail": proc.stdout[-1500:]}


def _sft(cpu: bool, size: str, losses: tuple[str, ...], steps: int) -> dict:
    """Train steps of ``size`` with each loss in ``losses`` from the same weights and batch: step time, tokens/s,
    MFU, the loss head's share of the step, peak memory and the per-step losses."""
    torch, device = _torch_setup(cpu)
    from gpu_train_throughput import build, flops_per_step, init_on_device_, loss_seconds, packed_batch, train_steps

    from vlaser.model.tiny import randomize_
    from vlaser.train.trainer import checkpoint_every

    dtype = torch.float32 if cpu else torch.bfloat16
    tokens, tiles = (256, 4) if cpu else (16384, 24)
    model = build("tiny" if cpu else size, device, dtype).train()
    checkpoint_every(model, 1)
    batch, seq_lens = packed_batch(model, tokens, tiles, 8, device, dtype)
    flops = flops_per_step(model, tokens, tiles, seq_lens)
    result = {"size": "tiny" if cpu else size, "dtype": str(dtype).removeprefix("torch."), "tokens_per_step": tokens,
              "tiles_per_step": tiles, "steps": steps}
    for loss in losses:
        (randomize_ if cpu else init_on_device_)(model, 0)  # every loss starts from the same weights
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, curve = train_steps(model, batch, loss, steps, device)
        t = _median(times[1:])  # after the warm-up step
        result[loss] = {"step_s": round(t, 4), "tokens_per_s": round(tokens / t, 1),
                        "mfu": None if cpu else round(flops / t / (PEAK_TFLOPS * 1e12), 4),
                        "loss_head_share": round(loss_seconds(model, batch, loss, device) / t, 4),
                        "peak_memory_gib": _peak_gib(torch, device), "losses": curve}
    parts = [f"{loss}: {result[loss]['tokens_per_s']:,.0f} tok/s"
             + (f" MFU {result[loss]['mfu']:.1%}" if result[loss]["mfu"] is not None else "")
             + f" head {result[loss]['loss_head_share']:.0%}" for loss in losses]
    if len(losses) == 2:
        a, b = (result[loss]["losses"] for loss in losses)
        result["max_loss_difference"] = max(abs(x - y) for x, y in zip(a, b))
        parts.append(f"|loss diff| <= {result['max_loss_difference']:.2e}")
    result["headline"] = "; ".join(parts)
    return result


def step_sft_2b(cpu: bool, out: Path) -> dict:
    return _sft(cpu, "2b", ("chunked", "plain"), 3 if cpu else 5)


def step_sft_8b(cpu: bool, out: Path) -> dict:
    return _sft(cpu, "8b", ("chunked",), 3 if cpu else 4)


def _decode_model(cpu: bool, dtype_name: str | None = None, vocab_of_tokenizer: bool = False):
    """(torch, device, model, tokenizer): InternVL3-2B shapes made on the device (tiny on the CPU), random
    weights, the bench tokenizer; ``vocab_of_tokenizer`` sizes the vocabulary to the tokenizer's, so every
    greedy token decodes (needed where answers are compared as text with ``model.chat``)."""
    torch, device = _torch_setup(cpu)
    from gpu_train_throughput import create_on, init_on_device_, internvl3_2b_config

    from vlaser.model.chat import InternVLChat
    from vlaser.model.convert import original_to_hf_config
    from vlaser.model.loading import build_hf_config
    from vlaser.model.tiny import randomize_, tiny_original_config, tiny_tokenizer

    tok = tiny_tokenizer()
    dtype = getattr(torch, dtype_name or ("float32" if cpu else "bfloat16"))
    config = tiny_original_config(len(tok) + 64) if cpu else internvl3_2b_config()
    if vocab_of_tokenizer:
        config["llm_config"]["vocab_size"] = len(tok)
    hf_config = build_hf_config(original_to_hf_config(config, tok.convert_tokens_to_ids("<IMG_CONTEXT>")))
    model = create_on(device, dtype, InternVLChat, hf_config)
    (randomize_ if cpu else init_on_device_)(model, 0)
    return torch, device, model.eval(), tok


def _prepared(model, work):
    from vlaser.inference import Prepared
    from vlaser.model.template import build_chat_prompt

    return [Prepared(build_chat_prompt(q, model.conv_template, [t.shape[0]], model.num_image_token,
                                       system_message=model.system_message)[1], t, [t.shape[0]], [])
            for t, q in work]


def engine_run(torch, device: str, model, tok, prepared, batch: int, new_tokens: int, mode: str) -> dict:
    """One Engine (``mode``: dynamic, static, graphs) over ``prepared`` with ``batch`` slots and admission sized
    so ``batch`` rows of the longest item fit; items/s, ms per decode-only step, rows per step, answers."""
    from vlaser.inference import GenerationParams
    from vlaser.inference.engine import Engine

    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    capacity = max(len(tok(p.prompt)["input_ids"]) for p in prepared) + new_tokens
    engine = Engine(model, tok, max_batch_size=batch, max_batch_tokens=batch * capacity,
                    static_capacity=None if mode == "dynamic" else capacity, cuda_graphs=mode == "graphs")
    warm = GenerationParams(max_new_tokens=2, min_new_tokens=2)
    engine.generate(prepared[:batch], warm)  # warm-up: kernels, allocator, the full bucket's graph
    rows = [engine.add(p, params) for p in prepared]
    decode_ms, rows_per_step = [], []
    _sync(torch, device)
    start = time.perf_counter()
    while engine.waiting or engine.running:
        waiting = len(engine.waiting)
        tick = time.perf_counter()
        ended = engine.step()  # a step waits for the device: its tokens go to the host
        seconds = time.perf_counter() - tick
        rows_per_step.append(len(engine.running) + len(ended))
        if len(engine.waiting) == waiting:  # nothing admitted: a decode-only step
            decode_ms.append(1000 * seconds)
    _sync(torch, device)
    elapsed = time.perf_counter() - start
    errors = [repr(r.error) for r in rows if r.error is not None]
    return {"items_per_s": round(len(rows) / elapsed, 3), "seconds": round(elapsed, 3),
            "ms_per_decode_step": round(_median(decode_ms), 3) if decode_ms else None,
            "max_rows_per_step": max(rows_per_step), "mean_rows_per_step": round(sum(rows_per_step) /
                                                                                 len(rows_per_step), 2),
            "errors": errors, "answers": [r.completion.text for r in rows] if not errors else []}


def step_decode_2b(cpu: bool, out: Path) -> dict:
    """Batch-1 ms/token and batch-32 items/s over 64 items, dynamic vs static cache vs CUDA graphs."""
    from gpu_eval_throughput import items

    torch, device, model, tok = _decode_model(cpu)
    n_items, batch, new_tokens, max_num = (8, 4, 6, 2) if cpu else (64, 32, 32, 6)
    prepared = _prepared(model, items(n_items, model.config.vision_config.image_size[0], max_num))
    modes = ["dynamic", "static", "graphs"]
    result = {"items": n_items, "batch": batch, "new_tokens": new_tokens, "max_num": max_num,
              "prompt_tokens": [min(len(tok(p.prompt)["input_ids"]) for p in prepared),
                                max(len(tok(p.prompt)["input_ids"]) for p in prepared)]}
    for mode in modes:
        single = engine_run(torch, device, model, tok, prepared[:1], 1, 4 * new_tokens, mode)
        result[f"batch1_ms_per_token_{mode}"] = single["ms_per_decode_step"]
        result[mode] = engine_run(torch, device, model, tok, prepared, batch, new_tokens, mode)
        print(f"{mode}: batch-1 {single['ms_per_decode_step']} ms/token; batch {batch}: "
              f"{result[mode]['items_per_s']} items/s, rows per step max {result[mode]['max_rows_per_step']} "
              f"mean {result[mode]['mean_rows_per_step']}", flush=True)
    for a, b in (("dynamic", "static"), ("static", "graphs")):
        same = sum(x == y for x, y in zip(result[a]["answers"], result[b]["answers"]))
        result[f"same_answers_{a}_{b}"] = f"{same}/{n_items}"
    result["peak_memory_gib"] = _peak_gib(torch, device)
    errors = [e for mode in modes for e in result[mode]["errors"]]
    if errors or result["graphs"]["max_rows_per_step"] < batch:
        result["status"] = "failed"
    g = result["graphs"]
    result["headline"] = (f"batch 1: {result['batch1_ms_per_token_graphs']} ms/token (graphs); batch {batch}: "
                          + ", ".join(f"{m} {result[m]['items_per_s']:.2f}" for m in modes)
                          + f" items/s; rows/step max {g['max_rows_per_step']}; same answers "
                          f"dyn/static {result['same_answers_dynamic_static']}, static/graphs "
                          f"{result['same_answers_static_graphs']}" + (f"; errors: {errors[:2]}" if errors else ""))
    return result


def step_fp32_parity(cpu: bool, out: Path) -> dict:
    """Greedy answers of the Engine (static cache + CUDA graphs, batched) equal the batch-1 ``model.chat`` loop,
    in float32 (a vocabulary the size of the bench tokenizer's, so every token decodes)."""
    from gpu_eval_throughput import items

    torch, device, model, tok = _decode_model(cpu, "float32", vocab_of_tokenizer=True)
    n_items, new_tokens, max_num = (4, 6, 2) if cpu else (16, 24, 6)
    work = items(n_items, model.config.vision_config.image_size[0], max_num)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    loop = [model.chat(tok, tiles.to(device), question, dict(gen)) for tiles, question in work]
    engine = engine_run(torch, device, model, tok, _prepared(model, work), n_items, new_tokens, "graphs")
    same = sum(a == b for a, b in zip(loop, engine["answers"]))
    return {"status": "ok" if same == n_items else "failed", "items": n_items, "new_tokens": new_tokens,
            "same_answers": f"{same}/{n_items}", "engine_items_per_s": engine["items_per_s"],
            "differing": [{"loop": a, "engine": b} for a, b in zip(loop, engine["answers"]) if a != b][:4],
            "headline": f"engine (static + graphs) == batch-1 chat loop in float32: {same}/{n_items}"}


def step_vla_2b(cpu: bool, out: Path) -> dict:
    """The VLA at InternVL3-2B shapes with the release's expert: one train step's time and act latency."""
    torch, device = _torch_setup(cpu)
    from bench_vla import PRESETS, inputs
    from gpu_train_throughput import build, create_on

    from vlaser.vla.config import preset
    from vlaser.vla.model import VLAModel

    dtype = torch.float32 if cpu else torch.bfloat16
    size = "tiny" if cpu else "2b"
    config = preset(PRESETS[size])
    model = create_on(device, dtype, VLAModel, build(size, device, dtype), config)
    batch = inputs(model, 1, device)
    act = []
    for _ in range(4 if cpu else 11):
        _sync(torch, device)
        tick = time.perf_counter()
        model.eval().sample_actions(**batch)
        _sync(torch, device)
        act.append(time.perf_counter() - tick)
    train = _vla_train_steps(torch, device, model, batch, 2 if cpu else 4)
    attention = model.vlm.config.text_config._attn_implementation
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "attention": attention,
            "act_ms": round(1000 * _median(act[1:]), 2), "train_step_s": round(_median(train["times"][1:]), 4),
            "train_losses": train["losses"], "peak_memory_gib": _peak_gib(torch, device),
            "headline": f"act {1000 * _median(act[1:]):.1f} ms/chunk, train step "
                        f"{_median(train['times'][1:]):.3f} s (batch 8), attention {attention}"}


def _vla_train_steps(torch, device: str, model, batch: dict, steps: int) -> dict:
    """AdamW steps of the flow-matching loss on a batch of 8 copies of ``batch`` with random target actions."""
    cfg = model.config
    big = {k: v.expand(8, *v.shape[1:]).contiguous() for k, v in batch.items() if k != "noise"}
    actions = torch.rand((8, cfg.chunk_size, cfg.action_dim), device=device) * 2 - 1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")
    model.train()
    times, losses = [], []
    for _ in range(steps):
        _sync(torch, device)
        tick = time.perf_counter()
        loss = model(**big, actions=actions).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(torch, device)
        times.append(time.perf_counter() - tick)
        losses.append(loss.item())
    return {"times": times, "losses": losses}


def step_deepspeed(cpu: bool, out: Path) -> dict:
    """Two steps of ``vlaser train`` on the tiny model under each shipped ZeRO-2/3 config (one process)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise StepSkippedError("deepspeed is not importable here (pip install --no-build-isolation deepspeed)")
    if cpu:
        raise StepSkippedError("deepspeed's ZeRO steps need CUDA (this is the --cpu run)")
    result, failed = {}, []
    for stage in (2, 3):
        work = out / f"deepspeed_zero{stage}"
        run = _tiny_train(work, ["--deepspeed", str(ROOT / f"recipes/deepspeed/zero_stage{stage}_config.json"),
                                 "--bf16", "True"])
        result[f"zero{stage}"] = run
        if run["exit_code"] != 0:
            failed.append(stage)
    return {"status": "failed" if failed else "ok", **result,
            "headline": "; ".join(f"ZeRO-{s}: " + ("losses " + " ".join(f"{v:.3f}" for v in result[f'zero{s}']
                                                                        ['losses']) if s not in failed else
                                                  "failed") for s in (2, 3))}


def _tiny_train(work: Path, extra: list[str]) -> dict:
    """``torchrun --nproc_per_node 1 -m vlaser train`` for 2 steps on a fresh tiny checkpoint and 4 images."""
    from PIL import Image

    from vlaser.model.tiny import build_tiny_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    checkpoint = build_tiny_checkpoint(work / "tiny", layout="original")
    rows = []
    for i, rgb in enumerate([(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20)]):
        Image.new("RGB", (80, 56), rgb).save(work / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "What colour is the image?"}, {"from": "gpt", "value": f"{i}"}]})
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"colours": {"root": str(work), "annotation": str(work / "data.jsonl")}}
    (work / "meta.json").write_text(json.dumps(meta))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "vlaser",
           "train", "--model_name_or_path", str(checkpoint), "--meta_path", str(work / "meta.json"),
           "--output_dir", str(work / "out"), "--conv_style", "internvl2_5", "--force_image_size", "56",
           "--max_dynamic_patch", "2", "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1",
           "--save_strategy", "no",
           "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "True", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    state = work / "out" / "trainer_state.json"
    losses = ([e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e]
              if state.is_file() else [])
    return {"exit_code": proc.returncode, "losses": losses,
            "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}


STEP_FUNCTIONS = {"gpu_tests": step_gpu_tests, "sft_2b": step_sft_2b, "decode_2b": step_decode_2b,
                  "sft_8b": step_sft_8b, "fp32_parity": step_fp32_parity, "vla_2b": step_vla_2b,
                  "deepspeed": step_deepspeed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--part", type=int, choices=sorted(STEPS))
    which.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help="one step, in this process")
    ap.add_argument("--cpu", action="store_true", help="the tiny model on the CPU (checks this script)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "device-check"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step:
        run_one(args.step, args.out, args.cpu)
        return 0
    results = run_part(args.part, args.out, args.cpu)
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

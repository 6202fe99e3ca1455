"""Evaluation throughput of the real InternVL3-2B architecture (random weights): `batch_chat` at batch 32 against
a loop of batch-1 `model.chat` calls, the way a benchmark is asked.

For a lent GPU (the device tool): bf16, the model made on the device (no CPU init); --items questions, each about
one image tiled by `load_image` (--max-num; the images' sizes vary, so items have different tile counts and prompt
lengths, as in a benchmark). Both paths generate exactly --new-tokens tokens (min_new_tokens = max_new_tokens),
greedily, and are timed on the model only (tiles are made before timing). Prints items/s of each, the speed-up, and
how many answers are identical: random weights make near-ties, where a batched bf16 kernel may pick another token,
so `--dtype float32` is the check that the two paths agree. The bench tokenizer knows fewer tokens than the real
vocabulary; the others are suppressed, so every answer decodes to text that can be compared. `--engine` also runs
the continuous-batching Engine (max_batch_size --batch-size) twice: as is, and with a static KV cache
(static_capacity: the longest prompt plus --new-tokens) and, on CUDA, a CUDA graph per batch bucket; each prints
items/s and ms per decode step (all running rows, one token each). The Engine knows no logits processor, so with the
bench tokenizer its answers may hold ids the tokenizer skips: they are compared with each other, not with
batch_chat. `--tiny` runs the same code path with the tiny test model on the CPU, to check the script itself. Usage:
python bench/gpu_eval_throughput.py [--items 64] [--batch-size 32] [--new-tokens 32] [--max-num 6] [--engine] """

import argparse
import time

import numpy as np
import torch
from gpu_train_throughput import build as build_on_device
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from vlaser import load_image
from vlaser.inference import GenerationParams, Prepared
from vlaser.inference.engine import Engine
from vlaser.model.chat import InternVLChat
from vlaser.model.convert import original_to_hf_config
from vlaser.model.loading import build_hf_config
from vlaser.model.template import build_chat_prompt
from vlaser.model.tiny import randomize_, tiny_original_config, tiny_tokenizer

SIZES = [(1920, 1080), (640, 480), (1000, 1000), (800, 1200), (1280, 720), (500, 900)]


def build(tiny: bool, device: str, dtype: torch.dtype):
    """The model (tiny, or InternVL3-2B's shapes made on the device) with random weights, and the bench tokenizer
    (the tiny model's vocabulary is made larger than it too, so the suppression is checked as well)."""
    tok = tiny_tokenizer()
    image_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    if not tiny:
        return build_on_device("2b", device, dtype, image_token_id).eval(), tok
    config = tiny_original_config(len(tok) + 64)
    model = InternVLChat(build_hf_config(original_to_hf_config(config, image_token_id)))
    randomize_(model, 0)
    return model.to(device=device, dtype=dtype).eval(), tok


def items(n: int, image_size: int, max_num: int) -> list[tuple[torch.Tensor, str]]:
    """``(tiles, question)`` per item: synthetic photos of varied sizes, tiled like the eval runner does."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        w, h = SIZES[k % len(SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        thing = ["cup", "red block", "drawer handle", "bowl"][k % 4]
        question = f"Point to the {thing} in the image." + " Why?" * (k % 3)
        out.append((load_image(Image.fromarray(pixels), input_size=image_size, max_num=max_num), question))
    return out


class KnownTokens(LogitsProcessor):
    """Only ids the tokenizer has can be generated (one slice per step: no per-call set-up to skew the timing)."""

    def __init__(self, known: int) -> None:
        self.known = known

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.known:] = float("-inf")
        return scores


def timed(fn, device: str) -> tuple[float, list[str]]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    answers = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, answers


def run_engine(model, tok, work, args, device: str, static: bool) -> tuple[float, float, list[str]]:
    """Seconds, ms per decode step and answers of one Engine over ``work`` (``static``: a static cache that
    fits the longest item, and CUDA graphs on CUDA), after a warm-up over the first items (with graphs, that
    captures the buckets it meets; the rest are captured during the timed run)."""
    prepared = [Prepared(build_chat_prompt(q, model.conv_template, [t.shape[0]], model.num_image_token,
                                           system_message=model.system_message)[1], t, [t.shape[0]], [])
                for t, q in work]
    params = GenerationParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    capacity = max(len(tok(p.prompt)["input_ids"]) for p in prepared) + args.new_tokens
    engine = Engine(model, tok, max_batch_size=args.batch_size, max_batch_tokens=args.batch_size * capacity,
                    static_capacity=capacity if static else None, cuda_graphs=static and device == "cuda")
    engine.generate(prepared[:2], params)
    steps, decode = [], engine._decode

    def timed_decode(rows):  # the step already waits for the device (its tokens go to the host)
        start = time.perf_counter()
        decode(rows)
        steps.append(time.perf_counter() - start)

    engine._decode = timed_decode
    seconds, done = timed(lambda: engine.generate(prepared, params), device)
    return seconds, 1000 * sum(steps) / max(len(steps), 1), [c.text for c in done]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-num", type=int, default=6)
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bf16 (float32 --tiny)")
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the script)")
    ap.add_argument("--engine", action="store_true", help="also the Engine, dynamic and static (+ CUDA graphs)")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    model, tok = build(args.tiny, device, dtype)
    size = model.config.vision_config.image_size[0]
    work = items(args.items, size, args.max_num)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    if model.config.text_config.vocab_size > len(tok):
        gen["logits_processor"] = LogitsProcessorList([KnownTokens(len(tok))])

    def singles(chunk=work):
        return [model.chat(tok, tiles.to(device), question, dict(gen)) for tiles, question in chunk]

    def batches(chunk=work):
        answers = []
        for start in range(0, len(chunk), args.batch_size):
            part = chunk[start:start + args.batch_size]
            answers += model.batch_chat(tok, torch.cat([t for t, _ in part]).to(device), [q for _, q in part],
                                        dict(gen), num_patches_list=[t.shape[0] for t, _ in part])
        return answers

    singles(work[:2]), batches(work[:2])  # warm-up: kernels, allocator
    t_single, single = timed(singles, device)
    t_batch, batched = timed(batches, device)
    same = sum(a == b for a, b in zip(single, batched))
    tiles = [t.shape[0] for t, _ in work]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device={name} dtype={str(dtype).removeprefix('torch.')} items={args.items} tiles/item={min(tiles)}-"
          f"{max(tiles)} new_tokens={args.new_tokens}")
    print(f"model.chat loop (batch 1): {args.items / t_single:8.2f} items/s  ({t_single:.1f} s)")
    print(f"batch_chat (batch {args.batch_size}):     {args.items / t_batch:8.2f} items/s  ({t_batch:.1f} s)")
    print(f"speed-up {t_single / t_batch:.2f}x (target >= 5x); identical greedy answers: {same}/{args.items}")
    if args.engine:
        t_dyn, ms_dyn, dyn = run_engine(model, tok, work, args, device, static=False)
        t_st, ms_st, st = run_engine(model, tok, work, args, device, static=True)
        graphs = " + CUDA graphs" if device == "cuda" else ""
        print(f"Engine (batch {args.batch_size}):        {args.items / t_dyn:8.2f} items/s  ({t_dyn:.1f} s)  "
              f"{ms_dyn:.2f} ms/decode step")
        print(f"Engine static{graphs}: {args.items / t_st:8.2f} items/s  ({t_st:.1f} s)  {ms_st:.2f} ms/decode "
              f"step; identical answers to the dynamic Engine: {sum(a == b for a, b in zip(dyn, st))}/{args.items}")
    if device == "cuda":
        print(f"max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

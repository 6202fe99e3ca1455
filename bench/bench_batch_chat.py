"""Throughput of `batch_chat` (8 prompts, one left-padded batch) vs 8 separate `chat` calls, tiny model, CPU.

Both generate exactly the same number of tokens (min_new_tokens = max_new_tokens), greedy, float32.
Usage: python bench/bench_batch_chat.py [--prompts 8] [--new-tokens 32] [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import torch

import vlaser
from vlaser.model.tiny import build_tiny_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = vlaser.load_model(build_tiny_checkpoint(f"{tmp}/tiny"), dtype=torch.float32, device="cpu")
    questions = [f"Question {i}: what is on the table{'?' * (i + 1)}" for i in range(args.prompts)]
    tiles = [1 + i % 3 for i in range(args.prompts)]
    pixel_values = torch.randn(sum(tiles), 3, 56, 56)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    def singles():
        start, out = 0, []
        for n, q in zip(tiles, questions):
            out.append(model.chat(tok, pixel_values[start:start + n], q, dict(gen)))
            start += n
        return out

    def batched():
        return model.batch_chat(tok, pixel_values, questions, dict(gen), num_patches_list=tiles)

    assert batched() == singles(), "batch_chat must give the same greedy answers as chat"
    t_single, t_batch = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        singles()
        t_single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched()
        t_batch.append(time.perf_counter() - t0)
    tokens = args.prompts * args.new_tokens
    s, b = statistics.median(t_single), statistics.median(t_batch)
    print(f"threads={torch.get_num_threads()} prompts={args.prompts} new_tokens={args.new_tokens}")
    print(f"{args.prompts} x chat:  {s:.3f} s  {tokens / s:8.1f} tokens/s")
    print(f"batch_chat:   {b:.3f} s  {tokens / b:8.1f} tokens/s")
    print(f"speed-up: {s / b:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()

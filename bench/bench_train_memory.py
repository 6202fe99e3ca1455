"""CPU peak memory of one training step on a packed row with Qwen2's full vocabulary: chunked vs plain loss.

A random model of tiny width but InternVL3's vocabulary (151,674) makes the loss head dominate memory, as
it does at 2B scale. Each loss runs in its own subprocess; the bench prints the peak RSS of the process and
the rise of the peak during the step (forward, backward, AdamW) over the RSS just before it.
Usage: python bench/bench_train_memory.py [--tokens 2048] [--vocab 151674]
"""

import argparse
import json
import resource
import subprocess
import sys

import torch

from vlaser.model.chat import InternVLChat
from vlaser.model.convert import original_to_hf_config
from vlaser.model.loading import build_hf_config
from vlaser.model.tiny import randomize_, tiny_original_config


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_step(loss_impl: str, tokens: int, vocab: int, samples: int) -> dict:
    """Build the model, run one packed training step, return RSS before and peak RSS (MiB)."""
    torch.manual_seed(0)
    model = InternVLChat(build_hf_config(original_to_hf_config(tiny_original_config(vocab_size=vocab),
                                                               image_token_id=3)))
    randomize_(model, 0)
    model.train()
    per_tile, size = model.config.image_seq_length, model.config.vision_config.image_size[0]
    ids = torch.randint(10, vocab, (1, tokens))
    ids[0, :per_tile] = model.config.image_token_id
    lengths = [tokens // samples] * (samples - 1) + [tokens - tokens // samples * (samples - 1)]
    batch = dict(input_ids=ids, labels=ids.clone(), position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
                 pixel_values=torch.randn(1, 3, size, size), image_flags=torch.ones(1, dtype=torch.long),
                 loss_weight=torch.ones(1, tokens))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    before = _rss_mib()
    loss = model(**batch, loss_impl=loss_impl).loss
    loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loss": loss.item(), "before_mib": before, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=151674)
    ap.add_argument("--samples-per-row", type=int, default=8)
    ap.add_argument("--child", choices=["chunked", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child, args.tokens, args.vocab, args.samples_per_row)))
        return
    results = {}
    for impl in ("plain", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", impl, "--tokens", str(args.tokens), "--vocab",
                              str(args.vocab), "--samples-per-row", str(args.samples_per_row)],
                             check=True, capture_output=True, text=True).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
        r = results[impl]
        print(f"{impl:8s} loss={r['loss']:.6f} peak RSS={r['peak_mib']:,.0f} MiB  "
              f"step rise={r['peak_mib'] - r['before_mib']:,.0f} MiB")
    rise = {k: v["peak_mib"] - v["before_mib"] for k, v in results.items()}
    peak = {k: v["peak_mib"] for k, v in results.items()}
    print(f"tokens={args.tokens} vocab={args.vocab}: step memory plain/chunked = "
          f"{rise['plain'] / rise['chunked']:.1f}x, peak RSS plain/chunked = {peak['plain'] / peak['chunked']:.1f}x")


if __name__ == "__main__":
    main()

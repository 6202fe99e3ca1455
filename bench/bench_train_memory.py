"""The loss head of one training step at InternVL3-2B's width and vocabulary, on the CPU: plain vs chunked loss.

At 2B scale the loss head dominates a step's memory: ``(tokens, 151,674)`` float32 logits, their gradient and
the softmax. The chunked loss (``vlaser.model.loss.chunked_lm_loss``) never holds more than one chunk of them,
but every chunk reads the whole head (1536 x 151,674) again, in forward, recompute and backward, and adds its
own head gradient into the total. This bench runs the head step alone (hidden states in, loss, backward into
the hidden states and the head) with the plain loss and with the chunked loss at several chunk sizes, each in a
subprocess of its own, and prints the time and the peak RSS rise during the step, so the default chunk size
(``CHUNK_TOKENS``) comes from a measurement. Everything is float32 and every token is supervised (the worst case).
Usage: python bench/bench_train_memory.py [--tokens 4096] [--chunks 256,512,1024,2048,4096] [--hidden 1536]
       [--vocab 151674] [--repeats 1]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from vlaser.model.loss import CHUNK_TOKENS, chunked_lm_loss, weighted_lm_loss


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def head_step(chunk: int, tokens: int, hidden_size: int, vocab: int, repeats: int) -> dict:
    """CPU seconds per head step (the best of ``repeats``), RSS before and peak RSS (MiB), loss; ``chunk`` 0: plain.
    CPU time, not wall time: on a shared machine it still counts only this process's work."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=gen) * hidden_size**-0.5)
    hidden = torch.randn(1, tokens, hidden_size, generator=gen).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), generator=gen)
    before, times = _rss_mib(), []
    for _ in range(repeats):
        head.weight.grad = hidden.grad = None
        start = time.process_time()
        if chunk:
            loss = chunked_lm_loss(head, hidden, labels, chunk_tokens=chunk)
        else:
            loss = weighted_lm_loss(head(hidden), labels)
        loss.backward()
        times.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": min(times), "before_mib": before, "peak_mib": peak, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096, help="supervised tokens in the step")
    ap.add_argument("--chunks", default="256,512,1024,2048,4096", help="chunk sizes in tokens, comma-separated")
    ap.add_argument("--hidden", type=int, default=1536, help="hidden size (2B: 1536, 8B: 3584)")
    ap.add_argument("--vocab", type=int, default=151674)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(head_step(args.child, args.tokens, args.hidden, args.vocab, args.repeats)))
        return
    print(f"loss head step: {args.tokens} tokens, hidden {args.hidden}, vocabulary {args.vocab}, float32, "
          f"{torch.get_num_threads()} threads; default chunk {CHUNK_TOKENS} tokens")
    plain = None
    for chunk in [0] + [int(c) for c in args.chunks.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(chunk), "--tokens", str(args.tokens), "--hidden",
                              str(args.hidden), "--vocab", str(args.vocab), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rise = r["peak_mib"] - r["before_mib"]
        plain = plain or {"seconds": r["seconds"], "rise": rise, "loss": r["loss"]}
        name = "plain" if not chunk else f"chunk {chunk}"
        print(f"{name:11s} {r['seconds']:7.2f} CPU s ({r['seconds'] / plain['seconds']:4.2f}x plain)  step rise "
              f"{rise:7,.0f} MiB ({rise / plain['rise']:4.2f}x plain)  peak RSS {r['peak_mib']:7,.0f} MiB  "
              f"loss {r['loss']:.6f} (diff {r['loss'] - plain['loss']:+.1e})", flush=True)


if __name__ == "__main__":
    main()

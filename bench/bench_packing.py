"""Packed vs unpacked SFT on the tiny model, CPU: samples/s and the fraction of real (non-padding) tokens.

A mixed-length synthetic set (pure text of 10..600 words, and one-image samples) is trained for one pass
both ways with the same optimizer; each step is forward + backward + AdamW.
Usage: python bench/bench_packing.py [--samples 192] [--batch 8] [--pack-tokens 4096]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlaser
from vlaser.data.collator import SFTCollator
from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.data.packing import PackedCollator, PackedSFTDataset
from vlaser.model.packed_attention import use_packed_attention
from vlaser.model.tiny import build_tiny_checkpoint

SENTENCE = "the robot arm picks up the blue bowl and places it next to the red cube on the table"
WORDS = SENTENCE.split(" ")


def make_data(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    Image.new("RGB", (120, 56), (200, 40, 40)).save(root / "img.png")
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 600))))
        row = {"conversations": [{"from": "human", "value": f"Describe step {i}."}, {"from": "gpt", "value": answer}]}
        if i % 4 == 0:
            row["image"] = "img.png"
        rows.append(row)
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "meta.json").write_text(json.dumps({"d": {"root": str(root), "annotation": str(root / "d.jsonl")}}))
    return root / "meta.json"


def run(model, batches) -> tuple[float, int, int]:
    """Seconds, real tokens and total tokens (incl. padding) for one pass over the batches."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    real = total = 0
    start = time.perf_counter()
    for batch in batches:
        real += batch.pop("n_tokens")
        batch.pop("skipped")
        total += batch["input_ids"].numel()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start, real, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pack-tokens", type=int, default=4096)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tok = vlaser.load_model(build_tiny_checkpoint(root / "tiny"), dtype=torch.float32, device="cpu")
        model.train()
        config = DataConfig(num_image_token=4, force_image_size=56, max_dynamic_patch=4, dynamic_image_size=True,
                            use_thumbnail=True)
        dataset = SFTDataset(make_data(root, args.samples), tok, config)
        samples = [dataset[i] for i in range(len(dataset))]
        collate = SFTCollator(tok.pad_token_id)
        order = np.random.default_rng(0).permutation(len(samples))
        unpacked = [collate([samples[j] for j in order[i:i + args.batch]]) for i in range(0, len(order), args.batch)]
        packer = PackedSFTDataset(dataset, args.pack_tokens, num_images_expected=64)
        packed = [PackedCollator(tok.pad_token_id)([row]) for row in packer._epoch(0, [])]
        t_u, real_u, total_u = run(model, unpacked)
        use_packed_attention(model)  # what `vlaser train --use_packed_ds` does without flash-attention
        t_p, real_p, total_p = run(model, packed)
    n = len(samples)
    print(f"threads={torch.get_num_threads()} samples={n} batch={args.batch} pack_tokens={args.pack_tokens}")
    for name, steps, t, real, total in (("unpacked", len(unpacked), t_u, real_u, total_u),
                                        ("packed", len(packed), t_p, real_p, total_p)):
        print(f"{name:9s} {steps:4d} steps {t:6.2f} s {n / t:7.1f} samples/s  real tokens {real / total:6.1%}")
    print(f"speed-up {t_u / t_p:.2f}x (targets: packed >= 95% real tokens and >= 1.5x samples/s)")


if __name__ == "__main__":
    main()

"""`eval run` items/s at batch size 8 vs 1 on the tiny model (CPU), with identical predictions.

A synthetic Where2Place set (640x480 images and masks in RoboPoint's layout) is answered twice. (On a
GPU the next batch's images are prepared on a thread during generation; on this CPU that thread only
competed with generation, so it is off here.) Timed without report pictures
(they cost the same per item at any batch size); one run with the default 50 pictures is timed too.
Usage: python bench/bench_eval.py [--items 48] [--new-tokens 100]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlaser.eval.backends import TransformersBackend
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.runner import run
from vlaser.model.tiny import build_tiny_checkpoint


def make_where2place(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(n):
        shade = np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None] + rng.integers(0, 30, (480, 1, 3), np.uint8)
        Image.fromarray(np.broadcast_to(shade, (480, 640, 3)).copy()).save(root / "images" / f"{i}.jpg")
        mask = np.zeros((480, 640), dtype=np.uint8)
        mask[150:330, 200:440] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.jpg")
        lines.append({"question_id": i, "image": f"{i}.jpg", "category": "seen",
                      "text": f"Find free space number {i} between the objects. Your answer should be formatted..."})
    (root / "point_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=100)  # the pointing benchmarks' default
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_where2place(root / "w2p", args.items)
        backend = TransformersBackend(str(build_tiny_checkpoint(root / "tiny")), dtype=torch.float32, device="cpu")
        bench = get_benchmark("where2place")
        times, preds = {}, {}
        for batch in (1, 8):
            out = root / f"b{batch}"
            start = time.perf_counter()
            run(bench, backend, data, out, batch_size=batch, max_new_tokens=args.new_tokens, pictures=0)
            times[batch] = time.perf_counter() - start
            preds[batch] = (out / "predictions.jsonl").read_text()
        start = time.perf_counter()
        run(bench, backend, data, root / "pictures", batch_size=8, max_new_tokens=args.new_tokens)
        with_pictures = time.perf_counter() - start
    assert preds[1] == preds[8], "batched and single answers must be identical"
    print(f"threads={torch.get_num_threads()} items={args.items} max_new_tokens={args.new_tokens}")
    for batch, t in times.items():
        print(f"batch {batch}: {t:6.2f} s  {args.items / t:6.1f} items/s")
    print(f"speed-up {times[1] / times[8]:.2f}x (target >= 3x); predictions identical")
    print(f"batch 8 with 50 report pictures: {with_pictures:6.2f} s  {args.items / with_pictures:6.1f} items/s")


if __name__ == "__main__":
    main()

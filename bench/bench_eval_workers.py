"""Tiles/s of still images read and tiled for `vlaser eval run --workers N` on this machine.

Each round reads and tiles a folder of JPEG files, as the runner does for a batch: in this process (N = 0,
the prepare step's `tile` one after another, each with the tiling threads) or on N worker processes
(`ImageWorkers`, each with its share of the cores; tiles come back through shared memory). Workers are started
and warmed before timing. Medians over rounds; the tiles are checked equal to in-process ones first.
Usage: python bench/bench_eval_workers.py [--images 16] [--rounds 5] [--workers 0,1,2] [--max-num 12]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from vlaser.eval.runner import ImageWorkers
from vlaser.inference.prepare import Preparer, tile
from vlaser.model.settings import ProcessorSettings

SETTINGS = ProcessorSettings()  #: InternVL3's released tiling (448 px tiles, thumbnail)


def photos(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """Full-HD JPEGs with smooth content and some noise (a random-noise JPEG would decode unrealistically slowly)."""
    y, x = np.mgrid[0:1080, 0:1920]
    paths = []
    for k in range(count):
        base = np.stack([(x * (k + 1)) % 256, (y * 3 + k * 40) % 256, (x + y) // 12 % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"photo{k}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def one_round(workers: ImageWorkers, paths: list[Path], max_num: int) -> list[torch.Tensor]:
    pending = workers.start([(path, max_num) for path in paths])
    if pending is None:
        return [tile(path, max_num, SETTINGS)[1] for path in paths]
    return [pending[path, max_num].result()[1] for path in paths]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--max-num", type=int, default=12)
    args = ap.parse_args()
    # the local backend's tiling call (the prepare step's), with InternVL3's settings and no model
    backend = SimpleNamespace(tiles_locally=True, tiling=Preparer(SimpleNamespace(processor_settings=SETTINGS)).tiling)
    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp), args.images, np.random.default_rng(0))
        reference = one_round(ImageWorkers(0, backend), paths, args.max_num)
        n_tiles = sum(t.shape[0] for t in reference)
        print(f"{args.images} JPEG files of 1920x1080, max_num {args.max_num}: {n_tiles} tiles a round")
        for n in (int(v) for v in args.workers.split(",")):
            with ImageWorkers(n, backend) as workers:
                tiles = one_round(workers, paths, args.max_num)  # starts and warms the workers
                assert all(torch.equal(a, b) for a, b in zip(tiles, reference)), "tiles must be identical"
                times = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    one_round(workers, paths, args.max_num)
                    times.append(time.perf_counter() - start)
            print(f"workers {n}: {n_tiles / statistics.median(times):7.1f} tiles/s "
                  f"({args.images / statistics.median(times):5.1f} images/s; median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()

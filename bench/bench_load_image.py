"""`load_image` vs the straightforward per-tile pipeline of the seed, on this CPU.

The baseline is `dynamic_preprocess` (PIL crops) and, per tile, a torchvision-style ToTensor + Normalize
(float conversion, then a normalised copy), then `torch.stack`. `load_image` resizes the thumbnail on a
worker thread beside the canvas and converts all tiles in one pass. Outputs are checked identical first.
Usage: python bench/bench_load_image.py [--repeats 15]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from vlaser import dynamic_preprocess, load_image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_tensor_normalize(tile: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.array(tile)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return x.clone().sub_(MEAN).div_(STD)


def per_tile(image: Image.Image, max_num: int) -> torch.Tensor:
    tiles = dynamic_preprocess(image, max_num=max_num, use_thumbnail=True)
    return torch.stack([to_tensor_normalize(t) for t in tiles])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"threads={torch.get_num_threads()}")
    for w, h, max_num in [(640, 480, 12), (1920, 1080, 12), (1920, 1080, 6), (448, 448, 12)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fast, slow = load_image(image, max_num=max_num), per_tile(image, max_num)
        assert torch.equal(fast, slow), "outputs must be identical"
        times = {}
        fns = {"per-tile": lambda im=image, m=max_num: per_tile(im, m),
               "load_image": lambda im=image, m=max_num: load_image(im, max_num=m)}
        for name, fn in fns.items():
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            times[name] = statistics.median(runs)
        n = fast.shape[0]
        print(f"{w}x{h} max_num={max_num}: {n} tiles | per-tile {n / times['per-tile']:7.1f} tiles/s | "
              f"load_image {n / times['load_image']:7.1f} tiles/s | {times['per-tile'] / times['load_image']:.2f}x")

if __name__ == "__main__":
    main()

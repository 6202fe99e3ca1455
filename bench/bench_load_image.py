"""`load_image` against the original InternVL pipeline, tiles/s on this CPU.

The original: `dynamic_preprocess` (one PIL bicubic resize of the whole image to the grid, crops, a thumbnail
resize), then per tile torchvision's `Compose([RGB, Resize((448, 448), BICUBIC), ToTensor(), Normalize])`, then
`torch.stack`. With torchvision importable the baseline is exactly that; without it, the same steps written
with torch as torchvision takes them (the Resize copy of a 448 tile, `to(float).div(255)`, Normalize's clone,
`sub_(mean)`, `div_(std)`) per tile. The baseline is timed with torch's default threads and with one thread
(torch's threads can slow down on a busy machine), and the ratio is taken against the faster. The pipelines
take turns in blocks of --block runs (each in its steady state, as when a stream of images is loaded, while a
shared machine's changing load falls on all alike); medians are reported, with the CPU time each took (on a busy
machine a second core is not free, and CPU time is what remains comparable). Outputs are checked identical first.
Usage: python bench/bench_load_image.py [--repeats 30] [--block 5]
"""

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from vlaser import load_image
from vlaser.model.preprocess import tile_grid

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def original_tiles(image: Image.Image, max_num: int, size: int = 448) -> list[Image.Image]:
    """InternVL's `dynamic_preprocess` with a thumbnail: whole-image resize to the grid, crops, thumbnail."""
    cols, rows = tile_grid(*image.size, max_num=max_num, image_size=size)
    resized = image.resize((cols * size, rows * size))
    tiles = [resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
             for r in range(rows) for c in range(cols)]
    return tiles + [image.resize((size, size))] if len(tiles) != 1 else tiles


def baseline() -> tuple[str, Callable[[Image.Image, int], torch.Tensor]]:
    """(name, pipeline): torchvision's transform when it imports, else the same ops written with torch."""
    try:
        import torchvision.transforms as T  # noqa: N812
        from torchvision.transforms.functional import InterpolationMode

        transform = T.Compose([T.Lambda(lambda im: im.convert("RGB") if im.mode != "RGB" else im),
                               T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC),
                               T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])
        name = "torchvision per-tile pipeline"
    except Exception as e:  # torchvision built for another torch fails in many ways (ImportError, RuntimeError)
        print(f"torchvision does not import here ({type(e).__name__}: {str(e)[:80]}): "
              "the baseline is the per-tile pipeline with torch ops in torchvision's order")

        def transform(tile: Image.Image) -> torch.Tensor:
            """torchvision's steps: RGB, Resize (Pillow copies a tile already 448 square), ToTensor, Normalize."""
            tile = tile.convert("RGB") if tile.mode != "RGB" else tile
            tile = tile.resize((448, 448), Image.BICUBIC)
            x = torch.from_numpy(np.array(tile, np.uint8, copy=True)).view(448, 448, 3).permute(2, 0, 1).contiguous()
            x = x.to(dtype=torch.get_default_dtype()).div(255)
            x = x.clone()  # Normalize(inplace=False)
            mean, std = torch.as_tensor(MEAN, dtype=x.dtype), torch.as_tensor(STD, dtype=x.dtype)
            if (std == 0).any():
                raise ValueError("std has a zero")
            return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        name = "per-tile pipeline (no torchvision)"
    return name, lambda image, max_num: torch.stack([transform(t) for t in original_tiles(image, max_num)])


def timed(fn: Callable[[], object], cpu: list[float]) -> float:
    """Wall seconds of one call; its CPU seconds (all threads) are appended to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30, help="runs of each pipeline per setting")
    ap.add_argument("--block", type=int, default=5, help="runs in a row before switching pipelines")
    args = ap.parse_args()
    name, original = baseline()
    threads = torch.get_num_threads()
    print(f"baseline: {name}; torch threads {threads} (and 1)")
    rng = np.random.default_rng(0)
    for w, h, max_num in [(1920, 1080, 12), (1920, 1080, 6), (640, 480, 12), (448, 448, 12)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fast = load_image(image, max_num=max_num)
        assert torch.equal(fast, original(image, max_num)), "outputs must be identical"
        runs: dict[str, list[float]] = {"baseline": [], "baseline-1-thread": [], "load_image": []}
        cpu: dict[str, list[float]] = {key: [] for key in runs}
        slow = functools.partial(original, image, max_num)
        fast_fn = functools.partial(load_image, image, max_num=max_num)
        for _ in range(max(1, args.repeats // args.block)):
            for key, fn, torch_threads in (("baseline", slow, threads), ("baseline-1-thread", slow, 1),
                                           ("load_image", fast_fn, threads)):
                torch.set_num_threads(torch_threads)
                runs[key] += [timed(fn, cpu[key]) for _ in range(args.block)]
        torch.set_num_threads(threads)
        n = fast.shape[0]
        rate = {key: n / statistics.median(values) for key, values in runs.items()}
        base = max(rate["baseline"], rate["baseline-1-thread"])
        print(f"{w}x{h} max_num={max_num}: {n} tiles | baseline {rate['baseline']:7.1f} tiles/s "
              f"(1 thread {rate['baseline-1-thread']:7.1f}) | load_image {rate['load_image']:7.1f} tiles/s | "
              f"{rate['load_image'] / base:.2f}x the faster baseline")
        print("    CPU ms per image (all threads; what a busy machine can give): " + ", ".join(
            f"{key} {1000 * statistics.median(values):.1f}" for key, values in cpu.items()))


if __name__ == "__main__":
    main()

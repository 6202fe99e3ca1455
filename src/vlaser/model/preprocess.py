"""InternVL's image and video preprocessing, reproduced exactly without torchvision.

Dynamic tiling (grid choice, tie rule, row-major crops, thumbnail), PIL bicubic resizing and ImageNet
normalisation follow the original ``dynamic_preprocess`` / ``build_transform`` / ``load_image`` /
``get_index`` / ``load_video`` bit for bit. Every other part of vlaser tiles images through this module.
For speed, resizes give Pillow's pixels from compiled kernels whose row bands run on threads (``resample``), and
tiles are normalised through a per-byte table that holds torchvision's own results.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlaser.errors import UserInputError, require
from vlaser.model.constants import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from vlaser.model.resample import Resize, kernels, pixels

ImageInput = str | os.PathLike | bytes | np.ndarray | Image.Image

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


class ImageLoadError(UserInputError):
    """An image (or video) could not be read; the message names the file or the input."""


def to_pil(image: ImageInput) -> Image.Image:
    """Open a path, encoded bytes, an ``HxW``/``HxWxC`` uint8 array or a PIL image as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if isinstance(image, (bytes, bytearray)):
        source, opener = f"<{len(image)} bytes>", lambda: io.BytesIO(image)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageLoadError(f"image file not found: {path}")
        source, opener = str(path), lambda: path
    else:
        raise TypeError(f"expected a path, bytes, numpy array or PIL image, got {type(image).__name__}")
    try:
        with Image.open(opener()) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageLoadError(f"cannot read image {source}: {e}") from e


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0 and array.max() <= 1:
            array = np.round(array * 255)
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_threads = min(4, available_cores())


def set_threads(n: int) -> None:
    """Threads one tiling call spreads its resizes over (default: the available cores, at most 4).

    Worker processes that tile images side by side give each a share of the cores instead.
    """
    global _threads
    if n < 1:
        raise ValueError(f"tiling threads must be at least 1, got {n}")
    _threads = n
    _pool.cache_clear()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Worker threads for the row bands of resizes and the tiles' lookups (the kernels run without the GIL), created on
    first use. Only leaf work is submitted here, so no task ever waits on another in this pool."""
    return ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="vlaser-tiles")


if hasattr(os, "register_at_fork"):  # a forked worker process has none of the parent's threads: a pool of its own
    os.register_at_fork(after_in_child=_pool.cache_clear)


def target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Candidate ``(cols, rows)`` grids, in the original order.

    The original builds them from a Python ``set`` and stable-sorts by tile count, so grids with the same
    count keep the set's iteration order; that order decides ties, so it is reproduced literally here.
    """
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(
    aspect_ratio: float, ratios: Sequence[tuple[int, int]], width: int, height: int, image_size: int
) -> tuple[int, int]:
    """The grid whose ``cols/rows`` is closest to ``aspect_ratio``.

    On an exact tie the later (larger) grid wins only if the image area exceeds half of that grid's area.
    """
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448) -> tuple[int, int]:
    """The ``(cols, rows)`` grid ``dynamic_preprocess`` picks for an image of this size."""
    return find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num), width, height, image_size)


def dynamic_preprocess(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = False
) -> list[Image.Image]:
    """Split an image into ``image_size`` tiles on the best grid, plus a thumbnail when there are several."""
    grid, sizes = _layout(image.size, min_num, max_num, image_size, use_thumbnail)
    if image.mode != "RGB":  # in the image's own mode, as the original (Pillow premultiplies alpha, samples P...)
        resized = [image.resize(size, Image.BICUBIC) for size in sizes]
        return [resized[k].crop(box) for k, box in _tile_boxes(grid, image_size, len(sizes))]
    return [Image.frombuffer("RGBX", crop.shape[1::-1], np.ascontiguousarray(crop), "raw", "RGBX", 0, 1).convert("RGB")
            for crop in _crops(_resized(image, sizes), grid, image_size)]


def _layout(size: tuple[int, int], min_num: int, max_num: int, image_size: int, use_thumbnail: bool
            ) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The ``(cols, rows)`` grid and the resizes ``dynamic_preprocess`` makes: the grid, then the thumbnail."""
    cols, rows = tile_grid(*size, min_num=min_num, max_num=max_num, image_size=image_size)
    sizes = [(image_size * cols, image_size * rows)]
    if use_thumbnail and rows * cols != 1:
        sizes.append((image_size, image_size))
    return (cols, rows), sizes


def _tile_boxes(grid: tuple[int, int], s: int, resizes: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(resize index, box)`` of every tile in the original order: the grid row-major, then the thumbnail."""
    cols, rows = grid
    boxes = [(0, (c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
    return boxes + [(1, (0, 0, s, s))] * (resizes - 1)


def _crops(arrays: list[np.ndarray], grid: tuple[int, int], s: int) -> list[np.ndarray]:
    """The tiles as views into the resized ``(H, W, 4)`` pixel arrays."""
    return [arrays[k][y0:y1, x0:x1] for k, (x0, y0, x1, y1) in _tile_boxes(grid, s, len(arrays))]


def _run(tasks: list[Callable[[], object]]) -> None:
    """Run the tasks on the tiling threads (in this thread if there is one of either) and wait for all of them;
    the first error is raised. Only leaf work comes here, so no task ever waits on another."""
    if _threads == 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    futures = [_pool().submit(task) for task in tasks]
    wait(futures)
    for future in futures:
        future.result()


_SMALL = 448 * 448  # output pixels of a lone resize run in the caller: a thread hand-off would cost more than it saves


def _resized(image: Image.Image, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """An RGB image resized to each of ``sizes`` as Pillow's BICUBIC would (``(H, W, 4)`` pixels): the resizes run
    side by side, each pass cut into row bands over the tiling threads, unless one small resize is all."""
    source = pixels(image)
    small = len(sizes) == 1 and sizes[0][0] * sizes[0][1] <= _SMALL
    jobs = [Resize(source, size, parts=1 if small else _threads) for size in sizes]
    for stage in range(max(len(job.stages) for job in jobs)):
        _run([task for job in jobs if stage < len(job.stages) for task in job.stages[stage]])
    return [job.out for job in jobs]


def _normalize(chw_uint8: torch.Tensor) -> torch.Tensor:
    # Same float32 ops, in the same order, as torchvision's ToTensor + Normalize: x / 255, - mean, / std.
    return chw_uint8.to(torch.float32).div_(255).sub_(_MEAN).div_(_STD)


@functools.cache
def _tables() -> np.ndarray:
    """``(3, 256)`` float32: per channel, the normalised value of every byte, made by torchvision's own op order
    (an exact lookup table, since each output element depends only on its byte and channel)."""
    return _normalize(torch.arange(256, dtype=torch.uint8).repeat(3, 1, 1)).squeeze(1).contiguous().numpy()


def _normalize_into(region: np.ndarray, out: np.ndarray) -> None:
    """Write the normalised float32 ``(3, h, w)`` of an ``(h, w, 4)`` pixel view into ``out``, by table lookup."""
    compiled = kernels()
    if compiled is not None:
        compiled.lookup(region, _tables(), out)
        return
    for channel, table in enumerate(_tables()):
        np.take(table, region[:, :, channel], out=out[channel])


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float32, ImageNet-normalised; what ``ToTensor`` + ``Normalize`` give."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    out = torch.empty((3, image.height, image.width))
    _normalize_into(pixels(image), out.numpy())
    return out


def build_transform(input_size: int = DEFAULT_IMAGE_SIZE) -> Callable[[Image.Image], torch.Tensor]:
    """The original per-tile transform: RGB, bicubic resize to ``input_size`` square, tensor, normalise."""

    def transform(image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if image.size != (input_size, input_size):
            image = image.resize((input_size, input_size), Image.BICUBIC)
        return pil_to_tensor(image)

    return transform


def image_to_tiles(
    image: Image.Image, max_num: int = 12, min_num: int = 1, image_size: int = 448, use_thumbnail: bool = True
) -> torch.Tensor:
    """``dynamic_preprocess`` + ``build_transform`` on every tile, as one ``(n_tiles, 3, S, S)`` tensor.

    The same numbers as transforming each tile separately: the resizes are Pillow's pixels (``resample``) and each
    tile is normalised through a table of torchvision's results, straight into its slot of the output.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    grid, sizes = _layout(image.size, min_num, max_num, image_size, use_thumbnail)
    crops = _crops(_resized(image, sizes), grid, image_size)
    out = torch.empty((len(crops), 3, image_size, image_size))
    slots = out.numpy()
    _tables()  # made once, here, before any thread needs it
    _run([functools.partial(_normalize_into, crop, slot) for crop, slot in zip(crops, slots)])
    return out


def load_image(
    image: ImageInput, input_size: int = DEFAULT_IMAGE_SIZE, max_num: int = 12, min_num: int = 1,
    use_thumbnail: bool = True,
) -> torch.Tensor:
    """The seed's ``load_image``: tiles of one image as ``pixel_values`` of shape ``(n_tiles, 3, S, S)``."""
    return image_to_tiles(to_pil(image), max_num=max_num, min_num=min_num, image_size=input_size,
                          use_thumbnail=use_thumbnail)


def load_images(
    images: Sequence[ImageInput], input_size: int = DEFAULT_IMAGE_SIZE, max_num: int = 12
) -> tuple[torch.Tensor, list[int]]:
    """Tiles of several images concatenated, and the tile count of each (``num_patches_list``)."""
    tiles = [load_image(im, input_size=input_size, max_num=max_num) for im in images]
    return torch.cat(tiles), [t.shape[0] for t in tiles]


def get_index(
    bound: tuple[float, float] | None, fps: float, max_frame: int, first_idx: int = 0, num_segments: int = 32
) -> np.ndarray:
    """Frame indices at the centres of ``num_segments`` equal segments of ``[start, end]`` (seconds)."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)])


def _open_video(path: Path):
    av = require("av", "video", "video input", package="PyAV")
    try:
        container = av.open(str(path))
        return container, container.streams.video[0]
    except (av.FFmpegError, IndexError) as e:
        raise ImageLoadError(f"cannot read video {path}: {e}") from e


def _decode(path: Path, wanted: set[int] | None) -> tuple[dict[int, Image.Image], int, float]:
    """Decode frames in order, keeping those in ``wanted``; returns ``(kept, frame count, fps)``."""
    import av

    container, stream = _open_video(path)
    kept: dict[int, Image.Image] = {}
    count = 0
    with container:
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        try:
            for count, frame in enumerate(container.decode(stream), start=1):
                if wanted is None or count - 1 in wanted:
                    kept[count - 1] = frame.to_image()
        except av.FFmpegError as e:
            raise ImageLoadError(f"cannot decode video {path} after frame {count}: {e}") from e
    return kept, count, fps


class LastClip:
    """The frames most recently decoded from a clip: asking the same frames of the same (unchanged) file again
    decodes nothing. A benchmark asks many questions about one video (VSI-Bench: ~18 per scene)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.frames: list[Image.Image] = []


def decode_frames(path: str | os.PathLike, choose: Callable[[int], Sequence[int]],
                  memo: LastClip | None = None) -> list[Image.Image]:
    """Decode the frames ``choose(frame_count)`` selects (indexed like decord's ``VideoReader``) with PyAV.

    Like decord, the frames are indexed from the packets (read without decoding, in presentation order), and
    each wanted frame is reached by seeking to the key frame before it, so a few frames of a long clip cost a
    few GOPs of decoding rather than the whole clip. A stream without timestamps is decoded in full instead.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"video file not found: {path}")
    index = _frame_index(path)
    if index is None:
        return _decode_all(path, choose)
    timestamps, keyframes = index
    if not timestamps:
        raise ImageLoadError(f"video {path} has no frames")
    indices = [int(i) for i in choose(len(timestamps))]
    for i in indices:
        if not 0 <= i < len(timestamps):
            raise ImageLoadError(f"video {path} has {len(timestamps)} frames; frame {i} was asked for")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tuple(indices))
    if memo is not None and memo.key == key:
        return list(memo.frames)
    kept = _decode_at(path, sorted({timestamps[i] for i in indices}), keyframes)
    frames = [kept[timestamps[i]] for i in indices]
    if memo is not None:
        memo.key, memo.frames = key, frames
    return list(frames)


def _frame_index(path: Path) -> tuple[list[int], list[int]] | None:
    """Presentation timestamps of the video packets and of its key frames, each sorted (None when a packet
    has no timestamp)."""
    import av

    container, stream = _open_video(path)
    stamps, keys = [], []
    with container:
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's final flush packet
                if packet.pts is None:
                    return None
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.FFmpegError as e:
            raise ImageLoadError(f"cannot read video {path}: {e}") from e
    return sorted(stamps), sorted(keys)


def _decode_at(path: Path, targets: list[int], keyframes: list[int]) -> dict[int, Image.Image]:
    """The frames with these presentation timestamps (ascending). Decoding goes forward while the next target
    is in the GOP being decoded; otherwise it seeks to the key frame before the target."""
    import bisect

    import av

    container, stream = _open_video(path)
    wanted, kept = set(targets), {}
    with container:
        frames, position = None, None
        try:
            for target in targets:
                if target in kept:
                    continue
                key = keyframes[bisect.bisect_right(keyframes, target) - 1] if keyframes and keyframes[0] <= target \
                    else None
                if frames is None or position is None or position > target or (key is not None and position < key):
                    container.seek(target if key is None else key, backward=True, any_frame=False, stream=stream)
                    frames, position = container.decode(stream), None
                while position is None or position < target:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    position = frame.pts
                    if position in wanted:
                        kept[position] = frame.to_image()
        except av.FFmpegError as e:
            raise ImageLoadError(f"cannot decode video {path}: {e}") from e
    missing = [t for t in targets if t not in kept]
    if missing:
        raise ImageLoadError(f"video {path}: frames at timestamps {missing[:3]} did not decode")
    return kept


def _decode_all(path: Path, choose: Callable[[int], Sequence[int]]) -> list[Image.Image]:
    """Decode every frame in order (streams without packet timestamps), keeping those ``choose`` selects."""
    n_frames = _decode(path, set())[1]
    indices = [int(i) for i in choose(n_frames)]
    kept = _decode(path, set(indices))[0]
    if not kept or any(i not in kept for i in indices):
        raise ImageLoadError(f"video {path} has {n_frames} decodable frames; frames {indices} were asked for")
    return [kept[i] for i in indices]


def video_fps(path: str | os.PathLike) -> float:
    """The average frame rate from the container (what decord's ``get_avg_fps`` reports)."""
    container, stream = _open_video(Path(path))
    with container:
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    if fps <= 0:
        raise ImageLoadError(f"video {path} has no frame rate")
    return fps


def read_video_frames(
    path: str | os.PathLike, num_segments: int = 8, bound: tuple[float, float] | None = None
) -> list[Image.Image]:
    """The frames InternVL's ``load_video`` takes: ``get_index`` segment centres, optionally within ``bound``."""
    if not Path(path).is_file():
        raise ImageLoadError(f"video file not found: {path}")
    fps = video_fps(path)
    return decode_frames(path, lambda n: get_index(bound, fps, n - 1, first_idx=0, num_segments=num_segments))


def load_video(
    path: str | os.PathLike, bound: tuple[float, float] | None = None, input_size: int = DEFAULT_IMAGE_SIZE,
    max_num: int = 1, num_segments: int = 8,
) -> tuple[torch.Tensor, list[int]]:
    """The seed's ``load_video``: ``num_segments`` frames tiled with ``max_num`` each; ``(pixel_values, tiles)``."""
    frames = read_video_frames(path, num_segments, bound)
    tiles = [image_to_tiles(f, max_num=max_num, image_size=input_size) for f in frames]
    return torch.cat(tiles), [t.shape[0] for t in tiles]

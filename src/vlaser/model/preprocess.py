"""InternVL's image and video preprocessing, reproduced exactly without torchvision.

Dynamic tiling (grid choice, tie rule, row-major crops, thumbnail), PIL bicubic resizing and ImageNet
normalisation follow the original ``dynamic_preprocess`` / ``build_transform`` / ``load_image`` /
``get_index`` / ``load_video`` bit for bit. Every other part of vlaser tiles images through this module.
For speed, each resize runs as pieces on threads (Pillow resizes without the GIL) cut where they give the very
same pixels, and tiles are normalised through a per-byte table that holds torchvision's own results.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlaser.errors import UserInputError, require
from vlaser.model.constants import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD

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
    """Worker threads for the pieces of a resize (Pillow resizes and maps pixels without the GIL), created on
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
    jobs, first_tile = _grid_jobs(image, min_num, max_num, image_size, use_thumbnail)
    tiles: list[Image.Image] = [None] * (first_tile[-1] + (len(jobs) > 1))  # type: ignore[list-item]

    def keep(k: int, boxes: list[tuple[int, tuple]], piece: Image.Image) -> None:
        for index, box in boxes:
            tiles[first_tile[k] + index] = piece.crop(box)

    _Passes(keep, _threads_for(jobs)).run(jobs)
    return tiles


# Pillow resamples in two passes, each rounding to uint8: horizontal then vertical, except (Pillow >= 13) when the
# height shrinks by more pixels than twice the width does, which goes vertical first. A pass along one axis
# treats every line across it alike, so the first pass can be cut into bands across its axis and the second
# into bands along it (at tile boundaries), each a resize of its own on a thread: the same pixels, two cores busy.


def _vertical_first_never(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    return False


def _vertical_first_pillow13(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    shrink_h, shrink_w = src[1] - dst[1], src[0] - dst[0]
    return shrink_h > 0 and shrink_h > 2 * shrink_w


@functools.cache
def _pass_order() -> Callable[[tuple[int, int], tuple[int, int]], bool] | None:
    """The rule this Pillow follows for which pass comes first, found by resizing a small image both ways; None
    (resize whole images, unsplit) if it follows neither known rule."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    observed = []
    for size in ((36, 8), (36, 32), (8, 36)):  # one on each side of Pillow 13's threshold, and an upscale
        whole = np.asarray(image.resize(size, Image.BICUBIC))
        hv = np.asarray(image.resize((size[0], 40), Image.BICUBIC).resize(size, Image.BICUBIC))
        vh = np.asarray(image.resize((40, size[1]), Image.BICUBIC).resize(size, Image.BICUBIC))
        if np.array_equal(whole, hv) == np.array_equal(whole, vh):
            return None
        observed.append(np.array_equal(whole, vh))
    for rule in (_vertical_first_pillow13, _vertical_first_never):
        if observed == [rule((40, 40), size) for size in ((36, 8), (36, 32), (8, 36))]:
            return rule
    return None


def _spans(length: int, parts: int) -> list[tuple[int, int]]:
    """``[0, length)`` cut into at most ``parts`` near-equal non-empty spans."""
    parts = max(1, min(parts, length))
    cuts = [length * k // parts for k in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


class _Resize:
    """One bicubic resize to a grid of ``size`` tiles, as two passes of independent pieces.

    ``first()`` gives the first pass's pieces; ``second(pieces)`` joins them and gives the second pass's
    pieces, each with the tiles it holds: ``(tile index in this grid, box within the piece)``.
    """

    def __init__(self, image: Image.Image, size: tuple[int, int], grid: tuple[int, int], tile: int) -> None:
        self.image, self.size, self.grid, self.tile = image, size, grid, tile
        order = _pass_order()
        # other modes are resized whole: Pillow premultiplies alpha around both passes (RGBA, LA), or samples
        # the nearest pixel (P, 1)
        self.split = order is not None and image.mode in ("RGB", "L")
        self.vertical_first = bool(order and order(image.size, size))

    def first(self, parts: int) -> list[Callable[[], tuple[int, Image.Image]]]:
        """Pieces ``() -> (offset, band)`` of the first pass (none when it would not change the image)."""
        (w, h), (width, height) = self.image.size, self.size
        if not self.split or (height == h if self.vertical_first else width == w):
            return []
        if self.vertical_first:  # columns of the input, each resized to the new height
            return [functools.partial(self._piece, (a, 0, b, h), (b - a, height), a) for a, b in _spans(w, parts)]
        return [functools.partial(self._piece, (0, a, w, b), (width, b - a), a) for a, b in _spans(h, parts)]

    def _piece(self, box: tuple[int, int, int, int], size: tuple[int, int], offset: int) -> tuple[int, Image.Image]:
        return offset, _resize_box(self.image, box, size)

    def second(self, pieces: list[tuple[int, Image.Image]], parts: int) -> list[tuple[Callable[[], Image.Image],
                                                                                    list[tuple[int, tuple]]]]:
        """Pieces of the second pass, cut at tile boundaries, each with its tiles (row-major indices)."""
        cols, rows = self.grid
        s = self.tile
        if not self.split:
            boxes = [(r * cols + c, (c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
            return [(functools.partial(self.image.resize, self.size, Image.BICUBIC), boxes)]
        middle = self._join(pieces)
        (w, h), (width, height) = middle.size, self.size
        out = []
        if self.vertical_first:  # bands of tile rows, each resized to the new width
            for a, b in _spans(rows, parts):
                band = functools.partial(_resize_box, middle, (0, a * s, w, b * s), (width, (b - a) * s))
                out.append((band, [(r * cols + c, (c * s, (r - a) * s, (c + 1) * s, (r - a + 1) * s))
                                   for r in range(a, b) for c in range(cols)]))
        else:  # strips of tile columns, each resized to the new height
            for a, b in _spans(cols, parts):
                strip = functools.partial(_resize_box, middle, (a * s, 0, b * s, h), ((b - a) * s, height))
                out.append((strip, [(r * cols + c, ((c - a) * s, r * s, (c - a + 1) * s, (r + 1) * s))
                                    for r in range(rows) for c in range(a, b)]))
        return out

    def _join(self, pieces: list[tuple[int, Image.Image]]) -> Image.Image:
        if not pieces:
            return self.image
        if len(pieces) == 1:
            return pieces[0][1]
        (w, h), (width, height) = self.image.size, self.size
        middle = Image.new(self.image.mode, (w, height) if self.vertical_first else (width, h))
        for offset, piece in pieces:
            middle.paste(piece, (offset, 0) if self.vertical_first else (0, offset))
        return middle


def _resize_box(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """``image.crop(box)`` resized (along one axis; the crop copies only a part of the image)."""
    part = image if box == (0, 0, *image.size) else image.crop(box)
    return part.resize(size, Image.BICUBIC)


class _Passes:
    """The passes of several resizes as tasks on the pool: a job's second pass starts as soon as its first pass
    is done, and each second-pass piece goes to ``deliver(job index, tiles, piece)`` on the thread that made it.
    With one thread everything runs in the caller."""

    def __init__(self, deliver: Callable[[int, list[tuple[int, tuple]], Image.Image], None], threads: int) -> None:
        self.deliver, self.parts = deliver, threads
        self.pool = _pool() if threads > 1 else None
        self.lock = threading.Lock()
        self.left = 1  # tasks not yet finished, plus one held until every job has started
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self, jobs: list[_Resize]) -> None:
        # the jobs' first passes run side by side, each in a share of the pieces (the grid's and the thumbnail's
        # take about as long; cutting each in halves costs more in joins and contention than it evens out)
        first_parts = max(1, self.parts // len(jobs))
        for k, job in enumerate(jobs):
            self._first(k, job, first_parts)
        self._finish()
        self.finished.wait()
        if self.error is not None:
            raise self.error

    def _first(self, k: int, job: _Resize, parts: int) -> None:
        pieces = job.first(parts)
        if not pieces:
            self._second(k, job, [])
            return
        made: list = [None] * len(pieces)
        left = [len(pieces)]

        def keep(i: int, piece: tuple[int, Image.Image]) -> None:
            made[i] = piece
            with self.lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._second(k, job, made)

        for i, piece in enumerate(pieces):
            self._submit(piece, functools.partial(keep, i))

    def _second(self, k: int, job: _Resize, made: list[tuple[int, Image.Image]]) -> None:
        for piece, tiles in job.second(made, self.parts):
            self._submit(piece, functools.partial(self.deliver, k, tiles))

    def _submit(self, make: Callable[[], object], then: Callable[[object], None]) -> None:
        with self.lock:
            self.left += 1
        if self.pool is None:
            self._task(make, then)
        else:
            self.pool.submit(self._task, make, then)

    def _task(self, make: Callable[[], object], then: Callable[[object], None]) -> None:
        try:
            if self.error is None:
                then(make())
        except BaseException as e:  # handed to the caller, which raises it
            self.error = self.error or e
        finally:
            self._finish()

    def _finish(self) -> None:
        with self.lock:
            self.left -= 1
            done = self.left == 0
        if done:
            self.finished.set()


def _grid_jobs(image: Image.Image, min_num: int, max_num: int, image_size: int, use_thumbnail: bool
               ) -> tuple[list[_Resize], list[int]]:
    """The resizes of ``dynamic_preprocess`` (the grid, then the thumbnail) and the index of each one's first tile."""
    image.load()  # a lazily read file is decoded here, once, not by the threads that crop it
    cols, rows = tile_grid(*image.size, min_num=min_num, max_num=max_num, image_size=image_size)
    jobs = [_Resize(image, (image_size * cols, image_size * rows), (cols, rows), image_size)]
    if use_thumbnail and rows * cols != 1:
        jobs.append(_Resize(image, (image_size, image_size), (1, 1), image_size))
    return jobs, [0, rows * cols]


def _threads_for(jobs: list[_Resize]) -> int:
    """One tile is resized in the caller (a thread hand-off costs more than it saves there)."""
    return _threads if len(jobs) > 1 or jobs[0].grid != (1, 1) else 1


def _normalize(chw_uint8: torch.Tensor) -> torch.Tensor:
    # Same float32 ops, in the same order, as torchvision's ToTensor + Normalize: x / 255, - mean, / std.
    return chw_uint8.to(torch.float32).div_(255).sub_(_MEAN).div_(_STD)


@functools.cache
def _tables() -> list[list[int]]:
    """Per channel, the normalised float32 value of every byte, made by torchvision's own op order (an exact
    lookup table, since each output element depends only on its byte and channel), as the 4 bytes of each float
    in the band-major order of Pillow's 8-bit to RGBA ``point`` table."""
    floats = _normalize(torch.arange(256, dtype=torch.uint8).repeat(3, 1, 1)).squeeze(1).contiguous()
    return [plane.numpy().view(np.uint8).reshape(256, 4).T.ravel().tolist() for plane in floats]


def _normalize_into(bands: Sequence[Image.Image], box: tuple[int, int, int, int], out: np.ndarray) -> None:
    """Write the normalised float32 ``(3, H, W)`` of the ``box`` of an RGB image's ``bands`` into ``out``
    (C-contiguous).

    Pillow maps each byte through the table in one pass without the GIL (so tiles normalise in parallel): its
    8-bit to 32-bit ``point`` copies a pixel's 4 table bytes, here the bytes of its float, and the result is
    pasted into an RGBA image that Pillow lays over the memory of ``out`` itself.
    """
    size = (box[2] - box[0], box[3] - box[1])
    for channel, (band, table) in enumerate(zip(bands, _tables())):
        view = Image.frombuffer("RGBA", size, out[channel], "raw", "RGBA", 0, 1)
        if not view.readonly:  # a copy, not a view: what is pasted there would never reach ``out``
            raise RuntimeError("this Pillow copies Image.frombuffer's buffer; vlaser needs it shared")
        part = band if box == (0, 0, *band.size) else band.crop(box)
        view.im.paste(part.im.point(table, "RGBA"), (0, 0, *size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float32, ImageNet-normalised; what ``ToTensor`` + ``Normalize`` give."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    out = torch.empty((3, image.height, image.width))
    _normalize_into(image.split(), (0, 0, *image.size), out.numpy())
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

    The same numbers as transforming each tile separately: the resizes run in pieces on threads, and each tile
    is normalised into its slot of the output as soon as the piece holding it is ready.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    jobs, first_tile = _grid_jobs(image, min_num, max_num, image_size, use_thumbnail)
    out = torch.empty((first_tile[-1] + (len(jobs) > 1), 3, image_size, image_size))
    slots = out.numpy()
    _tables()  # made once, here, before any thread needs it

    def write(k: int, boxes: list[tuple[int, tuple]], piece: Image.Image) -> None:
        bands = piece.split()
        for index, box in boxes:
            _normalize_into(bands, box, slots[first_tile[k] + index])

    _Passes(write, _threads_for(jobs)).run(jobs)
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

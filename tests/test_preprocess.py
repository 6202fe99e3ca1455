"""Tiling, transforms, image inputs and video sampling against direct implementations of the original."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlaser import build_transform, dynamic_preprocess, load_image, load_video
from vlaser.model.preprocess import ImageLoadError, get_index, tile_grid


def original_grid(width, height, min_num, max_num, image_size=448):
    """The original rule, written out directly: candidate set sorted by count, closest ratio, tie rule."""
    candidates = set()
    for n in range(min_num, max_num + 1):
        for i in range(1, n + 1):
            for j in range(1, n + 1):
                if min_num <= i * j <= max_num:
                    candidates.add((i, j))
    candidates = sorted(candidates, key=lambda r: r[0] * r[1])
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


@pytest.mark.parametrize("max_num", [1, 6, 12])
def test_grid_choice_matches_original_rule_over_many_sizes(max_num):
    checked = 0
    for width in range(1, 4000, 37):
        for height in range(1, 4000, 41):
            assert tile_grid(width, height, 1, max_num) == original_grid(width, height, 1, max_num), (width, height)
            checked += 1
    assert checked > 9000


@pytest.mark.parametrize(
    ("size", "grid"),
    [((448, 448), (1, 1)), ((1000, 1000), (3, 3)), ((896, 448), (2, 1)), ((2000, 1000), (4, 2)),
     ((448, 1792), (1, 4)), ((100, 3000), (1, 12)), ((5000, 200), (12, 1))],
)
def test_grid_hand_checked_cases(size, grid):
    assert tile_grid(*size) == grid


def _image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _reference_tiles(image, max_num, size=448):
    """Per-tile pipeline: PIL crops on the chosen grid, then numpy ToTensor + ImageNet Normalize."""
    cols, rows = original_grid(*image.size, 1, max_num, size)
    resized = image.resize((cols * size, rows * size), Image.BICUBIC)
    boxes = [(c * size, r * size, (c + 1) * size, (r + 1) * size) for r in range(rows) for c in range(cols)]
    crops = [resized.crop(box) for box in boxes]
    if len(crops) > 1:
        crops.append(image.resize((size, size), Image.BICUBIC))
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    arrays = [((np.asarray(c, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1) for c in crops]
    return torch.from_numpy(np.stack(arrays))


@pytest.mark.parametrize(("w", "h", "max_num"), [(640, 480, 12), (300, 900, 6), (448, 448, 12), (1200, 300, 12)])
def test_load_image_equals_per_tile_pipeline(w, h, max_num):
    image = _image(w, h)
    got = load_image(image, max_num=max_num)
    expected = _reference_tiles(image, max_num)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def _original_load_image(image, max_num, size=448):
    """The original pipeline written out: whole-image resizes, crops, then per tile torchvision's op order
    (``float().div(255)``, ``sub_(mean)``, ``div_(std)``), stacked."""
    cols, rows = original_grid(*image.size, 1, max_num, size)
    resized = image.resize((cols * size, rows * size))
    crops = [resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
             for r in range(rows) for c in range(cols)]
    if len(crops) > 1:
        crops.append(image.resize((size, size)))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1).contiguous().float().div(255).sub_(mean)
                        .div_(std) for c in crops])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_tiling_is_bit_identical_to_whole_image_resizes(threads):
    """The resizes run as pieces on threads; every size, grid and pass order gives the original's exact floats."""
    from vlaser.model import preprocess
    from vlaser.model.resample import pass_order

    rng = np.random.default_rng(threads)
    sizes = [(640, 480), (1200, 300), (300, 900), (1, 1), (2, 500), (500, 2), (449, 447)]
    sizes += [tuple(int(v) for v in rng.integers(1, 700, 2)) for _ in range(12)]
    orders, default = set(), preprocess._threads
    try:
        preprocess.set_threads(threads)
        for w, h in sizes:
            image = _image(w, h, seed=w * h)
            for max_num in (12, 6, 1):
                got = load_image(image, input_size=56, max_num=max_num)
                assert torch.equal(got, _original_load_image(image, max_num, 56)), (w, h, max_num)
                cols, rows = tile_grid(w, h, 1, max_num, 56)
                orders |= {pass_order()((w, h), out) for out in ((56 * cols, 56 * rows), (56, 56))}
    finally:
        preprocess.set_threads(default)
    assert orders == {True, False}  # both of Pillow's pass orders were exercised


def test_full_hd_image_at_both_protocol_settings_is_bit_identical():
    image = _image(1920, 1080, seed=7)
    for max_num, n_tiles in ((12, 9), (6, 3)):
        got = load_image(image, max_num=max_num)
        assert got.shape[0] == n_tiles and torch.equal(got, _original_load_image(image, max_num))


def test_normalisation_table_is_torchvisions_ops_for_every_byte():
    """Each output float depends only on its byte and channel, so all 256 x 3 cases cover every image."""
    from vlaser.model.preprocess import pil_to_tensor

    values = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.stack([values, values[::-1], np.roll(values, 7)], axis=-1)[None])  # 1x256 RGB
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
    expected = x.sub_(torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)).div_(torch.tensor([0.229, 0.224, 0.225])
                                                                                .view(3, 1, 1))
    assert torch.equal(pil_to_tensor(image), expected)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_dynamic_preprocess_gives_the_original_crops_in_the_images_mode(mode):
    rgba = np.random.default_rng(3).integers(0, 256, (700, 1000, 4), dtype=np.uint8)  # alpha varies too
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    cols, rows = original_grid(1000, 700, 1, 12)
    resized = image.resize((448 * cols, 448 * rows))
    expected = [resized.crop((c * 448, r * 448, (c + 1) * 448, (r + 1) * 448))
                for r in range(rows) for c in range(cols)]
    expected.append(image.resize((448, 448)))
    got = dynamic_preprocess(image, max_num=12, use_thumbnail=True)
    assert [t.mode for t in got] == [mode] * len(expected)
    assert [t.tobytes() for t in got] == [t.tobytes() for t in expected]


def _digest_of_tiles() -> str:
    import hashlib

    # numpy, not a torch reduction: torch's own threads need not survive a fork
    return hashlib.sha256(load_image(_image(900, 500)).numpy().tobytes()).hexdigest()


def _tiles_in_child(queue):
    queue.put(_digest_of_tiles())


def test_a_forked_worker_process_tiles_with_threads_of_its_own():
    """A child forked after the parent's tiling threads started has none of them; it must not wait on them."""
    import multiprocessing

    expected = _digest_of_tiles()  # starts the parent's pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_tiles_in_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == expected
    finally:
        child.join(timeout=10)
        child.kill()
    assert child.exitcode == 0


def test_dynamic_preprocess_and_build_transform_compose_to_load_image():
    image = _image(900, 500)
    tiles = dynamic_preprocess(image, max_num=12, image_size=448, use_thumbnail=True)
    transform = build_transform(448)
    assert torch.equal(torch.stack([transform(t) for t in tiles]), load_image(image, max_num=12))
    assert len(tiles) == 2 * 1 + 1  # 900x500 -> 2x1 grid plus the thumbnail


def test_thumbnail_only_with_several_tiles():
    assert load_image(_image(448, 448)).shape[0] == 1
    assert load_image(_image(896, 448)).shape[0] == 3
    assert load_image(_image(896, 448), max_num=1).shape[0] == 1
    assert load_image(_image(448, 448)).is_contiguous() and load_image(_image(896, 448)).is_contiguous()


def test_every_input_kind_gives_the_same_tiles(tmp_path):
    image = _image(320, 200)
    path = tmp_path / "x.png"
    image.save(path)
    expected = load_image(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    for source in (path, str(path), buf.getvalue(), np.asarray(image), image.convert("RGBA")):
        assert torch.equal(load_image(source), expected), type(source)
    gray = np.full((20, 30), 128, dtype=np.uint8)
    assert torch.equal(load_image(gray), load_image(Image.fromarray(gray).convert("RGB")))
    unit = np.asarray(image).astype(np.float32) / 255
    assert torch.equal(load_image(unit), expected)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 7), dtype=np.uint8))


def test_get_index_hand_checked():
    assert get_index(None, fps=10, max_frame=29, num_segments=4).tolist() == [3, 10, 17, 25]
    assert get_index((1.0, 2.0), fps=10, max_frame=29, num_segments=4).tolist() == [11, 13, 16, 19]


def _write_video(path, n_frames=30, fps=10, size=(64, 48)):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(n_frames):
            frame = np.full((size[1], size[0], 3), i * 8, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_load_video_samples_segment_centres(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path)
    pixel_values, counts = load_video(path, num_segments=4, input_size=56)
    assert counts == [1, 1, 1, 1] and pixel_values.shape == (4, 3, 56, 56)
    # un-normalise the red channel to recover each frame's grey level (frame i was filled with 8 * i)
    levels = (pixel_values[:, 0] * 0.229 + 0.485).mean(dim=(1, 2)) * 255
    expected = torch.tensor([3, 10, 17, 25]) * 8.0
    assert (levels - expected).abs().max() < 4, levels


def test_missing_video_is_named(tmp_path):
    with pytest.raises(ImageLoadError, match="gone.mp4"):
        load_video(tmp_path / "gone.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ImageLoadError, match="bad.mp4"):
        load_video(bad)


def test_seeking_decoder_returns_the_frames_a_full_decode_gives(tmp_path):
    """Frames are reached by seeking to key frames (B-frames, a GOP of 12): the same pixels as decoding all."""
    import random

    from media import frame_index, write_counter_video
    from vlaser.model.preprocess import ImageLoadError, _decode_all, decode_frames

    path = write_counter_video(tmp_path / "long.mp4", 200, gop=12)
    rng = random.Random(0)
    for trial in range(40):
        wanted = [rng.randrange(200) for _ in range(rng.randint(1, 10))]  # any order, repeats allowed
        frames = decode_frames(path, lambda n, w=wanted: w)
        assert [frame_index(f) for f in frames] == wanted
        if trial < 3:
            full = _decode_all(path, lambda n, w=wanted: w)
            assert [np.asarray(a).tolist() for a in frames] == [np.asarray(b).tolist() for b in full]
    counted = []
    decode_frames(path, lambda n: counted.append(n) or [0])
    assert counted == [200]
    with pytest.raises(ImageLoadError, match="has 200 frames; frame 200"):
        decode_frames(path, lambda n: [n])

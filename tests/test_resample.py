"""The resize kernels against the installed Pillow itself: every pass order, shape and split into row bands gives
Pillow's pixels, and without the kernels vlaser falls back to Pillow and says so."""

import logging
import sys

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from test_preprocess import _original_load_image
from vlaser import load_image
from vlaser.model import preprocess, resample
from vlaser.model.resample import Resize, pass_order, pixels, resize


def _rgb(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pillow(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.resize(size, Image.BICUBIC))


def test_the_compiled_kernels_are_the_path_under_test():
    """numba is a dependency, so the other tests here check the kernels, not the Pillow fallback."""
    assert resample.kernels() is not None
    assert pass_order() is (resample._pillow13 if int(PIL.__version__.split(".")[0]) >= 13 else resample._never)


def test_pixels_are_the_rgb_values_plus_a_pad_byte():
    image = _rgb(37, 11, 0)
    got = pixels(image)
    assert got.shape == (11, 37, 4) and np.array_equal(got[:, :, :3], np.asarray(image))
    with pytest.raises(ValueError, match="mode L"):
        pixels(image.convert("L"))


def test_resize_equals_pillow_over_many_shapes_and_both_pass_orders():
    rng = np.random.default_rng(0)
    cases = [((1, 1), (448, 448)), ((1, 300), (7, 1)), ((300, 1), (1, 7)), ((5, 5), (5, 9)), ((9, 5), (4, 5)),
             ((640, 480), (448, 448)), ((1920, 1080), (896, 448)), ((1000, 3000), (448, 1344)),
             ((2000, 90), (1792, 448)), ((448, 448), (448, 448))]
    cases += [(tuple(int(v) for v in rng.integers(1, 400, 2)), tuple(int(v) for v in rng.integers(1, 400, 2)))
              for _ in range(150)]
    vertical_first = set()
    for seed, (source, size) in enumerate(cases):
        image = _rgb(*source, seed)
        assert np.array_equal(resize(pixels(image), size)[:, :, :3], _pillow(image, size)), (source, size)
        vertical_first.add(pass_order()(source, size))
    assert vertical_first == {True, False} or pass_order() is resample._never


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_row_bands_run_in_any_order_give_the_same_pixels(parts):
    for source, size in (((1920, 1080), (1792, 896)), ((700, 2000), (448, 448)), ((300, 200), (900, 448))):
        image = _rgb(*source, parts)
        job = Resize(pixels(image), size, parts=parts)
        assert max(len(stage) for stage in job.stages) > 1
        for stage in job.stages:
            for task in reversed(stage):
                task()
        assert np.array_equal(job.out[:, :, :3], _pillow(image, size)), (source, size)


def test_resize_refuses_what_is_not_four_byte_pixels():
    with pytest.raises(ValueError, match=r"\(H, W, 4\) uint8"):
        Resize(np.zeros((4, 4, 3), np.uint8), (2, 2))
    with pytest.raises(ValueError, match=r"\(H, W, 4\) uint8"):
        Resize(np.zeros((4, 8, 4), np.uint8)[:, ::2], (2, 2))


@pytest.fixture
def fresh_caches():
    """The availability checks are cached per process: clear them around a test that changes what they find."""
    resample.kernels.cache_clear()
    resample.pass_order.cache_clear()
    yield
    resample.kernels.cache_clear()
    resample.pass_order.cache_clear()


def test_without_numba_pillow_resizes_the_same_pixels_and_a_warning_says_so(monkeypatch, caplog, fresh_caches):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.delitem(sys.modules, "vlaser.model.resample_kernels", raising=False)
    image = _rgb(900, 500, 1)
    with caplog.at_level(logging.WARNING, logger="vlaser.model.resample"):
        got = load_image(image, max_num=6)
    assert resample.kernels() is None and pass_order() is None
    assert "numba is not importable" in caplog.text
    assert torch.equal(got, _original_load_image(image, 6))


def test_kernels_that_disagree_with_pillow_are_not_used(monkeypatch, caplog, fresh_caches):
    real = resample._coefficients

    def off_by_one(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
        bounds, weights = real(in_size, out_size)
        return bounds, weights + (weights != 0)

    monkeypatch.setattr(resample, "_coefficients", off_by_one)
    image = _rgb(640, 480, 2)
    with caplog.at_level(logging.WARNING, logger="vlaser.model.resample"):
        got = load_image(image, max_num=12)
    assert pass_order() is None and "do not match this Pillow" in caplog.text
    assert torch.equal(got, _original_load_image(image, 12))
    assert preprocess.kernels() is not None  # the normalisation table lookup still runs compiled


def test_kernels_that_cannot_compile_fall_back_with_a_warning(monkeypatch, caplog, fresh_caches):
    def refuse(name):
        raise RuntimeError(f"cannot cache function 'vertical': no locator available for file {name!r}")

    monkeypatch.setattr(resample.importlib, "import_module", refuse)
    image = _rgb(300, 200, 3)
    with caplog.at_level(logging.WARNING, logger="vlaser.model.resample"):
        got = load_image(image, max_num=6)
    assert resample.kernels() is None and "NUMBA_CACHE_DIR" in caplog.text
    assert torch.equal(got, _original_load_image(image, 6))

"""Point/box parsing (property-based), the seed's text2pts semantics, conversions and drawing."""

import re

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install 'vlaser[dev]')")

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vlaser.points import (
    POINT_PROMPT,
    draw_boxes,
    draw_points,
    from_pixels,
    parse_boxes,
    parse_points,
    parse_ref_boxes,
    parse_refs,
    point_question,
    referring_point_question,
    rescale,
    text2pts,
    to_pixels,
)

space = st.sampled_from(["", " ", "  ", "\n", " \n ", "\t"])
coord = st.integers(min_value=0, max_value=1000)
fcoord = st.floats(min_value=0, max_value=1000, allow_nan=False).map(lambda v: round(v, 2))


def _fmt(points, sp):
    pairs = [f"[{sp}{x}{sp},{sp}{y}{sp}]" for x, y in points]
    return f"<point>{sp}[{sp}" + f",{sp}".join(pairs) + f"{sp}]{sp}</point>"


@given(st.lists(st.tuples(coord, coord), min_size=1, max_size=12), space, st.text(max_size=20))
def test_parse_points_recovers_integer_points(points, sp, prefix):
    prefix = prefix.replace("[", "").replace("<", "")
    assert parse_points(prefix + _fmt(points, sp)) == [(float(x), float(y)) for x, y in points]


@given(st.lists(st.tuples(fcoord, fcoord), min_size=1, max_size=8), space)
def test_parse_points_accepts_floats(points, sp):
    assert parse_points(_fmt(points, sp)) == [(float(x), float(y)) for x, y in points]


def seed_text2pts(text, width, height):
    """The seed README's post-processing, restated: first block, integer pairs, int(v / 1000 * size)."""
    m = re.search(r"<point>\s*\[\s*(\[.*?\])\s*\]</point>", text, re.DOTALL)
    out = []
    if m:
        for xs, ys in re.findall(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]", m.group(1)):
            out.append((int(int(xs) / 1000 * width), int(int(ys) / 1000 * height)))
    return np.array(out)


@given(st.lists(st.tuples(coord, coord), max_size=6), space, st.integers(1, 4000), st.integers(1, 4000))
def test_text2pts_matches_seed_semantics(points, sp, width, height):
    text = _fmt(points, sp) if points else "no points here"
    got, expected = text2pts(text, width, height), seed_text2pts(text, width, height)
    assert got.shape == expected.shape and (got == expected).all()


def test_text2pts_readme_example():
    text = "<point>[[254, 624], [304, 624], [925, 599]]</point>"
    assert text2pts(text, 640, 480).tolist() == [[162, 299], [194, 299], [592, 287]]
    assert text2pts("<point>[[1.5, 2.5]]</point>", 100, 100).tolist() == []  # the seed takes integers only
    assert text2pts("nothing", 10, 10).shape == (0,)


def test_points_without_tag_and_require_tag():
    assert parse_points("The answer is [100, 200] and [3.5, 4]") == [(100.0, 200.0), (3.5, 4.0)]
    assert parse_points("[100, 200]", require_tag=True) == []
    assert parse_points("<point>[[1, 2]]</point> ignore [5, 6]") == [(1.0, 2.0)]


def test_boxes_and_refs():
    text = ("<ref>red cup</ref><box>[[10, 20, 300, 400]]</box> and <ref> bowl </ref>\n"
            "<box>[[1.5,2,3,4], [5, 6, 7, 8]]</box>")
    assert parse_boxes(text) == [(10, 20, 300, 400), (1.5, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_refs(text) == ["red cup", "bowl"]
    assert parse_ref_boxes(text) == [("red cup", [(10, 20, 300, 400)]), ("bowl", [(1.5, 2, 3, 4), (5, 6, 7, 8)])]


@given(st.lists(st.tuples(coord, coord), min_size=1, max_size=5), st.integers(10, 3000), st.integers(10, 3000))
def test_grid_pixel_round_trip_is_within_one_grid_unit(points, width, height):
    pixels = to_pixels(points, width, height, truncate=False)
    back = from_pixels(pixels, width, height)
    assert all(abs(a - b) <= 1 for p, q in zip(points, back) for a, b in zip(p, q))


def test_conversions_between_conventions():
    assert to_pixels([(500, 250)], 640, 480) == [(320, 120)]
    assert to_pixels([(0.5, 0.25)], 640, 480, scale=1) == [(320, 120)]
    assert to_pixels([(50, 25)], 640, 480, scale=100) == [(320, 120)]
    assert to_pixels([(999, 999)], 10, 10) == [(9, 9)]  # int() truncation, like the seed
    assert to_pixels([(100, 200, 300, 400)], 1000, 500) == [(100, 100, 300, 200)]
    assert rescale([(500, 250)], 1000, 1) == [(0.5, 0.25)]
    assert from_pixels([(320, 120)], 640, 480) == [(500, 250)]


def test_prompts():
    assert point_question("Point to all the moai.") == POINT_PROMPT + " Point to all the moai."
    assert '"<point>[[x1, y1], [x2, y2],...]</point>"' in POINT_PROMPT
    assert referring_point_question("the cup") == f" {POINT_PROMPT} Please provide the referring points of the cup."


def test_drawing_marks_the_image():
    base = Image.new("RGB", (200, 100), (0, 0, 0))
    drawn = draw_points(base, [(50, 40)], radius=5)
    assert drawn.getpixel((50, 40)) == (255, 64, 64) and base.getpixel((50, 40)) == (0, 0, 0)
    boxed = draw_boxes(base, [(10, 10, 100, 80)], labels=["cup"], width=2)
    assert boxed.getpixel((10, 40)) != (0, 0, 0) and boxed.getpixel((150, 50)) == (0, 0, 0)


@pytest.mark.parametrize("bad", ["<point>[[1, ]]</point>", "<point></point>", ""])
def test_malformed_points_give_nothing(bad):
    assert parse_points(bad, require_tag=True) == []

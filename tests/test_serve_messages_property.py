"""vlaser's own payload and the server's reading of it are inverses: ``parse_chat_request(to_payload(r)) == r`` for
requests of still images (engine ``vlaser``), with their earlier turns, system message, each picture's tile limit
and the generation parameters. Pictures compare by their pixels: the server holds decoded images, not files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install 'vlaser[dev]')")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlaser.eval.backends import to_payload
from vlaser.inference import GenerationParams, Picture, Request, Turn
from vlaser.inference.prepare import place_tags
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import to_pil
from vlaser.serve.messages import LMDEPLOY_IMAGE_TOKEN, parse_chat_request

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COLOURS = [(255, 0, 0), (0, 128, 255), (10, 200, 30)]
SIZES = [(8, 8), (12, 5), (3, 17)]

#: any text but the tags the server reads as image places (a literal ``<image>``, LMDeploy's ``<IMAGE_TOKEN>``)
texts = st.text(max_size=24).filter(lambda t: IMAGE_PLACEHOLDER not in t and LMDEPLOY_IMAGE_TOKEN not in t)
tile_limits = st.none() | st.integers(1, 40)
params = st.builds(
    lambda max_new, share, temperature, top_p, stop, seed: GenerationParams(
        max_new, int(max_new * share), temperature, top_p, tuple(stop), seed),
    st.integers(1, 4096), st.floats(0, 1), st.floats(0, 2, allow_nan=False), st.floats(0.01, 1),
    st.lists(st.text(min_size=1, max_size=8), max_size=3), st.none() | st.integers(-(2**63), 2**63 - 1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A few small PNG files (sent as they are, lossless, so their pixels come back exactly)."""
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for k, (colour, size) in enumerate(zip(COLOURS, SIZES, strict=True)):
        image = Image.new("RGB", size, colour)
        image.putpixel((0, 0), (k, 255 - k, 7))
        image.save(folder / f"{k}.png")
        paths.append(folder / f"{k}.png")
    return paths


@st.composite
def tagged_turn(draw, files) -> tuple[str, list[Picture]]:
    """One user turn's text with its pictures placed by ``<image>`` tags among text pieces."""
    pictures = draw(st.lists(st.builds(Picture, st.sampled_from(files), tile_limits), max_size=3))
    pieces = draw(st.lists(texts, min_size=len(pictures) + 1, max_size=len(pictures) + 1))
    return IMAGE_PLACEHOLDER.join(pieces), pictures


@st.composite
def requests(draw, files, tagged: bool) -> Request:
    """A request whose turns place its pictures with tags (``tagged``), or one the prepare step lays out."""
    if tagged:
        turns = draw(st.lists(tagged_turn(files), min_size=1, max_size=3))
    else:
        pictures = draw(st.lists(st.builds(Picture, st.sampled_from(files), tile_limits), max_size=3))
        turns = [(text, []) for text in draw(st.lists(texts, max_size=2))] + [(draw(texts), pictures)]
    history = [Turn(user, draw(texts)) for user, _ in turns[:-1]]
    pictures = [picture for _, turn_pictures in turns for picture in turn_pictures]
    return Request(turns[-1][0], pictures, history, draw(st.none() | texts), tagged=tagged and bool(pictures))


def _pixels(request: Request) -> Request:
    """The request with each picture's source as its decoded pixels (mode, size, bytes)."""
    pixels = [replace(p, source=(image.mode, image.size, image.tobytes())) for p in request.pictures
              for image in [to_pil(p.source)]]
    return replace(request, pictures=pixels)


def _round_trip(request: Request, generation: GenerationParams) -> tuple[Request, GenerationParams]:
    payload = json.loads(json.dumps(to_payload(request, "vlaser-model", generation, server="vlaser")))
    return parse_chat_request(payload)


@PROPERTY
@given(data=st.data(), generation=params)
def test_the_server_reads_back_what_the_client_sends(files, data, generation):
    request = data.draw(requests(files, tagged=True))
    parsed, parsed_generation = _round_trip(request, generation)
    assert _pixels(parsed) == _pixels(request)
    assert parsed_generation == generation


@PROPERTY
@given(data=st.data(), generation=params)
def test_a_request_laid_out_by_the_prepare_step_arrives_with_its_tags_placed(files, data, generation):
    """The client sends the prompt the prepare step lays out; the server holds it as a tagged request."""
    request = data.draw(requests(files, tagged=False))
    parsed, parsed_generation = _round_trip(request, generation)
    expected = replace(request, question=place_tags(request), tagged=bool(request.pictures))
    assert _pixels(parsed) == _pixels(expected) and place_tags(parsed) == place_tags(request)
    assert parsed_generation == generation

"""The one prepare step: where a request's image tags go and how many tiles each picture gets.

``VLM``, the eval runner, the server and the benchmarks that lay out their own prompts all come here, so one
request gives one prompt and one set of tiles whichever path it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vlaser.inference.types import Picture, PictureSource, Prepared, Request
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import image_to_tiles, to_pil
from vlaser.model.settings import ProcessorSettings
from vlaser.model.template import (
    FRAME_LINE,
    ChatTemplate,
    build_chat_prompt,
    frame_lines,
    get_template,
    images_first,
)

#: ``(picture, its tile limit) -> ((width, height), tiles)``: how a caller may supply tiles made elsewhere
Tiler = Callable[[Picture, int], tuple[tuple[int, int], torch.Tensor]]
#: ``(image file, tile limit) -> future`` of the tiles worker processes are making
Pending = Mapping[tuple[Path, int], Future]


def between(pieces: Sequence[str | None], picture: str = IMAGE_PLACEHOLDER) -> str:
    """Text pieces with one picture at each ``None``, written ``picture``: a benchmark's own placement (ERQA's
    tags at character offsets, VLABench's ``Image: <image>\n`` lines), laid out here like every other."""
    if IMAGE_PLACEHOLDER not in picture:
        raise ValueError(f"a picture is written with one {IMAGE_PLACEHOLDER} tag, got {picture!r}")
    return "".join(picture if piece is None else piece for piece in pieces)


def tag_parts(pieces: Sequence[str | None]) -> str:
    """One message's parts in their order (text, or ``None`` for an image) as text with one ``<image>`` tag per
    image, the images keeping their order: the tags the text already holds (one per image), else
    :func:`~vlaser.model.template.images_first`'s layout when several images come before all the text (InternVL's
    multi-image prompt), else each image on its own line where its part stands (rules in ``docs/serve.md``)."""
    texts = [piece for piece in pieces if piece]
    images = sum(piece is None for piece in pieces)
    tags = sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
    if tags:
        if tags != images:
            raise ValueError(f"the text contains a literal {IMAGE_PLACEHOLDER!r} {tags} time(s) but the message has "
                             f"{images} image part(s); write one {IMAGE_PLACEHOLDER!r} per image (the images fill "
                             "them in order), or none and let the parts' order place them")
        return _in_order(texts)
    first_text = next((k for k, piece in enumerate(pieces) if piece), len(pieces))
    if images > 1 and all(piece is not None for piece in pieces[first_text:]):
        return images_first(_in_order(texts), images)
    return _in_order(pieces)


def _in_order(pieces: Sequence[str | None]) -> str:
    """Text and ``<image>`` tags (for ``None``) in part order: text after text on a new line, a tag on its own
    line unless whitespace precedes it."""
    out, previous = "", None
    for piece in pieces:
        if piece is not None:
            if not piece:
                continue
            if previous is not None:  # after text: a separator; after an image: the tag's newline
                out += "\n"
            out += piece
            previous = "text"
        else:
            if previous == "image" or (previous == "text" and not out[-1].isspace()):
                out += "\n"
            out += IMAGE_PLACEHOLDER
            previous = "image"
    return out


def tag_count(request: Request) -> int:
    """``<image>`` tags in the request's user turns (earlier ones and the question)."""
    return sum(text.count(IMAGE_PLACEHOLDER) for text in [*(t.user for t in request.history), request.question])


def place_tags(request: Request) -> str:
    """The question with one ``<image>`` tag per picture, in the pictures' order.

    Video frames come first, each on its ``frame_line``, unless a ``tagged`` request's turns already hold a tag
    for every picture; a ``tagged`` request's tags for its still images are checked and kept, and untagged
    still images go first as :func:`~vlaser.model.template.images_first` lays them out (the template holds the
    tag strings and their layouts; this step alone decides where a request's tags go).
    """
    tags, pictures = tag_count(request), request.pictures
    frames = sum(p.frame for p in pictures)
    if any(p.frame for p in pictures[frames:]):
        raise ValueError("video frames must come before the still images of a request")
    if request.tagged:
        if tags == len(pictures):
            return request.question
        if tags != len(pictures) - frames:
            raise ValueError(f"the request holds {tags} {IMAGE_PLACEHOLDER} tag(s) for {len(pictures)} picture(s); "
                             f"write one {IMAGE_PLACEHOLDER} per picture")
        return frame_lines(frames, request.frame_line or FRAME_LINE) + request.question
    if tags:
        raise ValueError(f"the question holds {tags} {IMAGE_PLACEHOLDER} tag(s) but the request is not tagged; mark "
                         "it tagged (the tags place the pictures) or leave the tags out")
    still = len(pictures) - frames
    return frame_lines(frames, request.frame_line or FRAME_LINE) + images_first(request.question, still)


def resolve_max_tiles(explicit: int | None, protocol: int | None, settings: ProcessorSettings | None) -> int | None:
    """A still image's tile limit, decided here once for chat, eval, serve and the VLA.

    An explicit value (``--max-num``, a request's or a picture's own) wins. Otherwise a checkpoint that turned
    ``dynamic_image_size`` off gets one tile, as it was trained and as vLLM reads the same config; else the
    protocol's value (a benchmark's, the point prompt's); else the checkpoint's (:attr:`ProcessorSettings.max_tiles`,
    its ``max_dynamic_patch``). None only when no checkpoint is at hand and nothing is set (a remote server then
    decides).
    """
    if explicit is not None:
        return explicit
    if settings is not None and not settings.dynamic:
        return 1
    if protocol is not None:
        return protocol
    return None if settings is None else settings.max_tiles


def own_tile_limit(picture: Picture) -> int | None:
    """The limit a picture carries itself: its own, or one tile for a video frame (InternVL's video path)."""
    if picture.max_tiles is None and picture.frame:
        return 1
    return picture.max_tiles


def tile_limit(picture: Picture, settings: ProcessorSettings, max_tiles: int | None = None) -> int:
    """A picture's tile limit: its own (:func:`own_tile_limit`), else ``max_tiles`` (an explicit argument or a
    resolved protocol value), else what :func:`resolve_max_tiles` gives the checkpoint."""
    own = own_tile_limit(picture)
    return own if own is not None else resolve_max_tiles(max_tiles, None, settings)


def tile(source: PictureSource, max_tiles: int, settings: ProcessorSettings) -> tuple[tuple[int, int], torch.Tensor]:
    """``((width, height), tiles)`` of one picture cut as the checkpoint cuts (its tile size, thumbnail and
    ``min_dynamic_patch``, capped to fit); a module-level function so worker processes run the very same call."""
    pil = to_pil(source)
    # positional: the tiling layer keeps InternVL's names (max_num, min_num) for the seed's callers
    return pil.size, image_to_tiles(pil, max_tiles, settings.min_tiles(max_tiles), image_size=settings.image_size,
                                    use_thumbnail=settings.use_thumbnail)


def prepare(request: Request, model, max_tiles: int | None = None, tiler: Tiler | None = None) -> Prepared:
    """The request made ready for ``model``: its tags placed, its pictures tiled, its prompt rendered.

    ``max_tiles`` applies to pictures without their own limit (None: the checkpoint's); ``tiler`` supplies
    tiles made ahead (worker processes, a clip's frames shared between questions).
    """
    settings = model.processor_settings
    question = place_tags(request)
    tiler = tiler or (lambda picture, limit: tile(picture.source, limit, settings))
    made = [tiler(picture, tile_limit(picture, settings, max_tiles)) for picture in request.pictures]
    num_patches = [tiles.shape[0] for _, tiles in made]
    system = model.system_message if request.system is None else request.system
    prompt = render(request, question, model.conv_template, num_patches, model.num_image_token, system)
    pixel_values = torch.cat([tiles for _, tiles in made]) if made else None
    return Prepared(prompt, pixel_values, num_patches, [size for size, _ in made])


class Preparer:
    """The prepare step for one model, reusing tiles already made: a decoded frame shared with the previous
    request (the eval runner hands the same frame objects to every question about one clip), and tiles worker
    processes are making (``pending``, by image file and tile limit)."""

    def __init__(self, model) -> None:
        self.model, self.settings = model, model.processor_settings
        self._last: dict[tuple[int, int], tuple[Image.Image, tuple[int, int], torch.Tensor]] = {}

    def tiling(self, picture: PictureSource, max_tiles: int) -> tuple[Callable, tuple]:
        """The call that tiles one picture for this model, as a module-level function and its arguments, so a
        worker process runs the very same call."""
        return tile, (picture, max_tiles, self.settings)

    def prepare(self, request: Request, pending: Pending | None = None) -> Prepared:
        """:func:`prepare` for this model, taking the tiles it already has or that are being made."""
        reused: dict[tuple[int, int], tuple[Image.Image, tuple[int, int], torch.Tensor]] = {}

        def tiler(picture: Picture, max_tiles: int) -> tuple[tuple[int, int], torch.Tensor]:
            source = picture.source
            if isinstance(source, Image.Image):
                hit = self._last.get((id(source), max_tiles))
                made = hit[1:] if hit is not None and hit[0] is source else tile(source, max_tiles, self.settings)
                reused[id(source), max_tiles] = (source, *made)
                return made
            if pending is not None and (source, max_tiles) in pending:
                return pending[source, max_tiles].result()
            return tile(source, max_tiles, self.settings)

        prepared = prepare(request, self.model, tiler=tiler)
        self._last = reused
        return prepared


def render(request: Request, question: str, template: ChatTemplate, num_patches: Sequence[int], num_image_token: int,
           system: str | None) -> str:
    """The prompt text of a request whose tags are placed (``question``): earlier turns, the template, each
    picture's ``num_patches`` tiles expanded to image tokens."""
    history = [(turn.user, turn.assistant) for turn in request.history] or None
    return build_chat_prompt(question, template, num_patches, num_image_token, history=history,
                             system_message=system)[1]


@dataclass(frozen=True)
class PromptLayout:
    """A fixed prompt layout that does not follow a checkpoint's settings: a template, a system message and the
    tiling it implies (the VLA's, as released, whatever chat settings its backbone was saved with)."""

    template: str
    system: str
    settings: ProcessorSettings

    @property
    def tiles(self) -> int:
        """Tiles per picture, from the one tile rule (:func:`resolve_max_tiles`)."""
        return resolve_max_tiles(None, None, self.settings)


#: Named layouts; ``vla``: InternVL's ``internvl2_5`` turn with a literal "None" system message, and the VLM run
#: with ``dynamic_image_size=False, use_thumbnail=False``: one tile per camera
#: (V:``Vlaser_VLA/Simpler/src/model/vla/processing.py``).
PRESETS = {"vla": PromptLayout("internvl2_5", "None", ProcessorSettings(dynamic=False, use_thumbnail=False))}


def preset_prompt(name: str, request: Request, num_image_token: int) -> str:
    """The prompt of ``request`` in the named layout (``request.system`` overrides the preset's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown prompt preset {name!r}; choose from {sorted(PRESETS)}")
    layout = PRESETS[name]
    system = layout.system if request.system is None else request.system
    return render(request, place_tags(request), get_template(layout.template), [layout.tiles] * len(request.pictures),
                  num_image_token, system)

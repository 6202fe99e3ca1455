"""The friendly API: ``VLM.from_pretrained(path).ask(images, question)`` and ``.point(image, query)``.

A thin adapter over the inference core: questions and images become a :class:`~vlaser.inference.Request`,
:func:`~vlaser.inference.prepare.prepare` places the tags and tiles, the model answers. Only the point prompt
is chosen here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from vlaser.errors import UserInputError
from vlaser.inference import Completion, GenerationParams, Picture, Prepared, Request, Turn
from vlaser.inference.engine import Engine
from vlaser.inference.prepare import place_tags, prepare, resolve_max_tiles, tile, tile_limit
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import ImageInput, read_video_frames, to_pil
from vlaser.points import parse_boxes, parse_points, point_question, to_pixels

Images = ImageInput | Sequence[ImageInput] | None
log = logging.getLogger(__name__)


@dataclass
class PointAnswer:
    """A point-grounding answer: the raw text, its points on the 0-1000 grid, and in pixels."""

    text: str
    points: list[tuple[float, float]]
    pixels: list[tuple[int, int]]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    box_pixels: list[tuple[int, ...]] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class PointProtocol:
    """Vlaser's point prompt as its pointing evaluations (``evaluate_point_*``) run it: the tile limit and answer
    length :meth:`VLM.point` uses unless told otherwise (greedy, the grounding tags kept)."""

    max_tiles: int = 6
    max_new_tokens: int = 100
    min_new_tokens: int = 1


POINT = PointProtocol()


@dataclass
class Media:
    """Tiled pictures: every picture's tiles in order, how many each has, and each one's (width, height)."""

    pixel_values: torch.Tensor | None
    num_patches: list[int]
    sizes: list[tuple[int, int]]
    pictures: list[Picture] = field(default_factory=list)  #: what was tiled, for the prompt's tags


class VLM:
    """An InternVL3/Vlaser model with a small, InternVL-agnostic interface.

    Example:
        >>> vlm = VLM.from_pretrained("OpenGVLab/Vlaser-2B")
        >>> vlm.ask("scene.jpg", "What is on the table?")
        >>> vlm.point("scene.jpg", "Point to the red cup.").pixels
    """

    def __init__(self, model, tokenizer, max_tiles: int | None = None, max_new_tokens: int = 1024):
        """``max_tiles`` (tiles per image, InternVL's ``max_num``) applies where a call sets none; None: the
        checkpoint's limit (1 when it turned ``dynamic_image_size`` off)."""
        self.model, self.tokenizer = model, tokenizer
        self.settings = model.processor_settings
        self._max_tiles = max_tiles  #: the explicit limit, or None (see :attr:`max_tiles`)
        self.max_new_tokens = max_new_tokens
        self.image_size = self.settings.image_size

    @property
    def max_tiles(self) -> int:
        """The tile limit a still image gets when a call sets none (:func:`resolve_max_tiles`)."""
        return resolve_max_tiles(self._max_tiles, None, self.settings)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="auto", device=None, **kwargs) -> VLM:
        from vlaser.model.loading import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, **kwargs)

    def pictures(self, images: Images, video: str | os.PathLike | None = None, max_tiles: int | None = None,
                 num_segments: int = 8) -> list[Picture]:
        """The images (each with ``max_tiles`` tiles at most; None: this model's limit), or a video's
        ``num_segments`` frames (one tile each, as InternVL's ``load_video``)."""
        if video is not None:
            if images:
                raise UserInputError("pass either images or a video, not both")
            return [Picture(frame, frame=True) for frame in read_video_frames(video, num_segments)]
        if images is None:
            return []
        items = [images] if isinstance(images, (str, bytes, os.PathLike, Image.Image)) or (
            hasattr(images, "ndim")) else list(images)
        return [Picture(item if isinstance(item, (str, os.PathLike)) else to_pil(item), max_tiles=max_tiles)
                for item in items]

    def media(self, images: Images, video: str | os.PathLike | None = None, max_tiles: int | None = None,
              num_segments: int = 8) -> Media:
        """Load and tile images (or sample a video) once, as the prepare step does; logs how each was cut."""
        pictures = self.pictures(images, video, max_tiles, num_segments)
        made = []
        for i, picture in enumerate(pictures):
            limit = tile_limit(picture, self.settings, self._max_tiles)
            size, tiles = tile(picture.source, limit, self.settings)
            made.append((size, tiles))
            if not picture.frame:
                name = os.fspath(picture.source) if isinstance(picture.source, (str, os.PathLike)) else f"{i + 1}"
                log.info("%s", self.tiling_note(name, size, tiles.shape[0], limit))
        return Media(torch.cat([t for _, t in made]) if made else None, [t.shape[0] for _, t in made],
                     [size for size, _ in made], pictures)

    def tiling_note(self, name: str, size: tuple[int, int], n_tiles: int, limit: int) -> str:
        """How one image was cut, as ``-v`` logs it (``vlaser chat`` and each request of ``vlaser serve``):
        ``"image NAME: WxH -> 6 tiles + thumbnail (max_num 12)"``."""
        return f"image {name}: {size[0]}x{size[1]} -> {self._tiles_text(n_tiles)} (max_num {limit})"

    def _tiles_text(self, n: int) -> str:
        """``n`` tiles as the grid and thumbnail they are: ``"6 tiles + thumbnail"``."""
        thumbnail = self.settings.use_thumbnail and n > 1
        grid = n - thumbnail
        return f"{grid} tile{'s' if grid > 1 else ''}" + (" + thumbnail" if thumbnail else "")

    def request(self, media: Media, question: str, system: str | None = None) -> Request:
        """A question about tiled media; tags the question writes itself place the pictures."""
        return Request(question, media.pictures, system=system, tagged=IMAGE_PLACEHOLDER in question)

    def prepare(self, media: Media, request: Request) -> Prepared:
        """``request`` made ready with the tiles ``media`` already holds (made by :meth:`media` for it)."""
        tiles = iter(zip(media.sizes, media.pixel_values.split(media.num_patches) if media.num_patches else ()))
        return prepare(request, self.model, self._max_tiles, tiler=lambda picture, limit: next(tiles))

    def ask(self, images: Images, question: str, video: str | os.PathLike | None = None, max_tiles: int | None = None,
            num_segments: int = 8, **generation) -> str:
        """Answer a question about zero, one or several images (``Image-i:`` prompts) or a video (``Frame-i:``)."""
        media = self.media(images, video, max_tiles, num_segments)
        return self.generate([media], [question], generation)[0]

    def ask_batch(self, requests: Sequence[tuple[Images, str]], max_tiles: int | None = None,
                  **generation) -> list[str]:
        """Answer several ``(images, question)`` pairs in one batch."""
        media = [self.media(images, None, max_tiles, 0) for images, _ in requests]
        return self.generate(media, [q for _, q in requests], generation)

    def generate(self, media: Sequence[Media], questions: Sequence[str], generation: dict) -> list[str]:
        """Answer prepared media with questions, in one batch."""
        return [c.text for c in self.generate_answers(media, questions, generation)]

    def generate_answers(self, media: Sequence[Media], questions: Sequence[str], generation: dict,
                         system_messages: Sequence[str | None] | None = None) -> list[Completion]:
        """:meth:`generate`'s completions (text, and whether each was cut off at ``max_new_tokens``); a
        question's system message may replace the model's (None keeps it)."""
        systems = system_messages or [None] * len(questions)
        prepared = [self.prepare(m, self.request(m, q, s)) for m, q, s in zip(media, questions, systems)]
        return self.complete(prepared, generation)

    def complete(self, prepared: Sequence[Prepared], generation: Mapping | GenerationParams,
                 max_batch_size: int | None = None) -> list[Completion]:
        """Completions of prepared requests through the engine (continuous batching, ``max_batch_size`` rows at
        once, all by default; greedy answers equal the batch-1 ``model.chat`` loop); ``generation`` is the
        engine's parameters or transformers' keywords."""
        params = generation if isinstance(generation, GenerationParams) else self.generation_params(generation)
        engine = Engine(self.model, self.tokenizer, max_batch_size=max_batch_size or max(1, len(prepared)))
        return engine.generate(prepared, params)

    def generation_params(self, generation: Mapping) -> GenerationParams:
        """transformers' ``generate`` keywords, as the seed's ``generation_config`` writes them, as the engine's
        parameters (``max_new_tokens`` defaults to this VLM's); a keyword the engine lacks is an error."""
        unknown = sorted(set(generation) - GENERATE_KEYWORDS)
        if unknown:
            raise UserInputError(f"generation settings {unknown} are not supported here (supported: "
                                 f"{sorted(GENERATE_KEYWORDS)}); model.chat and model.batch_chat take every "
                                 "transformers setting")
        sample = bool(generation.get("do_sample", False))
        return GenerationParams(
            max_new_tokens=generation.get("max_new_tokens", self.max_new_tokens),
            min_new_tokens=generation.get("min_new_tokens", 0),
            temperature=float(generation.get("temperature", 1.0)) if sample else 0.0,
            top_p=float(generation.get("top_p", 1.0)) if sample else 1.0,
            seed=generation.get("seed"), stop=tuple(generation.get("stop", ())),
            keep_grounding_tokens=generation.get("keep_grounding_tokens", False))

    def point(self, image: ImageInput, query: str, max_tiles: int | None = POINT.max_tiles,
              max_new_tokens: int = POINT.max_new_tokens, prompt: bool = True, **generation) -> PointAnswer:
        """Ask for points (Vlaser's point protocol, :data:`POINT`: greedy, 1-100 new tokens, 6 tiles; ``max_tiles``
        None: the checkpoint's tiles) and return them in pixels."""
        return self.point_batch([(image, query)], max_tiles=max_tiles, max_new_tokens=max_new_tokens, prompt=prompt,
                                **generation)[0]

    def point_batch(self, requests: Sequence[tuple[ImageInput, str]], max_tiles: int | None = POINT.max_tiles,
                    max_new_tokens: int = POINT.max_new_tokens, prompt: bool = True, **generation) -> list[PointAnswer]:
        """:meth:`point` for several ``(image, query)`` pairs in one batch."""
        media = [self.media(image, None, max_tiles, 0) for image, _ in requests]
        questions = [point_question(q) if prompt else q for _, q in requests]
        texts = self.generate(media, questions, {"max_new_tokens": max_new_tokens,
                                                 "min_new_tokens": POINT.min_new_tokens,
                                                 "keep_grounding_tokens": True, **generation})
        answers = []
        for text, m in zip(texts, media):
            points, boxes = parse_points(text), parse_boxes(text)
            size = m.sizes[0]
            answers.append(PointAnswer(text=text, points=points, pixels=to_pixels(points, *size), boxes=boxes,
                                       box_pixels=to_pixels(boxes, *size), size=size))
        return answers

    def session(self, images: Images = None, video=None, max_tiles: int | None = None,
                num_segments: int = 8) -> Session:
        """A multi-turn conversation about fixed media (the original ``chat`` with ``history``)."""
        return Session(self, self.media(images, video, max_tiles, num_segments))


#: The ``generate`` keywords :meth:`VLM.generation_params` understands (top-k off, as the engine samples), and
#: vlaser's ``keep_grounding_tokens`` (keep ``<ref>``/``<box>`` tags in answers, as :meth:`VLM.point` does).
GENERATE_KEYWORDS = frozenset({"max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p", "seed",
                               "stop", "keep_grounding_tokens"})


class Session:
    """Multi-turn chat through the engine: each :meth:`ask` sees the earlier turns, exactly as
    ``model.chat(history=...)`` builds them (the first question's tags placed, the later ones as asked)."""

    def __init__(self, vlm: VLM, media: Media):
        self.vlm, self.media = vlm, media
        self.history: list[tuple[str, str]] | None = None  #: ``(question as sent, answer)``, as ``model.chat``'s

    def ask(self, question: str, **generation) -> str:
        """The answer to ``question`` after the earlier turns; ``generation`` as :meth:`VLM.ask` takes it (an
        unknown keyword is an error)."""
        params = self.vlm.generation_params(generation)
        turns = [Turn(q, a) for q, a in self.history or []]
        if turns:  # the first question's tags place the pictures
            request = Request(question, self.media.pictures, turns, tagged=True)
        else:
            request = self.vlm.request(self.media, question)
            question = place_tags(request)
        answer = self.vlm.complete([self.vlm.prepare(self.media, request)], params)[0].text
        self.history = [*(self.history or []), (question, answer)]
        return answer

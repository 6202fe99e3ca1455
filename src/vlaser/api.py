"""The friendly API: ``VLM.from_pretrained(path).ask(images, question)`` and ``.point(image, query)``.

Built only from the inference core (``load_model``, preprocessing, templates, ``batch_chat``); no prompt
logic lives here beyond choosing the seed's multi-image / video prefixes and the point prompt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from vlaser.errors import UserInputError
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import ImageInput, image_to_tiles, load_video, to_pil
from vlaser.model.template import build_chat_prompt, multi_image_prefix, video_prefix
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


@dataclass
class Media:
    pixel_values: torch.Tensor | None
    num_patches: list[int]
    prefix: str
    sizes: list[tuple[int, int]]


class VLM:
    """An InternVL3/Vlaser model with a small, InternVL-agnostic interface.

    Example:
        >>> vlm = VLM.from_pretrained("OpenGVLab/Vlaser-2B")
        >>> vlm.ask("scene.jpg", "What is on the table?")
        >>> vlm.point("scene.jpg", "Point to the red cup.").pixels
    """

    def __init__(self, model, tokenizer, max_num: int | None = None, max_new_tokens: int = 1024):
        """``max_num`` (tiles per image) defaults to the checkpoint's ``max_dynamic_patch`` (1 when it turned
        ``dynamic_image_size`` off); the tile size, ``min_dynamic_patch`` and ``use_thumbnail`` are the checkpoint's."""
        self.model, self.tokenizer = model, tokenizer
        self.settings = model.processor_settings
        self.max_num = self.settings.max_tiles if max_num is None else max_num
        self.max_new_tokens = max_new_tokens
        self.image_size = self.settings.image_size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="auto", device=None, **kwargs) -> VLM:
        from vlaser.model.loading import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, **kwargs)

    def media(self, images: Images, video: str | os.PathLike | None = None, max_num: int | None = None,
              num_segments: int = 8) -> Media:
        """Load and tile images (or sample a video) once; pass the result to :meth:`generate`."""
        max_num = self.max_num if max_num is None else max_num
        if video is not None:
            if images:
                raise UserInputError("pass either images or a video, not both")
            pixel_values, counts = load_video(video, input_size=self.image_size, num_segments=num_segments)
            return Media(pixel_values, counts, video_prefix(len(counts)), [])
        if images is None:
            return Media(None, [], "", [])
        items = [images] if isinstance(images, (str, bytes, os.PathLike, Image.Image)) or (
            hasattr(images, "ndim")) else list(images)
        pils = [to_pil(im) for im in items]
        tiles = [self._tiles(im, max_num) for im in pils]
        for i, (item, im, t) in enumerate(zip(items, pils, tiles)):
            name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"{i + 1}"
            log.info("image %s: %dx%d -> %s (max_num %d)", name, *im.size, self._tiles_text(t.shape[0]), max_num)
        prefix = multi_image_prefix(len(pils)) if len(pils) > 1 else ""
        return Media(torch.cat(tiles) if tiles else None, [t.shape[0] for t in tiles], prefix,
                      [im.size for im in pils])

    def _tiles(self, image: Image.Image, max_num: int) -> torch.Tensor:
        """The checkpoint's tiling with ``max_num`` tiles at most (its ``min_dynamic_patch`` capped to fit)."""
        return image_to_tiles(image, max_num=max_num, min_num=min(self.settings.min_num, max_num),
                              image_size=self.image_size, use_thumbnail=self.settings.use_thumbnail)

    def _tiles_text(self, n: int) -> str:
        """``n`` tiles as the grid and thumbnail they are: ``"6 tiles + thumbnail"``."""
        thumbnail = self.settings.use_thumbnail and n > 1
        grid = n - thumbnail
        return f"{grid} tile{'s' if grid > 1 else ''}" + (" + thumbnail" if thumbnail else "")

    def _question(self, media: Media, question: str) -> str:
        if media.prefix and IMAGE_PLACEHOLDER not in question:
            return media.prefix + question
        return question

    def _gen(self, kwargs: dict) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "do_sample": False, **kwargs}

    def ask(self, images: Images, question: str, video: str | os.PathLike | None = None, max_num: int | None = None,
            num_segments: int = 8, **generation) -> str:
        """Answer a question about zero, one or several images (``Image-i:`` prompts) or a video (``Frame-i:``)."""
        media = self.media(images, video, max_num, num_segments)
        return self.generate([media], [question], generation)[0]

    def ask_batch(self, requests: Sequence[tuple[Images, str]], max_num: int | None = None,
                  **generation) -> list[str]:
        """Answer several ``(images, question)`` pairs in one left-padded batch."""
        media = [self.media(images, None, max_num, 0) for images, _ in requests]
        return self.generate(media, [q for _, q in requests], generation)

    def generate(self, media: Sequence[Media], questions: Sequence[str], generation: dict,
                 keep_grounding_tokens: bool = False) -> list[str]:
        """Answer prepared media with questions, in one left-padded batch."""
        return self.generate_answers(media, questions, generation, keep_grounding_tokens)[0]

    def generate_answers(self, media: Sequence[Media], questions: Sequence[str], generation: dict,
                         keep_grounding_tokens: bool = False, system_messages: Sequence[str | None] | None = None
                         ) -> tuple[list[str], list[bool]]:
        """:meth:`generate`, plus whether each answer was cut off at ``max_new_tokens``; a question's system
        message may replace the model's (None keeps it)."""
        systems = system_messages or [None] * len(questions)
        prompts = [
            build_chat_prompt(self._question(m, q), self.model.conv_template, m.num_patches,
                              self.model.num_image_token,
                              system_message=self.model.system_message if s is None else s)[1]
            for m, q, s in zip(media, questions, systems)
        ]
        tiles = [m.pixel_values for m in media if m.pixel_values is not None]
        return self.model.generate_answers(self.tokenizer, prompts, torch.cat(tiles) if tiles else None,
                                           self._gen(generation), keep_grounding_tokens=keep_grounding_tokens)

    def point(self, image: ImageInput, query: str, max_num: int = 6, max_new_tokens: int = 100,
              prompt: bool = True, **generation) -> PointAnswer:
        """Ask for points (Vlaser's point prompt, 6 tiles, greedy, 100 new tokens) and return them in pixels."""
        return self.point_batch([(image, query)], max_num=max_num, max_new_tokens=max_new_tokens, prompt=prompt,
                                **generation)[0]

    def point_batch(self, requests: Sequence[tuple[ImageInput, str]], max_num: int = 6, max_new_tokens: int = 100,
                    prompt: bool = True, **generation) -> list[PointAnswer]:
        """:meth:`point` for several ``(image, query)`` pairs in one batch."""
        pils = [to_pil(image) for image, _ in requests]
        media = [self.media(im, None, max_num, 0) for im in pils]
        questions = [point_question(q) if prompt else q for _, q in requests]
        texts = self.generate(media, questions, {"max_new_tokens": max_new_tokens, **generation},
                               keep_grounding_tokens=True)
        answers = []
        for text, im in zip(texts, pils):
            points, boxes = parse_points(text), parse_boxes(text)
            answers.append(PointAnswer(text=text, points=points, pixels=to_pixels(points, *im.size), boxes=boxes,
                                       box_pixels=to_pixels(boxes, *im.size), size=im.size))
        return answers

    def session(self, images: Images = None, video=None, max_num: int | None = None,
                num_segments: int = 8) -> Session:
        """A multi-turn conversation about fixed media (the original ``chat`` with ``history``)."""
        return Session(self, self.media(images, video, max_num, num_segments))


class Session:
    """Multi-turn chat: each :meth:`ask` sees the earlier turns, exactly like ``model.chat(history=...)``."""

    def __init__(self, vlm: VLM, media: Media):
        self.vlm, self.media = vlm, media
        self.history: list[tuple[str, str]] | None = None

    def ask(self, question: str, **generation) -> str:
        if self.history is None:
            question = self.vlm._question(self.media, question)
        response, self.history = self.vlm.model.chat(
            self.vlm.tokenizer, self.media.pixel_values, question, self.vlm._gen(generation), history=self.history,
            return_history=True, num_patches_list=self.media.num_patches,
        )
        return response

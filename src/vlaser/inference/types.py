"""The vocabulary every inference path speaks: a request, its generation parameters, its completion.

``VLM``, the eval runner and the server translate their own inputs into these types and read answers
back from :class:`Completion`; nothing below them knows which path a request came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from PIL import Image

PictureSource = str | os.PathLike | Image.Image


@dataclass(frozen=True)
class Picture:
    """One image or video frame; ``max_tiles`` None: the checkpoint's setting (or the protocol's) applies."""

    source: PictureSource
    max_tiles: int | None = None
    frame: bool = False  #: a video frame: ``Frame-i`` lines and one tile, as InternVL's video path


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a multi-turn chat."""

    user: str
    assistant: str


@dataclass
class Request:
    """What to ask: the question, its pictures in order, earlier turns and the system message.

    ``tagged`` says the turns already hold one ``<image>`` tag per picture, placed by the caller (a
    benchmark's own layout, a client's message); otherwise the prepare step places them as InternVL does,
    video frames with one ``frame_line`` each (None: InternVL's ``Frame-{i}: <image>``). ``system`` None means
    the model's own system message. This module imports nothing from vlaser: every layer may speak it.
    """

    question: str
    pictures: list[Picture] = field(default_factory=list)
    history: list[Turn] = field(default_factory=list)
    system: str | None = None
    tagged: bool = False
    frame_line: str | None = None


@dataclass(frozen=True)
class GenerationParams:
    """How to decode; ``temperature == 0`` is greedy (InternVL's evaluations decode greedily)."""

    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  #: the answer is cut before the first of these
    seed: int | None = None
    #: keep the ``<ref>``/``<box>``/``<quad>`` tags in the answer (for drawing boxes); off: decoded as ``model.chat``
    keep_grounding_tokens: bool = False

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be from 0 to max_new_tokens ({self.max_new_tokens}), "
                             f"got {self.min_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        if not isinstance(self.keep_grounding_tokens, bool):
            raise ValueError(f"keep_grounding_tokens must be true or false, got {self.keep_grounding_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Prepared:
    """A request made ready for the model: the rendered prompt and its tiles (one engine input row)."""

    prompt: str  #: the full prompt, image tokens expanded, through the template
    pixel_values: torch.Tensor | None  #: (tiles, 3, H, W), every picture's tiles in order
    num_patches: list[int]  #: tiles per picture
    sizes: list[tuple[int, int]]  #: each picture's (width, height), for answers in pixels
    input_ids: list[int] = field(default_factory=list)  #: the tokenised prompt (filled by the engine)


@dataclass
class Completion:
    """An answer: its text, token counts and why it ended (``stop``: end token or stop string; ``length``)."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def truncated(self) -> bool:
        """It ran out of ``max_new_tokens`` before an end token (scored as it stands, and counted)."""
        return self.finish_reason == "length"

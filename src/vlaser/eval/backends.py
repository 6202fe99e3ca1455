"""Where answers come from: a local model through the inference core, or any OpenAI-compatible server.

Both take the runner's :class:`Request` (a prompt with one ``<image>`` tag per picture, the pictures, how
many tiles each may use, the system message) and one :class:`Generation` (the settings): ``prepare``
readies one request's media (run ahead, on a thread where that helps) and ``generate`` answers a batch of
prepared requests with :class:`Answer` s. So a model served by vLLM or LMDeploy is evaluated by the same
runner and scorers as a local checkpoint.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from vlaser.errors import ExternalServiceError
from vlaser.model.constants import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from vlaser.api import Media

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """Generation settings of a run (InternVL's evaluations decode greedily within a token budget)."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False

    def as_dict(self) -> dict:
        """Keyword arguments for transformers' ``generate`` (``min_new_tokens`` only when set)."""
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.min_new_tokens:
            out["min_new_tokens"] = self.min_new_tokens
        return out


@dataclass
class Answer:
    """A generated answer; ``truncated``: it stopped at ``max_new_tokens`` without an end token."""

    text: str
    truncated: bool = False


@dataclass
class Request:
    """One item's question: ``prompt`` holds an ``<image>`` tag where each picture goes, in order.

    ``pictures`` are image files or decoded video frames; ``max_tiles[i]`` is the dynamic-tiling limit of
    picture ``i`` (``max_num`` for still images, 1 for video frames, as InternVL's video path).
    ``system_message`` None means the model's own (InternVL's default for the checkpoints vlaser runs).
    """

    prompt: str
    pictures: list[Path | Image.Image]
    max_tiles: list[int]
    system_message: str | None = None

    def __post_init__(self) -> None:
        tags = self.prompt.count(IMAGE_PLACEHOLDER)
        if tags != len(self.pictures) or len(self.max_tiles) != len(self.pictures):
            raise ValueError(f"a request has {tags} {IMAGE_PLACEHOLDER} tag(s), {len(self.pictures)} picture(s) and "
                             f"{len(self.max_tiles)} tile limit(s); they must match")


class TransformersBackend:
    """Batched greedy generation with a local checkpoint (``VLM.ask_batch``: left-padded ``batch_chat``)."""

    def __init__(self, model_path: str, dtype="auto", device=None, vlm=None):
        """Loads ``model_path``; or, given ``vlm`` (a model already in memory, e.g. one being trained), uses it
        and ``model_path`` only names it in ``run.json``."""
        import os

        import torch

        from vlaser.api import VLM

        if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun process
        self.model_path = model_path
        self.vlm = vlm if vlm is not None else VLM.from_pretrained(model_path, dtype=dtype, device=device)
        self._last_tiles: dict[tuple[int, int], tuple[Image.Image, tuple[int, int], object]] = {}

    @property
    def overlap_io(self) -> bool:
        """Prepare the next batch on a thread only when generation does not need this CPU."""
        return self.vlm.model.device.type != "cpu"

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.model_path, "dtype": str(self.vlm.model.dtype),
                "device": str(self.vlm.model.device), "config_sha256": self._config_hash()}

    def _config_hash(self) -> str:
        """sha256 of the checkpoint's ``config.json`` (of the in-memory config for a model being trained)."""
        config = Path(self.model_path) / "config.json"
        data = config.read_bytes() if config.is_file() else self.vlm.model.config.to_json_string().encode()
        return hashlib.sha256(data).hexdigest()

    def prepare(self, request: Request, pending: dict | None = None) -> tuple[Media, Request]:
        """Load and tile a request's pictures (the runner does this for the next batch during generation).

        Decoded frames shared with the previous request (the runner hands the same frame objects to questions
        about one clip) reuse their tiles. ``pending``: ``(image file, max_tiles) -> future`` of the ``tiling``
        calls worker processes are running for this batch.
        """
        import torch

        from vlaser.api import Media

        tiles, sizes, reused = [], [], {}
        for picture, max_tiles in zip(request.pictures, request.max_tiles):
            key = (id(picture), max_tiles)
            hit = self._last_tiles.get(key)
            if isinstance(picture, Image.Image):
                size, tensor = hit[1:] if hit is not None and hit[0] is picture else self._tile(picture, max_tiles)
                reused[key] = (picture, size, tensor)
            elif pending is not None and (picture, max_tiles) in pending:
                size, tensor = pending[picture, max_tiles].result()
            else:
                size, tensor = self._tile(picture, max_tiles)
            tiles.append(tensor)
            sizes.append(size)
        self._last_tiles = reused
        media = Media(torch.cat(tiles) if tiles else None, [t.shape[0] for t in tiles], "", sizes)
        return media, request

    def tiling(self, picture: Path | Image.Image, max_tiles: int) -> tuple[Callable, tuple]:
        """The call that tiles one picture for this model, as a module-level function and its arguments, so a
        worker process can run the very same call."""
        return tile_picture, (picture, max_tiles, self.vlm.image_size)

    def _tile(self, picture: Path | Image.Image, max_tiles: int):
        call, args = self.tiling(picture, max_tiles)
        return call(*args)

    def generate(self, prepared: Sequence[tuple[Media, Request]], generation: Generation) -> list[Answer]:
        """Answers for prepared requests, in one left-padded batch."""
        texts, cut = self.vlm.generate_answers([m for m, _ in prepared], [r.prompt for _, r in prepared],
                                               generation.as_dict(),
                                               system_messages=[r.system_message for _, r in prepared])
        return [Answer(text, truncated) for text, truncated in zip(texts, cut)]


def tile_picture(picture: Path | Image.Image, max_tiles: int, image_size: int):
    """``((width, height), tiles)`` of an image file or frame: what ``TransformersBackend`` feeds its model."""
    from vlaser.model.preprocess import image_to_tiles, to_pil

    pil = to_pil(picture)
    return pil.size, image_to_tiles(pil, max_num=max_tiles, image_size=image_size)


def _data_url(picture: Path | Image.Image) -> str:
    """A file's bytes as they are, or a decoded frame as JPEG (quality 95), in a base64 data URL."""
    if isinstance(picture, Image.Image):
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
    else:
        data = Path(picture).read_bytes()
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


ENGINES = ("auto", "vllm", "lmdeploy", "vlaser", "openai")  #: ``--api-engine`` choices; ``auto`` asks the server
LMDEPLOY_IMAGE_TOKEN = "<IMAGE_TOKEN>"  #: LMDeploy's image placeholder (``lmdeploy.vl.constants``)


def to_payload(request: Request, model: str, generation: Generation, system_message: str | None = None,
               engine: str = "openai") -> dict:
    """An OpenAI chat-completions request, shaped so that ``engine`` builds InternVL's prompt from it exactly.

    - Content: the prompt as a string when it has no pictures (LMDeploy puts an empty ``<img></img>`` before a
      list without images). Otherwise, by engine:
      - ``vllm`` and ``vlaser``: the whole prompt, ``<image>`` tags and all, as one text part, then the images in
        order. vLLM (``--chat-template-content-format string``) keeps the tags a text already holds and adds only
        missing ones (``chat_utils._get_full_multimodal_text_prompt``), and fills them in order; ``vlaser serve``
        reads tags the same way. So text before or between the images (MMSI's ``Image-i:`` lines, VSI's frames)
        stays where InternVL puts it.
      - ``lmdeploy``: the same with LMDeploy's ``<IMAGE_TOKEN>`` tag: it reads only the first text part and places
        the images at its tags (``lmdeploy/vl/model/internvl.py``, ``proc_messages``).
      - ``openai`` (any other server): the prompt cut at its tags into text and image parts in the same order;
        the newline after a tag (InternVL's ``<image>\n``) is left to the server's template, empty text parts are
        dropped. vLLM and LMDeploy read this exactly only when the images come first.
    - The system message (the request's, else ``system_message``) goes first: vLLM's InternVL path does not add
      InternVL's default one, a known cause of large score drops.
    - Tiles: LMDeploy reads ``max_dynamic_patch`` inside each ``image_url`` part (so frames get 1 and still
      images ``max_num``); vLLM reads ``mm_processor_kwargs.max_dynamic_patch`` for the whole request (the
      still images' limit, or 1 when there are only frames). Each server ignores the other's field.
    - Greedy is ``temperature`` 0; ``min_new_tokens`` goes as vLLM's ``min_tokens`` and LMDeploy's
      ``min_new_tokens``.
    """
    if engine not in ENGINES[1:]:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES[1:])}")
    images = [{"type": "image_url", "image_url": {"url": _data_url(picture), "max_dynamic_patch": tiles}}
              for picture, tiles in zip(request.pictures, request.max_tiles)]
    content: str | list[dict]
    if not images:
        content = request.prompt
    elif engine == "openai":
        content = _interleaved(request.prompt, images)
    else:
        tag = LMDEPLOY_IMAGE_TOKEN if engine == "lmdeploy" else IMAGE_PLACEHOLDER
        content = [{"type": "text", "text": request.prompt.replace(IMAGE_PLACEHOLDER, tag)}, *images]
    messages = [{"role": "user", "content": content}]
    system = request.system_message if request.system_message is not None else system_message
    if system:
        messages.insert(0, {"role": "system", "content": system})
    payload = {"model": model, "messages": messages, "max_tokens": generation.max_new_tokens,
               "temperature": 1.0 if generation.do_sample else 0.0}
    if request.pictures:
        still = [n for n, p in zip(request.max_tiles, request.pictures) if not isinstance(p, Image.Image)]
        payload["mm_processor_kwargs"] = {"max_dynamic_patch": max(still) if still else 1}
    if generation.min_new_tokens:
        payload["min_tokens"] = payload["min_new_tokens"] = generation.min_new_tokens
    return payload


def _interleaved(prompt: str, images: list[dict]) -> list[dict]:
    """The prompt cut at its ``<image>`` tags into text parts, with each image part where its tag stood."""
    content: list[dict] = []
    for k, text in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        text = re.sub(r"^\n", "", text) if k else text
        if text:
            content.append({"type": "text", "text": text})
        if k < len(images):
            content.append(images[k])
    return content


def detect_engine(api_base: str, model: str, api_key: str | None = None, timeout: float = 10) -> str:
    """The engine behind an OpenAI-compatible server, from the ``owned_by`` of ``model`` in its ``/models`` list
    (vLLM says ``vllm``, LMDeploy ``lmdeploy``, ``vlaser serve`` ``vlaser``); ``openai`` for anything else."""
    url = api_base.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            cards = json.loads(response.read()).get("data") or []
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, AttributeError) as e:
        log.warning("%s did not list its models (%s): sending interleaved parts (--api-engine to choose)", url, e)
        return "openai"
    card = next((c for c in cards if isinstance(c, dict) and c.get("id") == model), None)
    owner = card.get("owned_by") if card else None
    engine = owner if owner in ENGINES[1:] else "openai"
    log.info("%s: model %s is owned by %s: sending the %s payload", url, model, owner, engine)
    return engine


def from_response(body: dict) -> Answer:
    """The answer of a chat-completions response (``""`` when the server returned no content); a
    ``finish_reason`` of ``length`` means it was cut off at ``max_tokens``."""
    try:
        choice = body["choices"][0]
        return Answer(choice["message"].get("content") or "", choice.get("finish_reason") == "length")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ExternalServiceError(f"not a chat-completions response: {json.dumps(body)[:300]}") from e


class ServerError(ExternalServiceError):
    """The server refused a request (a 4xx other than 429): retrying would not help."""


class OpenAIBackend:
    """Concurrent requests to ``{api_base}/chat/completions``; transient failures (connection errors,
    timeouts, 429, 5xx) are retried with back-off, other 4xx fail at once with the server's message.

    Sends InternVL's default system message unless ``system_message`` says otherwise (``""``: none); the key
    comes from ``OPENAI_API_KEY`` when set.
    """

    overlap_io = True  # the server does the work; read the next batch's images meanwhile

    def __init__(self, api_base: str, model: str, concurrency: int = 8, timeout: float = 300, retries: int = 3,
                 system_message: str | None = None, engine: str = "auto"):
        from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
        self.api_base, self.requested_engine = api_base, engine
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout, self.retries = model, concurrency, timeout, retries
        self.system_message = INTERNVL2_5_SYSTEM_MESSAGE if system_message is None else system_message
        self.api_key = os.environ.get("OPENAI_API_KEY")

    @functools.cached_property
    def engine(self) -> str:
        """The payload shape to send (``to_payload``): ``--api-engine``, or the server's answer to ``/models``."""
        if self.requested_engine != "auto":
            return self.requested_engine
        return detect_engine(self.api_base, self.model, self.api_key)

    def info(self) -> dict:
        return {"backend": "openai", "model": self.model, "api_base": self.url, "engine": self.engine,
                "system_message": self.system_message}

    def _post(self, payload: dict) -> Answer:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers)
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return from_response(json.loads(response.read()))
            except urllib.error.HTTPError as e:
                message = e.read().decode("utf-8", "replace")[:1000]
                if e.code != 429 and e.code < 500:
                    raise ServerError(f"{self.url} answered {e.code}: {message}") from e
                problem: Exception = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = e
            if attempt == self.retries:
                raise ExternalServiceError(f"{self.url}: no answer after {self.retries + 1} tries: "
                                           f"{problem}") from problem
            log.warning("%s: %s; retrying", self.url, problem)
            time.sleep(min(2**attempt, 30) * 0.5)
        raise AssertionError("unreachable")

    def prepare(self, request: Request) -> Request:
        """Check the image files open (a missing or corrupt one is named here, before any request)."""
        from vlaser.model.preprocess import to_pil

        for picture in request.pictures:
            if not isinstance(picture, Image.Image):
                to_pil(picture)
        return request

    def generate(self, prepared: Sequence[Request], generation: Generation) -> list[Answer]:
        payloads = [to_payload(request, self.model, generation, self.system_message, self.engine)
                    for request in prepared]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

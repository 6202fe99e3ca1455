"""Where answers come from: a local model through the inference core, or any OpenAI-compatible server.

Both take the runner's :class:`Request` (a prompt with one ``<image>`` tag per picture, the pictures, and
how many tiles each may use): ``prepare`` readies one request's media (run ahead, on a thread where that
helps) and ``generate`` answers a batch of prepared requests. So a model served by vLLM or LMDeploy is
evaluated by the same runner and scorers as a local checkpoint.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from vlaser.model.constants import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from vlaser.api import Media

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One item's question: ``prompt`` holds an ``<image>`` tag where each picture goes, in order.

    ``pictures`` are image files or decoded video frames; ``max_tiles[i]`` is the dynamic-tiling limit of
    picture ``i`` (``max_num`` for still images, 1 for video frames, as InternVL's video path).
    """

    prompt: str
    pictures: list[Path | Image.Image]
    max_tiles: list[int]

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
        self._last_tiles: dict[tuple[int, int], tuple[Image.Image, object]] = {}

    @property
    def overlap_io(self) -> bool:
        """Prepare the next batch on a thread only when generation does not need this CPU."""
        return self.vlm.model.device.type != "cpu"

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.model_path, "dtype": str(self.vlm.model.dtype)}

    def prepare(self, request: Request) -> tuple[Media, str]:
        """Load and tile a request's pictures (the runner does this for the next batch during generation).

        Decoded frames shared with the previous request (the runner hands the same frame objects to questions
        about one clip) reuse their tiles.
        """
        import torch

        from vlaser.api import Media

        tiles, sizes, reused = [], [], {}
        for picture, max_tiles in zip(request.pictures, request.max_tiles):
            key = (id(picture), max_tiles)
            hit = self._last_tiles.get(key)
            pil, tensor = hit if hit is not None and hit[0] is picture else self._tile(picture, max_tiles)
            if isinstance(picture, Image.Image):
                reused[key] = (picture, tensor)
            tiles.append(tensor)
            sizes.append(pil.size)
        self._last_tiles = reused
        media = Media(torch.cat(tiles) if tiles else None, [t.shape[0] for t in tiles], "", sizes)
        return media, request.prompt

    def _tile(self, picture: Path | Image.Image, max_tiles: int):
        from vlaser.model.preprocess import image_to_tiles, to_pil

        pil = to_pil(picture)
        return pil, image_to_tiles(pil, max_num=max_tiles, image_size=self.vlm.image_size)

    def generate(self, prepared: Sequence[tuple[Media, str]], max_new_tokens: int) -> list[str]:
        """Greedy answers for prepared requests, in one left-padded batch."""
        return self.vlm.generate([m for m, _ in prepared], [prompt for _, prompt in prepared],
                                 {"max_new_tokens": max_new_tokens, "do_sample": False})


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


def to_payload(request: Request, model: str, max_new_tokens: int) -> dict:
    """An OpenAI chat-completions request; greedy decoding.

    The prompt is cut at its ``<image>`` tags into text and image parts in the same order, so a server places
    each picture where the prompt puts it; the newline that follows a tag (InternVL's ``<image>\n``) is left
    to the server's own template, and empty text parts are dropped.
    """
    content: list[dict] = []
    texts = request.prompt.split(IMAGE_PLACEHOLDER)
    for k, text in enumerate(texts):
        text = re.sub(r"^\n", "", text) if k else text
        if text:
            content.append({"type": "text", "text": text})
        if k < len(request.pictures):
            content.append({"type": "image_url", "image_url": {"url": _data_url(request.pictures[k])}})
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_new_tokens,
            "temperature": 0.0}


def from_response(body: dict) -> str:
    """The answer text of a chat-completions response (``""`` when the server returned no content)."""
    try:
        return body["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat-completions response: {json.dumps(body)[:300]}") from e


class OpenAIBackend:
    """Concurrent requests to ``{api_base}/chat/completions``, with bounded retries and back-off.

    Tiling is the server's (vLLM and LMDeploy tile InternVL images themselves); the key comes from
    ``OPENAI_API_KEY`` when set.
    """

    overlap_io = True  # the server does the work; read the next batch's images meanwhile

    def __init__(self, api_base: str, model: str, concurrency: int = 8, timeout: float = 300, retries: int = 3):
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout, self.retries = model, concurrency, timeout, retries
        self.api_key = os.environ.get("OPENAI_API_KEY")

    def info(self) -> dict:
        return {"backend": "openai", "model": self.model, "api_base": self.url}

    def _post(self, payload: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers)
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return from_response(json.loads(response.read()))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise RuntimeError(f"{self.url}: no answer after {self.retries + 1} tries: {e}") from e
                log.warning("%s: %s; retrying", self.url, e)
                time.sleep(min(2**attempt, 30) * 0.5)
        raise AssertionError("unreachable")

    def prepare(self, request: Request) -> Request:
        """Check the image files open (a missing or corrupt one is named here, before any request)."""
        from vlaser.model.preprocess import to_pil

        for picture in request.pictures:
            if not isinstance(picture, Image.Image):
                to_pil(picture)
        return request

    def generate(self, prepared: Sequence[Request], max_new_tokens: int) -> list[str]:
        payloads = [to_payload(request, self.model, max_new_tokens) for request in prepared]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

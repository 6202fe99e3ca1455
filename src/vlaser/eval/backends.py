"""Where answers come from: a local model through the inference core, or any OpenAI-compatible server.

Both are :class:`Backend` s: ``prepare`` readies one :class:`~vlaser.inference.Request` (run ahead, on a
thread where that helps) and ``generate`` answers a batch of them under one
:class:`~vlaser.inference.GenerationParams` with :class:`~vlaser.inference.Completion` s. So a model served
by vLLM or LMDeploy is evaluated by the same runner and scorers as a local checkpoint.
"""

from __future__ import annotations

import base64
import dataclasses
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
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from vlaser.errors import ExternalServiceError
from vlaser.eval.registry import SERVERS
from vlaser.inference import Completion, GenerationParams, Picture, Prepared, Request
from vlaser.inference.engine import Engine
from vlaser.inference.prepare import Pending, Preparer, own_tile_limit, place_tags
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.settings import ProcessorSettings

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the eval runner asks of a model, local or behind an API."""

    #: prepare the next batch on a thread while this one generates (not when generation needs this CPU)
    overlap_io: bool
    #: pictures are tiled in this process, so ``--workers`` processes can tile them ahead (``tiling``)
    tiles_locally: bool
    #: the checkpoint's tiling, which decides a protocol's tile limit with it (``resolve_max_tiles``); None for a
    #: server, which tiles with its own (a backend without the attribute counts as None)
    processor_settings: ProcessorSettings | None

    def info(self) -> dict:
        """What answers: recorded in ``run.json`` and compared on resume."""

    def tiling(self, picture: Path, max_tiles: int) -> tuple[Callable, tuple]:
        """The call that tiles one image for this model, as a module-level function and its arguments."""

    def prepare(self, request: Request, pending: Pending | None = None) -> Any:
        """One request made ready to generate (media read, and for a local model tiled)."""

    def generate(self, prepared: Sequence[Any], params: GenerationParams, max_batch_size: int | None = None
                 ) -> list[Completion]:
        """Completions of prepared requests, in their order; at most ``max_batch_size`` run together (a local
        model's batch; an API backend keeps its own concurrency)."""


class TransformersBackend:
    """A local checkpoint as a :class:`Backend`: it holds the inference core's prepare step (the checkpoint's
    tiling, tiles reused and made ahead) and its engine, and hands the runner's tile limits and generation
    settings straight to them. This class only loads the model and says what answers."""

    tiles_locally = True

    def __init__(self, model_path: str, dtype="auto", device=None, vlm=None, static_capacity: int | None = None,
                 cuda_graphs: bool = False):
        """Loads ``model_path``; or, given ``vlm`` (a model already in memory, e.g. one being trained), uses it
        and ``model_path`` only names it in ``run.json``. ``static_capacity`` and ``cuda_graphs``: the engine's
        fixed-shape decode."""
        import torch

        from vlaser.api import VLM

        if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun process
        self.model_path = model_path
        vlm = vlm if vlm is not None else VLM.from_pretrained(model_path, dtype=dtype, device=device)
        self.model, self.processor_settings = vlm.model, vlm.model.processor_settings
        self.preparer = Preparer(vlm.model)
        self.engine = Engine(vlm.model, vlm.tokenizer, static_capacity=static_capacity, cuda_graphs=cuda_graphs)

    def tiling(self, picture: Path, max_tiles: int) -> tuple[Callable, tuple]:
        return self.preparer.tiling(picture, max_tiles)

    def prepare(self, request: Request, pending: Pending | None = None) -> Prepared:
        return self.preparer.prepare(request, pending)

    def generate(self, prepared: Sequence[Prepared], params: GenerationParams, max_batch_size: int | None = None
                 ) -> list[Completion]:
        return self.engine.generate(prepared, params, max_batch_size)

    @property
    def overlap_io(self) -> bool:
        """Prepare the next batch on a thread only when generation does not need this CPU."""
        return self.model.device.type != "cpu"

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.model_path, "dtype": str(self.model.dtype),
                "device": str(self.model.device), "config_sha256": self._config_hash(),
                "decode": {"static_capacity": self.engine.static_capacity, "cuda_graphs": self.engine.cuda_graphs}}

    def _config_hash(self) -> str:
        """sha256 of the checkpoint's ``config.json`` (of the in-memory config for a model being trained)."""
        config = Path(self.model_path) / "config.json"
        data = config.read_bytes() if config.is_file() else self.model.config.to_json_string().encode()
        return hashlib.sha256(data).hexdigest()


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


LMDEPLOY_IMAGE_TOKEN = "<IMAGE_TOKEN>"  #: LMDeploy's image placeholder (``lmdeploy.vl.constants``)


def to_payload(request: Request, model: str, params: GenerationParams, system_message: str | None = None,
               server: str = "openai") -> dict:
    """An OpenAI chat-completions request, shaped so that ``server`` builds InternVL's prompt from it exactly.

    - Content: the prompt (the request's question, its tags placed by the prepare step) as a string when it has
      no pictures (LMDeploy puts an empty ``<img></img>`` before a
      list without images). Otherwise, by server:
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
    - Earlier turns go as user and assistant messages before the question, each user turn with the pictures its
      tags place.
    - The system message (the request's, else ``system_message``) goes first: vLLM's InternVL path does not add
      InternVL's default one, a known cause of large score drops. An empty one means none: sent empty to
      ``vlaser`` (which reads a missing one as the model's own), left out for the others.
    - Tiles: LMDeploy (and ``vlaser serve``) read ``max_dynamic_patch`` inside each ``image_url`` part (so frames
      get 1 and still images their ``max_tiles``); vLLM reads ``mm_processor_kwargs.max_dynamic_patch`` for the whole
      request (the still images' limit, or 1 when there are only frames), not sent to ``vlaser``, where it would
      override the server's setting for pictures without their own. A picture without a limit of its own sends
      none (the server's setting applies).
    - Greedy is ``temperature`` 0; ``min_new_tokens`` goes as vLLM's ``min_tokens`` and LMDeploy's
      ``min_new_tokens``; ``top_p``, ``stop`` and ``seed`` go when set.
    """
    if server not in SERVERS[1:]:
        raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS[1:])}")
    messages = _messages(request, server)
    system = request.system if request.system is not None else system_message
    if system or (system == "" and server == "vlaser"):  # vlaser serve reads no system message as the model's own
        messages.insert(0, {"role": "system", "content": system})
    payload = {"model": model, "messages": messages, "max_tokens": params.max_new_tokens,
               "temperature": params.temperature}
    limits = [own_tile_limit(p) for p in request.pictures if own_tile_limit(p) is not None]
    if limits and server != "vlaser":  # vlaser serve reads each picture's own, and none as its own setting
        still = [p.max_tiles for p in request.pictures if not p.frame and p.max_tiles is not None]
        payload["mm_processor_kwargs"] = {"max_dynamic_patch": max(still) if still else 1}
    if params.min_new_tokens:
        payload["min_tokens"] = payload["min_new_tokens"] = params.min_new_tokens
    if params.top_p != 1:
        payload["top_p"] = params.top_p
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed
    return payload


def _messages(request: Request, server: str) -> list[dict]:
    """The user and assistant turns, each user turn with the pictures its tags place (the question's placed by
    the prepare step)."""
    texts = [turn.user for turn in request.history] + [place_tags(request)]
    pictures, messages = iter(request.pictures), []
    for k, text in enumerate(texts):
        messages.append({"role": "user", "content": _content(text, [_image_part(next(pictures)) for _ in
                                                                    range(text.count(IMAGE_PLACEHOLDER))], server)})
        if k < len(request.history):
            messages.append({"role": "assistant", "content": request.history[k].assistant})
    return messages


def _content(text: str, images: list[dict], server: str) -> str | list[dict]:
    """One user turn's content in ``server``'s shape (see :func:`to_payload`)."""
    if not images:
        return text
    if server == "openai":
        return _interleaved(text, images)
    tag = LMDEPLOY_IMAGE_TOKEN if server == "lmdeploy" else IMAGE_PLACEHOLDER
    return [{"type": "text", "text": text.replace(IMAGE_PLACEHOLDER, tag)}, *images]


def _image_part(picture: Picture) -> dict:
    """One picture as an ``image_url`` part, with its own tile limit when it has one (LMDeploy's field)."""
    image_url: dict[str, Any] = {"url": _data_url(picture.source)}
    if own_tile_limit(picture) is not None:
        image_url["max_dynamic_patch"] = own_tile_limit(picture)
    return {"type": "image_url", "image_url": image_url}


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


def detect_server(api_base: str, model: str, api_key: str | None = None, timeout: float = 10) -> str:
    """The kind of server (vLLM, LMDeploy, vlaser serve) behind an OpenAI-compatible API, from the ``owned_by`` of
    ``model`` in its ``/models`` list
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
    server = owner if owner in SERVERS[1:] else "openai"
    log.info("%s: model %s is owned by %s: sending the %s payload", url, model, owner, server)
    return server


def from_response(body: dict) -> Completion:
    """The completion of a chat-completions response (``""`` when the server returned no content); a
    ``finish_reason`` of ``length`` means it was cut off at ``max_tokens``."""
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(choice["message"].get("content") or "",
                          "length" if choice.get("finish_reason") == "length" else "stop",
                          int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
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
    tiles_locally = False  # the server tiles
    processor_settings = None  # with its checkpoint's settings

    def __init__(self, api_base: str, model: str, concurrency: int = 8, timeout: float = 300, retries: int = 3,
                 system_message: str | None = None, server: str = "auto"):
        from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")
        self.api_base, self.requested_server = api_base, server
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout, self.retries = model, concurrency, timeout, retries
        self.system_message = INTERNVL2_5_SYSTEM_MESSAGE if system_message is None else system_message
        self.api_key = os.environ.get("OPENAI_API_KEY")

    @functools.cached_property
    def server(self) -> str:
        """The payload shape to send (``to_payload``): ``--api-engine``, or the server's answer to ``/models``."""
        if self.requested_server != "auto":
            return self.requested_server
        return detect_server(self.api_base, self.model, self.api_key)

    def info(self) -> dict:
        return {"backend": "openai", "model": self.model, "api_base": self.url, "server": self.server,
                "system_message": self.system_message}

    def _post(self, payload: dict) -> Completion:
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

    def tiling(self, picture: Path, max_tiles: int) -> tuple[Callable, tuple]:
        raise TypeError("the server tiles its images; no tiling call to run here (tiles_locally is False)")

    def prepare(self, request: Request, pending: Pending | None = None) -> Request:
        """The request with its tags placed by the prepare step (the payload renders that prompt), its image files
        checked to open (a missing or corrupt one is named here, before any request)."""
        from vlaser.model.preprocess import to_pil

        for picture in request.pictures:
            if not isinstance(picture.source, Image.Image):
                to_pil(picture.source)
        return dataclasses.replace(request, question=place_tags(request), tagged=True)

    def generate(self, prepared: Sequence[Request], params: GenerationParams, max_batch_size: int | None = None
                 ) -> list[Completion]:
        payloads = [to_payload(request, self.model, params, self.system_message, self.server)
                    for request in prepared]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

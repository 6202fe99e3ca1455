"""Where answers come from: a local model through the inference core, or any OpenAI-compatible server.

Both take ``[(image paths, prompt), ...]`` and return one text per request, so a model served by vLLM or
LMDeploy is evaluated by the same runner and scorers as a local checkpoint.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)


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

    @property
    def overlap_io(self) -> bool:
        """Prepare the next batch on a thread only when generation does not need this CPU."""
        return self.vlm.model.device.type != "cpu"

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.model_path, "dtype": str(self.vlm.model.dtype)}

    def prepare(self, paths: Sequence[Path], max_num: int):
        """Load and tile an item's images (the runner does this for the next batch during generation)."""
        return self.vlm.media(paths[0] if len(paths) == 1 else list(paths), max_num=max_num)

    def generate(self, requests: Sequence[tuple[object, str]], max_num: int, max_new_tokens: int) -> list[str]:
        """Greedy answers for ``(prepared media or image paths, prompt)`` pairs, in one batch."""
        media = [m if not isinstance(m, (list, tuple)) else self.prepare(m, max_num) for m, _ in requests]
        return self.vlm.generate(media, [prompt for _, prompt in requests],
                                 {"max_new_tokens": max_new_tokens, "do_sample": False})


def to_payload(paths: Sequence[Path], prompt: str, model: str, max_new_tokens: int) -> dict:
    """An OpenAI chat-completions request: images as base64 data URLs, then the prompt; greedy decoding."""
    content = []
    for path in paths:
        data = Path(path).read_bytes()
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        content.append({"type": "image_url",
                        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}})
    content.append({"type": "text", "text": prompt})
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

    def prepare(self, paths: Sequence[Path], max_num: int) -> list[Path]:
        """Check the images open (a missing or corrupt one is named here, before any request)."""
        from vlaser.model.preprocess import to_pil

        for path in paths:
            to_pil(path)
        return list(paths)

    def generate(self, requests: Sequence[tuple[list[Path], str]], max_num: int, max_new_tokens: int) -> list[str]:
        payloads = [to_payload(paths, prompt, self.model, max_new_tokens) for paths, prompt in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

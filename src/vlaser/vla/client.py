"""A client for ``vlaser vla serve``, in the standard library only, so it can be copied into a simulator's own
environment (SimplerEnv's Python 3.10 with SAPIEN) without vlaser, torch or transformers.

    client = PolicyClient("http://127.0.0.1:8100")
    chunk = client.act([image], state, "put the spoon on the towel")   # (chunk, action_dim) nested lists

Images go as raw pixel buffers (anything with ``shape``, ``dtype`` and ``tobytes()``, such as a numpy array),
or as PNG/JPEG bytes; the answer's actions are plain lists (``numpy.asarray`` them if you like).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def encode_image(image: Any) -> dict | str:
    """One image in the ``/act`` body: ``{"shape", "dtype", "data"}`` for a pixel array (H, W, 3), a base64 string
    for encoded bytes (PNG, JPEG)."""
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode("ascii")
    if not all(hasattr(image, a) for a in ("shape", "dtype", "tobytes")):
        raise TypeError(f"an image must be a pixel array or encoded bytes, got {type(image).__name__}")
    return {"shape": [int(n) for n in image.shape], "dtype": str(image.dtype),
            "data": base64.b64encode(image.tobytes()).decode("ascii")}


class PolicyError(RuntimeError):
    """The policy server refused a request (its message says why) or could not be reached."""


class PolicyClient:
    """Talks to one policy server; ``act`` is one observation in, one action chunk out."""

    def __init__(self, url: str = "http://127.0.0.1:8100", timeout: float = 60.0, api_key: str | None = None) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                detail = json.loads(detail)["error"]["message"]  # the server's error body
            raise PolicyError(f"{self.url}{path} answered {e.code}: {detail}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise PolicyError(f"cannot reach the policy server at {self.url}: {e}") from e

    def health(self) -> dict:
        """The server's policy: its config (``proprio_dim``, ``action_dim``, ``chunk_size``, ``act_steps``...)."""
        return self._call("/health")

    def info(self) -> dict:
        """What the policy expects: ``cameras`` and their sizes, ``state_dim``, ``action_dim``, ``chunk_size``,
        ``act_steps``, and each field of ``act`` in words (``expects``)."""
        return self._call("/info")

    def act(self, images: Sequence[Any], state: Sequence[float], instruction: str,
            noise: Sequence[Sequence[float]] | None = None) -> list[list[float]]:
        """The un-normalised action chunk for raw ``state`` and one image per camera; ``noise`` (chunk,
        action_dim) fixes the flow's starting point (reproducible rollouts)."""
        body: dict[str, Any] = {"images": [encode_image(im) for im in images],
                                "state": _finite([float(v) for v in state], "state"), "instruction": instruction}
        if noise is not None:
            body["noise"] = [_finite([float(v) for v in row], f"noise[{i}]") for i, row in enumerate(noise)]
        return self._call("/act", body)["actions"]


def _finite(values: list[float], name: str) -> list[float]:
    """``values``, unless one is NaN or infinite (JSON has no such numbers, and the policy no use for them)."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] is not a finite number ({v}); the policy server refuses it")
    return values

"""``vlaser vla serve``: a VLA policy behind HTTP, so a simulator in its own environment can drive it.

``POST /act`` takes one observation (an image per camera, the raw proprio, the instruction, optionally the
flow's starting noise) and answers the un-normalised action chunk; ``GET /health`` describes the policy.
``vla.client.PolicyClient`` is the matching client. One request runs at a time (the model is not shared
between threads).
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from vlaser.errors import UserInputError
from vlaser.vla.policy import VLAPolicy


class RawImage(BaseModel):
    shape: list[int]
    dtype: str = "uint8"
    data: str  #: base64 of the pixel buffer, row-major (H, W, 3)


class Observation(BaseModel):
    images: list[RawImage | str] = Field(min_length=1)  #: one per camera; a string is a base64 PNG/JPEG
    state: list[float]
    instruction: str
    noise: list[list[float]] | None = None


class Action(BaseModel):
    actions: list[list[float]]  #: (chunk, action_dim), un-normalised
    act_steps: int  #: how many of them the policy was trained to execute before the next query
    seconds: float  #: time the policy took for this chunk


def decode_image(image: RawImage | str, index: int) -> Any:
    """A camera image of the body: an ``(H, W, 3)`` uint8 array, or a PIL image from encoded bytes."""
    try:
        if isinstance(image, str):
            from PIL import Image

            raw = base64.b64decode(image.split(",", 1)[1] if image.startswith("data:") else image, validate=True)
            return Image.open(io.BytesIO(raw)).convert("RGB")
        array = np.frombuffer(base64.b64decode(image.data, validate=True), dtype=np.dtype(image.dtype))
        array = array.reshape(image.shape)
    except (ValueError, TypeError, binascii.Error, OSError) as e:
        raise UserInputError(f"images[{index}]: cannot decode ({e})") from e
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise UserInputError(f"images[{index}]: expected uint8 pixels of shape (H, W, 3), got {array.dtype} "
                             f"{tuple(array.shape)}")
    return array


def create_app(policy: VLAPolicy, name: str = "vla") -> FastAPI:
    """The policy server's app (``uvicorn.run(create_app(policy))``)."""
    app = FastAPI(title="vlaser VLA policy", version="1")
    lock = threading.Lock()
    cfg = policy.config

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "policy": name, "proprio_dim": cfg.proprio_dim, "action_dim": cfg.action_dim,
                "chunk_size": cfg.chunk_size, "act_steps": cfg.act_steps, "image_size": cfg.image_size,
                "sticky_gripper_steps": cfg.sticky_gripper_steps, "normalized": policy.normalizer is not None}

    @app.post("/act")
    def act(obs: Observation) -> Action:
        try:
            images = [decode_image(im, i) for i, im in enumerate(obs.images)]
            noise = None if obs.noise is None else np.asarray(obs.noise, dtype=np.float32)
            if noise is not None and noise.shape != (cfg.chunk_size, cfg.action_dim):
                raise UserInputError(f"noise has shape {noise.shape}, the policy expects "
                                     f"{(cfg.chunk_size, cfg.action_dim)}")
            with lock:
                start = time.perf_counter()
                actions = policy.predict(images, np.asarray(obs.state, dtype=np.float64), obs.instruction, noise)
                seconds = time.perf_counter() - start
        except UserInputError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        return Action(actions=actions.tolist(), act_steps=cfg.act_steps, seconds=seconds)

    return app


def serve(path: str, host: str = "127.0.0.1", port: int = 8100, device: str = "cpu", dtype: str = "float32") -> None:
    """Load the policy at ``path`` and serve it until interrupted."""
    import uvicorn

    policy = VLAPolicy.from_pretrained(path, dtype=dtype, device=device)
    uvicorn.run(create_app(policy, name=str(path)), host=host, port=port, log_level="info")

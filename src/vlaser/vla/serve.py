"""``vlaser vla serve``: a VLA policy behind HTTP, so a simulator in its own environment can drive it.

``POST /act`` takes one observation (an image per camera, the raw proprio, the instruction, optionally the
flow's starting noise) and answers the un-normalised action chunk; ``GET /info`` says what the policy expects
(cameras and their sizes, state and action sizes, chunk, ``act_steps``); ``GET /health`` is the liveness check.
The app stands on ``vlaser serve``'s stack (``serve.app.api_app``): the same API key, body-size limit and error
body, so every bad request is a 400 naming the field and what was expected, without echoing what was sent.
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

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from vlaser.errors import UserInputError
from vlaser.serve.app import APIError, api_app
from vlaser.serve.schema import ErrorBody
from vlaser.vla.checks import STATE_KEY
from vlaser.vla.config import VLAConfig
from vlaser.vla.policy import VLAPolicy

#: a normalised state or noise value this far from [-1, 1] is refused: the policy's numbers would overflow
FAR = 1e4


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


def expected(cfg: VLAConfig) -> dict[str, str]:
    """What each field of ``/act`` must hold for this policy, in words (the error messages end with it)."""
    if cfg.cameras:
        cams = ", ".join(f"{name} ({h}x{w})" for name, (h, w) in cfg.cameras.items())
        images = f"{len(cfg.cameras)} camera image(s) in this order: {cams}"
    else:
        images = "one image per camera"
    return {
        "images": f"{images}; each a base64 PNG/JPEG string or {{'shape': [H, W, 3], 'dtype': 'uint8', 'data': "
                  f"base64 pixels}} (resized to {cfg.image_size} px)",
        "state": f"a list of {cfg.proprio_dim} finite numbers (the raw proprio)",
        "instruction": "a string (the task)",
        "noise": f"null or {cfg.chunk_size} lists of {cfg.action_dim} finite numbers",
    }


def policy_info(policy: VLAPolicy, name: str) -> dict[str, Any]:
    """What ``/info`` answers: what the policy expects and gives."""
    cfg = policy.config
    return {"policy": name, "cameras": cfg.cameras, "image_size": cfg.image_size, "state_dim": cfg.proprio_dim,
            "action_dim": cfg.action_dim, "chunk_size": cfg.chunk_size, "act_steps": cfg.act_steps,
            "num_inference_steps": cfg.num_inference_steps, "sticky_gripper_steps": cfg.sticky_gripper_steps,
            "normalized": policy.normalizer is not None, "expects": expected(cfg)}


def _field_path(loc: tuple) -> tuple[str, bool]:
    """``images[0].shape`` from pydantic's location, and whether the path ran into a union member's name (a
    value that is none of the forms allowed)."""
    path = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in Observation.model_fields or part in RawImage.model_fields:
            path += f".{part}" if path else str(part)
        else:  # "RawImage", "str", "function-after[...]": which form was tried
            return path, True
    return path, False


def validation_error(errors: list[dict], cfg: VLAConfig) -> APIError:
    """One 400 for pydantic's errors: the field, pydantic's reason (never the value) and what the policy expects."""
    error = min(errors, key=lambda e: len(e.get("loc", ())))
    if error.get("type") == "json_invalid":
        return APIError(400, "malformed JSON: the body must be one JSON object (an observation)")
    path, union = _field_path(tuple(error.get("loc", ())))
    if not path:
        return APIError(400, "the body must be a JSON object with images, state and instruction (and optionally "
                             "noise)")
    top = path.split("[")[0].split(".")[0]
    reason = ("missing" if error.get("type") == "missing" else "none of the allowed forms" if union
              else str(error.get("msg", "invalid")).split(",")[0])
    return APIError(400, f"{path}: {reason}; expected {expected(cfg)[top]}", param=top)


def decode_image(image: RawImage | str, index: int) -> Any:
    """A camera image of the body: an ``(H, W, 3)`` uint8 array, or a PIL image from encoded bytes."""
    where = f"images[{index}]"
    if isinstance(image, str):
        from PIL import Image

        try:
            raw = base64.b64decode(image.split(",", 1)[1] if image.startswith("data:") else image, validate=True)
            return Image.open(io.BytesIO(raw)).convert("RGB")
        except (ValueError, binascii.Error):
            raise UserInputError(f"{where}: not base64; expected a base64 PNG/JPEG string") from None
        except OSError:
            raise UserInputError(f"{where}: not a PNG or JPEG image (it cannot be decoded)") from None
    if image.dtype != "uint8":
        raise UserInputError(f"{where}.dtype: expected uint8 (RGB pixels 0-255), got {image.dtype[:20]!r}")
    if len(image.shape) != 3 or image.shape[2] != 3 or min(image.shape) < 1:
        raise UserInputError(f"{where}.shape: expected [height, width, 3], got {image.shape[:4]}")
    try:
        raw = base64.b64decode(image.data, validate=True)
    except (ValueError, binascii.Error):
        raise UserInputError(f"{where}.data: not base64; expected the base64 of the pixel buffer") from None
    want = int(np.prod(image.shape))
    if len(raw) != want:
        raise UserInputError(f"{where}.data: {len(raw)} bytes, but shape {image.shape} of uint8 needs {want}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(image.shape)


def _finite(values: np.ndarray, name: str, limit: float | None = None) -> None:
    bad = ~np.isfinite(values) if limit is None else ~(np.abs(values) <= limit)
    if bad.any():
        index = "".join(f"[{int(i)}]" for i in np.argwhere(bad)[0])
        what = "is not a finite number" if limit is None else f"is over {limit:g} once normalised"
        raise UserInputError(f"{name}{index} {what}; expected finite numbers"
                             + ("" if limit is None else " near the training range"))


def check_observation(obs: Observation, policy: VLAPolicy) -> tuple[list, np.ndarray, np.ndarray | None]:
    """The images, state and noise of a parsed body, each checked against the policy (a 400 names the field)."""
    cfg = policy.config
    if cfg.cameras and len(obs.images) != len(cfg.cameras):
        raise APIError(400, f"images: got {len(obs.images)}; expected {expected(cfg)['images']}", param="images")
    images = [decode_image(im, i) for i, im in enumerate(obs.images)]
    state = np.asarray(obs.state, dtype=np.float64)
    if state.shape != (cfg.proprio_dim,):
        raise APIError(400, f"state: {state.size} values; expected {expected(cfg)['state']}", param="state")
    _finite(state, "state")
    if policy.normalizer is not None:
        _finite(np.asarray(policy.normalizer.normalize(STATE_KEY, state)), "state", FAR)
    noise = None
    if obs.noise is not None:
        if len({len(row) for row in obs.noise}) > 1:
            raise APIError(400, f"noise: rows of different lengths; expected {expected(cfg)['noise']}", param="noise")
        noise = np.asarray(obs.noise, dtype=np.float64)
        if noise.shape != (cfg.chunk_size, cfg.action_dim):
            raise APIError(400, f"noise: shape {noise.shape}; expected {expected(cfg)['noise']}", param="noise")
        _finite(noise, "noise")
        _finite(noise, "noise", FAR)
        noise = noise.astype(np.float32)
    need = policy.collator.prompt_length(len(images), obs.instruction)
    if need > cfg.prefix_len:
        raise APIError(400, f"instruction: with {len(images)} image(s) the prompt is {need} tokens, over the "
                            f"policy's prefix of {cfg.prefix_len}; expected a shorter instruction"
                            + ("" if cfg.cameras else " or fewer images"), param="instruction")
    return images, state, noise


def _observation_route(cfg: VLAConfig) -> type[APIRoute]:
    """``/act``'s route class: a body pydantic refuses is a 400 in the server's shape that names the field and
    what the policy expects, without the value sent (FastAPI's own answer echoes the body, images included)."""

    class ObservationRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def route(request):
                try:
                    return await handler(request)
                except RequestValidationError as e:
                    raise validation_error(list(e.errors()), cfg) from None

            return route

    return ObservationRoute


def act_router(policy: VLAPolicy) -> APIRouter:
    """``POST /act`` for ``policy``, to mount on an app of the serving stack."""
    router = APIRouter(route_class=_observation_route(policy.config))
    lock = threading.Lock()
    cfg = policy.config
    errors = {400: {"model": ErrorBody, "description": "a field is missing, malformed or does not fit the policy"},
              401: {"model": ErrorBody, "description": "a missing or wrong API key"},
              413: {"model": ErrorBody, "description": "the body is over the size limit"}}

    def run(obs: Observation) -> Action:
        images, state, noise = check_observation(obs, policy)
        with lock:
            start = time.perf_counter()
            actions = policy.predict(images, state, obs.instruction, noise)
            seconds = time.perf_counter() - start
        if not np.isfinite(actions).all():  # never answered: a client would drive a robot with it
            raise RuntimeError("the policy produced non-finite actions")
        return Action(actions=actions.tolist(), act_steps=cfg.act_steps, seconds=seconds)

    @router.post("/act", response_model=Action, responses=errors,
                 summary="one observation in, one un-normalised action chunk out")
    async def act(obs: Observation) -> Action:
        return await anyio.to_thread.run_sync(run, obs)

    return router


def create_app(policy: VLAPolicy, name: str = "vla", *, api_key: str | None = None,
               max_body_bytes: int = 64 * 2**20) -> FastAPI:
    """The policy server's app (``uvicorn.run(create_app(policy))``): ``/act``, ``/info`` and ``/health`` on the
    serving stack (``api_key`` and ``max_body_bytes`` as for ``vlaser serve``)."""
    app = api_app("vlaser VLA policy", "A Vlaser-VLA policy: one observation in, one action chunk out.",
                  api_key=api_key, max_body_bytes=max_body_bytes)
    cfg = policy.config

    @app.get("/health", summary="liveness: 200 while the server runs (no key needed)")
    async def health() -> dict:
        return {"status": "ok", "policy": name, "proprio_dim": cfg.proprio_dim, "action_dim": cfg.action_dim,
                "chunk_size": cfg.chunk_size, "act_steps": cfg.act_steps, "image_size": cfg.image_size,
                "sticky_gripper_steps": cfg.sticky_gripper_steps, "normalized": policy.normalizer is not None}

    @app.get("/info", summary="what the policy expects: cameras and sizes, state and action sizes, chunk")
    async def info() -> dict:
        return policy_info(policy, name)

    app.include_router(act_router(policy))
    return app


def serve(path: str, host: str = "127.0.0.1", port: int = 8100, device: str = "cpu", dtype: str = "float32",
          api_key: str | None = None, max_body_bytes: int = 64 * 2**20) -> None:
    """Load the policy at ``path`` and serve it until interrupted."""
    import uvicorn

    policy = VLAPolicy.from_pretrained(path, dtype=dtype, device=device)
    app = create_app(policy, name=str(path), api_key=api_key, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level="info")

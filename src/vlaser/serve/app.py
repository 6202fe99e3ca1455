"""The HTTP API of ``vlaser serve``: OpenAI's chat completions (plain and streamed), the model list, a health
check and the web page, in front of the batching :class:`~vlaser.serve.scheduler.Scheduler`.

What lives here: routes, the API key, the body-size gate, OpenAI-style errors and server-sent events. What a
request means is read by :mod:`vlaser.serve.messages`, batching and generation in the scheduler, the page
in :mod:`vlaser.serve.page`.

Every problem a client can cause is a 4xx with OpenAI's body ``{"error": {"message", "type", "param",
"code"}}``: 400 for anything wrong in the request (malformed JSON, wrongly typed fields, images, limits), 401
without the key, 413 for a body over the limit, 429 when the queue is full. A client that goes away cancels
its job, whether it was streaming or waiting. With an API key, every route needs ``Authorization: Bearer
KEY`` except ``/health`` and the web page's own files (``/``, ``/static/*``, ``/ui/config``: they hold no
model access, and a browser cannot send a header when it opens a page; the page sends the key it is given).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TypeVar

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from vlaser.errors import UserInputError
from vlaser.inference.types import GenerationParams
from vlaser.serve.messages import SERVER_LIMITS, MediaLimits, parse_chat_request
from vlaser.serve.scheduler import Completion, Job, QueueFull, Stream
from vlaser.serve.schema import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorBody,
    ModelCard,
    ModelList,
    describe_errors,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_PATHS = ("/health", "/", "/ui/config", "/static/")  #: served without the key (see the module docstring)
DOCS_ASSETS = "/docs-assets"  #: where /docs and /redoc load Swagger UI's and ReDoc's files from
_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in [
    (400, "the request is malformed or over a limit"), (401, "a missing or wrong API key"),
    (413, "the body is over the size limit"), (429, "the queue is full; retry later")]}


class APIError(Exception):
    """A request refused with an HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(scheduler, model_name: str, *, api_key: str | None = None, limits: MediaLimits = SERVER_LIMITS,
               defaults: GenerationParams | None = None, max_body_bytes: int = 64 * 2**20) -> FastAPI:
    """The API around a started-on-startup ``scheduler`` (a ``Scheduler`` or anything with its interface; it
    holds the tile limit of a picture whose request sets none).

    Args:
        model_name: the id ``/v1/models`` lists and answers carry.
        api_key: required as ``Authorization: Bearer KEY`` (compared in constant time); ``None``: open.
        limits: what a request may ask for and carry (its new tokens and tiles at most, refused above, never cut;
            images, their size and where they may come from); ``vlaser serve``'s flags build it.
        defaults: the decoding of a request that does not say (None: ``GenerationParams()``); its answer length is
            cut to the cap of ``limits``.
        max_body_bytes: a larger body is refused (413) before it is read in full.
    """
    defaults = defaults or GenerationParams()
    if limits.max_new_tokens is not None and defaults.max_new_tokens > limits.max_new_tokens:
        defaults = replace(defaults, max_new_tokens=limits.max_new_tokens)
    app = api_app("vlaser serve", "An OpenAI-compatible chat-completions API for InternVL3/Vlaser models.",
                  api_key=api_key, max_body_bytes=max_body_bytes, lifespan=_lifespan(scheduler))
    _add_model_routes(app, model_name)
    _add_chat_route(app, scheduler, model_name, limits, defaults)

    from vlaser.points import POINT_PROMPT
    from vlaser.serve.page import mount_page

    mount_page(app, model_name, POINT_PROMPT)
    return app


def api_app(title: str, description: str, *, api_key: str | None, max_body_bytes: int, lifespan=None) -> FastAPI:
    """An app on the server's stack, without routes: the gate (API key, body size), every error as OpenAI's body
    and the OpenAPI schema of what is sent (400, not FastAPI's 422). ``vlaser serve`` and ``vlaser vla serve``
    both stand on it."""
    # /docs (Swagger UI) and /redoc from assets shipped in fastapi-offline, not a CDN: they work offline
    app = FastAPIOffline(title=title, version="1", lifespan=lifespan, static_url=DOCS_ASSETS, description=description)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)
    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


def _lifespan(scheduler):
    """Start the scheduler with the app; on shutdown drain the jobs in flight (uvicorn has waited for their
    connections)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()

    return lifespan


def _add_model_routes(app: FastAPI, model_name: str) -> None:
    """``/health`` and the model list, which names the one model served."""
    card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "vlaser"}

    @app.get("/health", summary="liveness: 200 while the server runs (no key needed)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]})
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={
        401: _ERRORS[401], 404: {"model": ErrorBody, "description": "not the served model"}})
    async def model(model_id: str) -> dict:
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} is not served here; this server runs {model_name!r}",
                           "not_found_error", param="model", code="model_not_found")
        return card


def _add_chat_route(app: FastAPI, scheduler, model_name: str, limits: MediaLimits, defaults: GenerationParams) -> None:
    """``POST /v1/chat/completions``: the body read into a job, submitted, answered whole or streamed."""

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={
        **_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "the answer, or with stream: true "
                                                                               "chat.completion.chunk events"}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        job = await _job(body, limits, defaults)
        try:
            stream = scheduler.submit(job)
        except QueueFull as e:
            raise APIError(429, f"the server's queue is full: {e}", "rate_limit_error",
                           code="queue_full") from e
        answer = _Answer(model_name, include_usage=bool(body.stream_options and body.stream_options.include_usage))
        # a job that fails before generating (e.g. a prompt over the model's context) is still a 4xx, not a stream
        finished, completion = await _unless_gone(stream.prepared() if body.stream else stream.result(), stream,
                                                  request)
        if not finished:  # the client went away; nobody reads this
            return JSONResponse({}, status_code=499)
        if body.stream:
            return StreamingResponse(answer.events(stream), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return answer.body(completion)


async def _job(body: ChatCompletionRequest, limits: MediaLimits, defaults: GenerationParams) -> Job:
    """The scheduler's job for a validated body; images are decoded on a worker thread, off the event loop."""
    if body.n not in (None, 1):
        raise APIError(400, f"n must be 1 (this server generates one choice per request), got {body.n}", param="n")
    if body.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if body.response_format and body.response_format.get("type") != "text":
        raise APIError(400, f"response_format {body.response_format.get('type')!r} is not supported: this server "
                            "does not constrain decoding (only {'type': 'text'})", param="response_format")
    request, params = await anyio.to_thread.run_sync(parse_chat_request, body, limits, defaults)
    return Job(request=request, params=params)


async def _until_disconnect(request: Request) -> None:
    """Return when the client has gone away (the body was read before, so only ``http.disconnect`` comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(work: Awaitable[T], stream: Stream, request: Request) -> tuple[bool, T | None]:
    """``(True, what work gives)``, or ``(False, None)`` and the job cancelled, freeing its slot, when the
    client leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return True, task.result()
    stream.cancel()
    task.cancel()
    return False, None


class _Answer:
    """One request's response in OpenAI's shapes: the whole body, or its stream of chunks."""

    def __init__(self, model_name: str, include_usage: bool):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model_name
        self.include_usage = include_usage

    def body(self, completion: Completion) -> dict:
        message = {"role": "assistant", "content": completion.text}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason,
                             "logprobs": None}],
                "usage": _usage(completion)}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        if self.include_usage:
            chunk["usage"] = None
        return _event(chunk)

    async def events(self, stream: Stream) -> AsyncIterator[str]:
        """The role, the text deltas, the finish reason, the usage if asked, ``[DONE]``. A client that leaves
        cancels the job: Starlette cancels this generator when it sees the disconnect."""
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for delta in stream:
                if delta:
                    yield self._chunk({"content": delta})
            completion = await stream.result()
            finished = True
        except Exception as e:  # the status line is sent: the failure can only go in the stream
            log.exception("generation failed")
            yield _event({"error": {"message": f"generation failed: {type(e).__name__}", "type": "server_error",
                                    "param": None, "code": None}})
            return
        finally:
            if not finished:
                stream.cancel()
        yield self._chunk({}, completion.finish_reason)
        if self.include_usage:
            yield _event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                          "model": self.model, "choices": [], "usage": _usage(completion)})
        yield "data: [DONE]\n\n"


def _usage(completion: Completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---- errors ------------------------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_errors(list(exc.errors()))
        return error_response(400, message, param=param)

    @app.exception_handler(UserInputError)
    async def bad_input(_: Request, exc: UserInputError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(APIError)
    async def refused(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404
                              else "invalid_request_error", headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the 422 it documents for every body replaced by what the server sends (400)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


# ---- the gate: key and body size, before any route --------------------------------------------------------------


class _Gate:
    """ASGI middleware: checks the API key, then reads the body up to ``max_body_bytes`` (the declared
    Content-Length first, then the bytes as they come) and hands it on; over the limit it answers 413 at once."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key and not _is_open(scope["path"]):
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.key):
                response = error_response(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = error_response(413, f"the request body is over this server's limit of {self.max_body_bytes} "
                                       "bytes; send smaller images or fewer", code="body_too_large")
        await response(scope, receive, send)


def _is_open(path: str) -> bool:
    return any(path == p or (p.endswith("/") and len(p) > 1 and path.startswith(p)) for p in OPEN_PATHS)

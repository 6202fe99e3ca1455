"""The chat-completions request and response bodies as pydantic models: the one parse of a request (types, ranges,
the rules of a conversation and its content parts) and the OpenAPI schema; :mod:`vlaser.serve.messages` turns a
validated request into the inference vocabulary, checking only the server's own limits.

The wire's names for the tile limit (``max_num``, vLLM's ``mm_processor_kwargs.max_dynamic_patch``, LMDeploy's
``image_url.max_dynamic_patch``) and for new tokens (``max_tokens``, ``max_completion_tokens``) stop here: the
request answers :meth:`ChatCompletionRequest.max_tiles` and :meth:`ChatCompletionRequest.max_new_tokens`, each
checked against the server's cap once, in the words the client sent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from vlaser.errors import UserInputError

SYSTEM_ROLES = ("system", "developer")  #: ``developer`` is OpenAI's newer name for the system role
RULE = "request_rule"  #: the error type of the rules below (their messages name the message and part themselves)


class _Open(BaseModel):
    """Fields the API does not know are accepted (clients send their own extras) and ignored."""

    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str = Field(description="a base64 data: URL ('data:image/png;base64,...'); an http(s) URL when the server "
                                 "runs with --allow-remote-media; a file:// URL or path inside the folder given to "
                                 "--allow-local-media")
    detail: str | None = Field(None, description="accepted and ignored (tiling is set by max_num)")
    max_dynamic_patch: int | None = Field(None, ge=1, strict=True,
                                          description="this image's tile limit (LMDeploy's field)")


def _capped(value: int | None, name: str, cap: int | None, limit: str) -> int | None:
    """``value`` as sent in the field ``name``; over the server's ``cap`` it is refused (``limit`` says what the cap
    is), never cut."""
    if value is not None and cap is not None and value > cap:
        raise UserInputError(f"{name} {value} is over this server's {limit.format(cap)}")
    return value


TILE_CAP = "limit of {} tiles per image"  #: how a refused tile limit names the server's cap


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError(RULE, message.replace("{", "{{").replace("}", "}}"))


def _known_part(part: Any) -> Any:
    """A part's ``type`` named before the union is tried, so an unknown one reads as such."""
    if isinstance(part, dict) and part.get("type") not in ("text", "image_url"):
        raise _rule(f"unsupported content part type {part.get('type')!r} (supported: 'text', 'image_url')")
    return part


def _string_or_parts(content: Any) -> Any:
    if not isinstance(content, str | list):
        raise _rule(f"content must be a string or a list of parts, got {type(content).__name__}")
    return content


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL | str = Field(description="the image, as an object or as the URL string itself")

    def url(self) -> str:
        """The image's URL, whichever form the part has."""
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url

    def max_tiles(self, where: str, cap: int | None) -> int | None:
        """This image's own tile limit (LMDeploy's field), at most ``cap``; ``where`` names the part in an error."""
        own = None if isinstance(self.image_url, str) else self.image_url.max_dynamic_patch
        return _capped(own, f"{where}: image_url.max_dynamic_patch", cap, TILE_CAP)


ContentPart = Annotated[Annotated[TextPart | ImagePart, Field(discriminator="type")], BeforeValidator(_known_part)]


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="a system (or developer) message only first; then user and assistant turns, ending with user")
    content: Annotated[str | list[ContentPart], BeforeValidator(_string_or_parts)] = Field(
        description="text, or text and image parts; several images before the text become 'Image-1: <image>' "
                    "lines as model.chat's multi-image prompt, a text with '<image>' tags places one image per tag")
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = Field(False, strict=True, description="send a last chunk with the token usage")


class ProcessorKwargs(_Open):
    max_dynamic_patch: int | None = Field(None, ge=1, strict=True, description="the request's tile limit (vLLM's)")


class ChatCompletionRequest(_Open):
    """An OpenAI chat-completions request; vlaser adds ``max_num`` and reads vLLM's and LMDeploy's tile fields."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(None, description="accepted as sent: the server runs one model and answers with its "
                                                "name")
    max_tokens: int | None = Field(None, ge=1, strict=True, description="new tokens at most (the server's default "
                                                                        "when absent; over the server's cap: 400)")
    max_completion_tokens: int | None = Field(None, ge=1, strict=True, description="OpenAI's newer name for "
                                                                                   "max_tokens; wins over it")
    temperature: float | None = Field(None, ge=0, le=2, strict=True,
                                      description="0 (the default, as model.chat) decodes greedily")
    top_p: float | None = Field(None, gt=0, le=1, strict=True, description="nucleus sampling (with temperature > 0)")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, strict=True,
                             description="makes sampling repeatable (a 64-bit integer, as torch.manual_seed takes)")
    stop: str | list[str] | None = Field(None, description="text (or texts) that end the answer; not included in it")
    min_tokens: int | None = Field(None, ge=0, strict=True,
                                   description="vLLM's: the end token is held back until this many tokens are "
                                               "generated (0 by default; at most max_tokens); a stop string still "
                                               "ends the answer where it appears")
    min_new_tokens: int | None = Field(None, ge=0, strict=True, description="LMDeploy's name for min_tokens (both "
                                                                            "may be sent when they agree)")
    skip_special_tokens: bool | None = Field(None, strict=True,
                                             description="vLLM's: false keeps the grounding tags (<ref>, <box>, "
                                                         "<quad>) in the answer, true drops them as model.chat does; "
                                                         "the server's --keep-grounding-tokens setting when absent")
    n: int | None = Field(1, strict=True, description="choices per request: only 1")
    stream: bool | None = Field(False, strict=True,
                                description="answer as server-sent events (chat.completion.chunk)")
    stream_options: StreamOptions | None = None
    max_num: int | None = Field(None, ge=1, strict=True,
                                description="vlaser: tiles per image at most (the server's --max-num when absent)")
    mm_processor_kwargs: ProcessorKwargs | None = Field(None, description="vLLM's: max_dynamic_patch is read as "
                                                                          "max_num")
    response_format: dict[str, Any] | None = Field(None, description="only {'type': 'text'}: decoding is not "
                                                                     "constrained")
    logprobs: bool | None = Field(None, strict=True, description="not supported: true is refused")

    def max_new_tokens(self, cap: int | None) -> int | None:
        """The new tokens asked for: ``max_completion_tokens`` (OpenAI's current name), else ``max_tokens``; over the
        server's ``cap`` is an error (the one place the cap is checked)."""
        for name in ("max_completion_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None:
                return _capped(value, name, cap, "cap of {} tokens")
        return None

    def max_tiles(self, cap: int | None) -> int | None:
        """The request's tile limit: ``max_num``, else vLLM's ``mm_processor_kwargs.max_dynamic_patch``; either
        over the server's ``cap`` is an error."""
        value = _capped(self.max_num, "max_num", cap, TILE_CAP)
        vllm = self.mm_processor_kwargs.max_dynamic_patch if self.mm_processor_kwargs else None
        vllm = _capped(vllm, "mm_processor_kwargs.max_dynamic_patch", cap, TILE_CAP)
        return value if value is not None else vllm

    @model_validator(mode="after")
    def _rules(self) -> ChatCompletionRequest:
        """What a field's type cannot say: the conversation's order, where images may stand, and settings that
        must agree."""
        for index, message in enumerate(self.messages):
            _check_message(message, f"message {index}", index)
        roles = [m.role for m in self.messages if m.role not in SYSTEM_ROLES]
        if roles[:1] == ["assistant"]:
            first = next(k for k, m in enumerate(self.messages) if m.role == "assistant")
            raise _rule(f"message {first}: the conversation must start with a user message")
        if roles[-1:] != ["user"]:
            raise _rule(f"message {len(self.messages) - 1}: the last message must be a user message")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and not all(stop):
            raise _rule(f"stop strings must not be empty, got {stop}")
        if None not in (self.min_tokens, self.min_new_tokens) and self.min_tokens != self.min_new_tokens:
            raise _rule(f"min_tokens {self.min_tokens} and min_new_tokens {self.min_new_tokens} disagree; send one "
                        "of them (min_new_tokens is another name for min_tokens)")
        return self

    def images(self) -> int:
        """Image parts in all messages."""
        return sum(isinstance(part, ImagePart) for m in self.messages if isinstance(m.content, list)
                   for part in m.content)


def _check_message(message: Message, where: str, index: int) -> None:
    """One message's rules: a system message only first, images only from the user, valid Unicode, image URLs of a
    known scheme and data: URLs in base64."""
    if message.role in SYSTEM_ROLES and index != 0:
        raise _rule(f"{where}: a {message.role} message is only accepted first")
    parts = [message.content] if isinstance(message.content, str) else message.content
    for k, part in enumerate(parts):
        if isinstance(part, ImagePart):
            if message.role != "user":
                raise _rule(f"{where}, part {k}: images are only accepted in user messages")
            _check_url(part.url(), f"{where}, part {k}")
        elif not _is_unicode(part if isinstance(part, str) else part.text):
            raise _rule(f"{where}: the text holds a lone UTF-16 surrogate (an escape like \\ud800 without its "
                        "pair); send valid Unicode")


def _check_url(url: str, where: str) -> None:
    if url.startswith("data:"):
        header, comma, _ = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise _rule(f"{where}: a data: URL must be base64-encoded ('data:image/png;base64,...'), got header "
                        f"{header[:60]!r}")
        return
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "", "file") and len(scheme) != 1:  # C: is a drive letter, not a scheme
        raise _rule(f"{where}: unsupported image URL scheme {scheme!r} (supported: data:, and where the server "
                    "allows them http(s): and file:)")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to strings that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_request(body: Any) -> ChatCompletionRequest:
    """A chat-completions body (the parsed JSON) validated, or a :class:`~vlaser.errors.UserInputError` worded as
    the server's 400 is."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise UserInputError(describe_errors(e.errors())[0]) from e


def describe_errors(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line for pydantic's errors and the field it is about: the most specific one, with its field
    path (type names that pydantic puts in union paths left out); a rule's message names its place itself."""
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = tuple(error.get("loc", ()))
    path: list[str] = []
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        text = str(part)
        if "[" in text or text[:1].isupper() or text in ("str", "int", "float", "bool") or (path and path[-1] == text):
            continue
        path.append(text)
    if error.get("type") == RULE:
        return _placed(path, error["msg"]), path[0] if path else None
    if error.get("type") == "json_invalid":
        return f"malformed JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    if error.get("type") == "missing" and not path:
        return "the request needs a JSON body (a chat-completions object with 'messages')", None
    where = ".".join(path) or "the body"
    got = f" (got {json.dumps(error['input'], default=str)[:80]})" if "input" in error and path else ""
    return f"{where}: {error['msg']}{got}", path[0] if path else None


def _placed(path: list[str], message: str) -> str:
    """A rule's message behind its place: ``messages.0.content.1`` reads ``message 0, part 1``."""
    if path[:1] != ["messages"]:
        return message
    where = ", ".join(f"{name} {k}" for name, k in zip(("message", "part"), path[1::2], strict=False))
    return f"{where}: {message}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlaser"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

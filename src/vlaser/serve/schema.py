"""The chat-completions request and response bodies as pydantic models: types, limits and documentation for
the OpenAPI schema; what a request means is read by :mod:`vlaser.serve.messages`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL | str = Field(description="the image, as an object or as the URL string itself")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="a system (or developer) message only first; then user and assistant turns, ending with user")
    content: str | list[ContentPart] = Field(
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

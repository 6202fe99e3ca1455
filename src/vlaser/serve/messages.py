"""OpenAI chat-completions requests read into vlaser's prompt pieces (the server-side mirror of ``to_payload``).

A request's ``messages`` become: the system message (``None`` when the client sent none, so the model's own
default system message applies, as ``model.chat`` does), the earlier turns as ``(user, assistant)`` pairs,
and the final user question. Every image is decoded from its base64 ``data:`` URL into a PIL image and
leaves an ``<image>`` tag where its part stood; ``images`` lists them in the order of the tags across the
whole conversation, which is the order ``expand_images`` fills them in.

How content parts are joined into one text (chosen so that ``vlaser.eval.backends.to_payload`` round-trips):

- text parts are used as they are; two text parts in a row are joined with ``"\\n"``;
- an image part becomes ``<image>``, with a ``"\\n"`` before it when the text before it does not end in
  whitespace, and a ``"\\n"`` after it when anything follows (InternVL's ``<image>\\n`` convention).

So EmbodiedBench's ``[image, text]`` user message reads ``"<image>\\n" + text``, exactly what
``model.chat`` builds for one image. Consecutive messages of the same role are joined with ``"\\n"``.

Not accepted, with a ``ValueError`` naming the message (and part): remote image URLs (never fetched; send
the image as a base64 ``data:`` URL), part types other than ``text`` and ``image_url``, bad base64, data
that is not an image, a literal ``<image>`` in the text, images outside user messages, a system message
after the first position, and a conversation that does not end with a user message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vlaser.errors import UserInputError
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import ImageLoadError, to_pil
from vlaser.model.template import ChatTemplate, build_chat_prompt

SYSTEM_ROLES = ("system", "developer")  #: ``developer`` is OpenAI's newer name for the system role


@dataclass
class ChatRequest:
    """One chat-completions request in vlaser's terms; generation fields are ``None`` when not sent."""

    question: str
    images: list[Image.Image] = field(default_factory=list)
    system: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict | None = None
    model: str | None = None

    def render(self, template: ChatTemplate, num_patches_list: Sequence[int], num_image_token: int,
               default_system: str) -> str:
        """The full prompt (image tokens expanded) through vlaser's one template path, ``build_chat_prompt``."""
        system = default_system if self.system is None else self.system
        return build_chat_prompt(self.question, template, num_patches_list, num_image_token,
                                 history=self.history, system_message=system)[1]


def _decode_image(url: Any, where: str) -> Image.Image:
    """A base64 ``data:`` URL as an RGB image; anything else is refused (remote URLs are never fetched)."""
    if not isinstance(url, str):
        raise ValueError(f"{where}: image_url.url must be a string, got {type(url).__name__}")
    if not url.startswith("data:"):
        raise ValueError(f"{where}: remote image URLs are not fetched ({url[:60]!r}); send the image as a base64 "
                         "data: URL ('data:image/png;base64,...')")
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise UserInputError(f"{where}: a data: URL must be base64-encoded ('data:image/png;base64,...'), "
                             f"got header {header[:60]!r}")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{where}: bad base64 in the data: URL ({e})") from e
    try:
        return to_pil(data)
    except ImageLoadError as e:
        raise ValueError(f"{where}: the data: URL does not hold a readable image ({e})") from e


def _part(part: Any, where: str, images_allowed: bool) -> tuple[str, Any]:
    """One content part as ``("text", str)`` or ``("image", PIL image)``."""
    if not isinstance(part, dict):
        raise UserInputError(f"{where}: a content part must be an object, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise UserInputError(f"{where}: a text part needs a string 'text'")
        return "text", text
    if kind == "image_url":
        if not images_allowed:
            raise UserInputError(f"{where}: images are only accepted in user messages")
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        return "image", _decode_image(url, where)
    raise ValueError(f"{where}: unsupported content part type {kind!r} (supported: 'text', 'image_url')")


def _join(pieces: list[tuple[str, Any]], images: list[Image.Image]) -> str:
    """Text and ``<image>`` tags in part order (rules in the module docstring); images go to ``images``."""
    out, previous = "", None
    for kind, value in pieces:
        if kind == "text":
            if not value:
                continue
            if previous is not None:  # after text: a separator; after an image: the tag's newline
                out += "\n"
            out += value
        else:
            if previous == "image" or (previous == "text" and not out[-1].isspace()):
                out += "\n"
            out += IMAGE_PLACEHOLDER
            images.append(value)
        previous = kind
    return out


def _content(message: dict, where: str, images: list[Image.Image], images_allowed: bool) -> str:
    """A message's content (a string or a list of parts) as text with ``<image>`` tags."""
    content = message.get("content")
    if isinstance(content, str):
        pieces = [("text", content)]
    elif isinstance(content, list):
        pieces = [_part(part, f"{where}, part {k}", images_allowed) for k, part in enumerate(content)]
    else:
        raise ValueError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    for kind, value in pieces:
        if kind == "text" and IMAGE_PLACEHOLDER in value:
            raise ValueError(f"{where}: the text contains a literal {IMAGE_PLACEHOLDER!r}; send images as "
                             "image_url parts")
    return _join(pieces, images)


def _turns(messages: list, images: list[Image.Image]) -> tuple[str | None, list[tuple[str, str]]]:
    """The system message and the role-merged ``(role, text)`` turns, checked for order."""
    system, turns = None, []
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise UserInputError(f"{where}: a message must be an object, got {type(message).__name__}")
        role = message.get("role")
        if role in SYSTEM_ROLES:
            if index != 0:
                raise ValueError(f"{where}: a {role} message is only accepted first")
            system = _content(message, where, images, images_allowed=False)
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"{where}: unsupported role {role!r} (supported: system, developer, user, assistant)")
        text = _content(message, where, images, images_allowed=role == "user")
        if not turns and role == "assistant":
            raise UserInputError(f"{where}: the conversation must start with a user message")
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise UserInputError(f"message {len(messages) - 1}: the last message must be a user message")
    return system, turns


def _number(body: dict, key: str, integer: bool, minimum: float) -> Any:
    """An optional numeric field, checked (``True``/``False`` are not numbers here)."""
    value = body.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        raise UserInputError(f"{key} must be {'an integer' if integer else 'a number'} >= {minimum}, got {value!r}")
    return value


def parse_chat_request(body: dict) -> ChatRequest:
    """Read a chat-completions request body (the parsed JSON) into a :class:`ChatRequest`.

    ``max_completion_tokens`` (OpenAI's current name) wins over ``max_tokens`` when both are sent;
    ``response_format`` is kept as sent, for the server to honour or refuse.
    """
    if not isinstance(body, dict):
        raise UserInputError(f"a chat request is a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("a chat request needs a non-empty 'messages' list")
    images: list[Image.Image] = []
    system, turns = _turns(messages, images)
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    max_tokens = _number(body, "max_completion_tokens", True, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", True, 1)
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise UserInputError(f"response_format must be an object, got {type(response_format).__name__}")
    model = body.get("model")
    return ChatRequest(question=turns[-1][1], images=images, system=system, history=history, max_tokens=max_tokens,
                       temperature=_number(body, "temperature", False, 0), response_format=response_format,
                       model=model if isinstance(model, str) else None)

"""OpenAI chat-completions requests read into the inference vocabulary (the server-side inverse of ``to_payload``).

A body becomes a :class:`~vlaser.inference.Request` (system message, earlier turns, the question, every image as a
:class:`~vlaser.inference.Picture` with its own tile limit, in tag order) and its
:class:`~vlaser.inference.GenerationParams`. How content parts become text with ``<image>`` tags, where images may
come from and what is refused: ``docs/serve.md``.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from vlaser.errors import UserInputError
from vlaser.inference.types import GenerationParams, Picture, Request, Turn
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import to_pil
from vlaser.model.template import images_first

SYSTEM_ROLES = ("system", "developer")  #: ``developer`` is OpenAI's newer name for the system role
LMDEPLOY_IMAGE_TOKEN = "<IMAGE_TOKEN>"  #: LMDeploy's image placeholder (``lmdeploy.vl.constants``), read as ``<image>``
_HEADER_LOCK = threading.Lock()  # the warnings filter PIL's bomb check goes through is process-wide


@dataclass(frozen=True)
class MediaLimits:
    """Which images a request may carry and where they may come from (the defaults: data URLs, PIL's limits)."""

    max_images: int | None = None
    """Images per request (all messages together)."""
    max_tokens: int | None = None
    """The most new tokens a request may ask for (``max_tokens``, ``max_completion_tokens``): more is refused, never
    silently cut."""
    max_tiles: int | None = None
    """The largest tile limit a request may ask for (``max_num``, ``max_dynamic_patch``): each tile costs the
    model ``num_image_token`` tokens."""
    max_pixels: int | None = None
    """Width x height of one image, read from its header before it is decoded (PIL's own decompression-bomb
    limit, ``Image.MAX_IMAGE_PIXELS``, refuses larger images whatever this says)."""
    allow_remote: bool = False
    """Fetch ``http(s)`` image URLs (off by default: a public server must not fetch what it is told to)."""
    allow_private_hosts: bool = False
    """With ``allow_remote``, also fetch from private, loopback and link-local addresses (off: a request could
    otherwise read the server's own network, cloud metadata included). Off, proxies from the environment are not
    used either, since the proxy would make the connection."""
    local_root: Path | None = None
    """Read ``file://`` URLs and plain paths inside this folder (symlinks resolved); ``None``: none."""
    fetch_timeout: float = 10.0
    """Seconds for one remote image."""
    max_fetch_bytes: int = 32 * 2**20
    """Bytes of one remote or local image file."""


def _image_bytes(url: Any, where: str, limits: MediaLimits) -> tuple[bytes, str]:
    """The encoded image a ``data:`` URL holds, or, where ``limits`` allow, a remote or local file's bytes;
    with the source's name for errors."""
    if not isinstance(url, str):
        raise UserInputError(f"{where}: image_url.url must be a string, got {type(url).__name__}")
    if url.startswith("data:"):
        return _data_url_bytes(url, where), "the data: URL"
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise UserInputError(f"{where}: remote image URLs are not fetched ({url[:60]!r}); send the image as a "
                                 "base64 data: URL ('data:image/png;base64,...'), or start the server with "
                                 "--allow-remote-media")
        return _fetch(url, where, limits), repr(url[:100])
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path (C: is a drive letter, not a scheme)
        if limits.local_root is None:
            raise UserInputError(f"{where}: local image files are not read ({url[:60]!r}); send the image as a "
                                 "base64 data: URL, or start the server with --allow-local-media DIR")
        return _local_file(url, where, limits.local_root, limits.max_fetch_bytes), repr(url[:200])
    raise UserInputError(f"{where}: unsupported image URL scheme {scheme!r} (supported: data:, and where the "
                         "server allows them http(s): and file:)")


def _data_url_bytes(url: str, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise UserInputError(f"{where}: a data: URL must be base64-encoded ('data:image/png;base64,...'), "
                             f"got header {header[:60]!r}")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise UserInputError(f"{where}: bad base64 in the data: URL ({e})") from e


class _HTTPRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to ``http(s)`` only (urllib would follow one to ``ftp:`` too)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to {newurl[:100]!r}, not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def is_public(address: str) -> bool:
    """Whether an IP address is on the public internet (not private, loopback, link-local, shared or reserved;
    an IPv4 address written as IPv6 counts as itself)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global


def _connect_public(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                    source_address: Any = None) -> socket.socket:
    """``socket.create_connection`` that resolves the host once, refuses it if any of its addresses is not public,
    and connects to the address it checked (so a second lookup cannot swap in another)."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        if not is_public(sockaddr[0]):
            raise OSError(f"{host} is at {sockaddr[0]}, not a public address; the server fetches only from public "
                          "ones (start it with --allow-private-media-hosts to fetch from this network)")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


class _PublicHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        self._create_connection = _connect_public
        super().connect()


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def connect(self):  # TLS is then set up as usual, checked against the host's name
        self._create_connection = _connect_public
        super().connect()


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)


_OPENER = urllib.request.build_opener(_HTTPRedirectsOnly)
_PUBLIC_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HTTPRedirectsOnly, _PublicHTTPHandler,
                                             _PublicHTTPSHandler)


def _fetch(url: str, where: str, limits: MediaLimits) -> bytes:
    """A remote image, refused past ``max_fetch_bytes`` or ``fetch_timeout`` (read one byte more to tell), and
    unless ``allow_private_hosts``, from anywhere but a public address (redirects included)."""
    opener = _OPENER if limits.allow_private_hosts else _PUBLIC_OPENER
    try:
        with opener.open(url, timeout=limits.fetch_timeout) as response:
            data = response.read(limits.max_fetch_bytes + 1)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError, ValueError) as e:
        raise UserInputError(f"{where}: could not fetch {url[:100]!r}: {getattr(e, 'reason', e)}") from e
    if len(data) > limits.max_fetch_bytes:
        raise UserInputError(f"{where}: {url[:100]!r} is larger than the server's limit of "
                             f"{limits.max_fetch_bytes} bytes per remote image")
    return data


def _local_file(url: str, where: str, root: Path, max_bytes: int) -> bytes:
    """A file inside ``root`` (symlinks resolved first, so a link cannot lead out of it); relative paths are
    relative to ``root``."""
    path = Path(unquote(urlparse(url).path)) if url.lower().startswith("file:") else Path(url)
    root = root.resolve()
    try:
        resolved = (root / path).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise UserInputError(f"{where}: image file not found: {url[:200]!r}") from e
    if not resolved.is_relative_to(root):
        raise UserInputError(f"{where}: {url[:200]!r} is outside the folder the server reads images from "
                             f"(--allow-local-media {root})")
    if not resolved.is_file():
        raise UserInputError(f"{where}: {url[:200]!r} is not a file")
    if resolved.stat().st_size > max_bytes:
        raise UserInputError(f"{where}: {url[:200]!r} is larger than the server's limit of {max_bytes} bytes per "
                             "image file")
    return resolved.read_bytes()


def _decode(data: bytes, source: str, where: str, max_pixels: int | None) -> Image.Image:
    """Encoded bytes as an RGB image, its size checked against ``max_pixels`` from the header first."""
    try:
        with _HEADER_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserInputError(f"{where}: the image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise UserInputError(f"{where}: {source} does not hold a readable image (not a format PIL reads)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UserInputError(f"{where}: {source} does not hold a readable image ({e})") from e
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise UserInputError(f"{where}: the image is {width}x{height} = {width * height} pixels, over the server's "
                             f"limit of {max_pixels} pixels per image; send a smaller image")
    try:
        image.load()  # all of it now: a lazily loading image must not be read by several tiling threads at once
        return to_pil(image)
    except (OSError, SyntaxError, ValueError) as e:  # a header that reads but data that does not (truncated)
        raise UserInputError(f"{where}: {source} does not hold a readable image ({e})") from e


def _tiles(image_url: Any, where: str, cap: int | None) -> int | None:
    """LMDeploy's per-image ``max_dynamic_patch``, checked."""
    value = image_url.get("max_dynamic_patch") if isinstance(image_url, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserInputError(f"{where}: image_url.max_dynamic_patch must be an integer >= 1, got {value!r}")
    return _capped(value, f"{where}: image_url.max_dynamic_patch", cap)


def _capped(tiles: int | None, name: str, cap: int | None) -> int | None:
    if tiles is not None and cap is not None and tiles > cap:
        raise UserInputError(f"{name} {tiles} is over this server's limit of {cap} tiles per image")
    return tiles


def _part(part: Any, where: str, images_allowed: bool, limits: MediaLimits) -> tuple[str, Any]:
    """One content part as ``("text", str)`` or ``("image", (PIL image, its tile limit or None))``."""
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
        image = _decode(*_image_bytes(url, where, limits), where, limits.max_pixels)
        return "image", (image, _tiles(image_url, where, limits.max_tiles))
    raise UserInputError(f"{where}: unsupported content part type {kind!r} (supported: 'text', 'image_url')")


def _join(pieces: list[tuple[str, Any]], images: list) -> str:
    """Text and ``<image>`` tags in part order (rules in docs/serve.md); images go to ``images``."""
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


def _arrange(pieces: list[tuple[str, Any]], where: str, images: list) -> str:
    """A message's parts as one text: tags written by the client, the multi-image prefix, or part order."""
    pieces = [(kind, value.replace(LMDEPLOY_IMAGE_TOKEN, IMAGE_PLACEHOLDER) if kind == "text" else value)
              for kind, value in pieces]
    texts = [(kind, value) for kind, value in pieces if kind == "text" and value]
    own = [value for kind, value in pieces if kind == "image"]
    tags = sum(text.count(IMAGE_PLACEHOLDER) for _, text in texts)
    if tags:
        if tags != len(own):
            raise UserInputError(f"{where}: the text contains a literal {IMAGE_PLACEHOLDER!r} {tags} time(s) but the "
                                 f"message has {len(own)} image part(s); write one {IMAGE_PLACEHOLDER!r} per image "
                                 "(the images fill them in order), or none and let the parts' order place them")
        images.extend(own)
        return _join(texts, [])
    first_text = next((k for k, (kind, value) in enumerate(pieces) if kind == "text" and value), len(pieces))
    if len(own) > 1 and all(kind == "text" for kind, _ in pieces[first_text:]):
        images.extend(own)
        return images_first(_join(texts, []), len(own))
    return _join(pieces, images)


def _content(message: dict, where: str, images: list, images_allowed: bool, limits: MediaLimits) -> str:
    """A message's content (a string or a list of parts) as text with ``<image>`` tags."""
    content = message.get("content")
    if isinstance(content, str):
        pieces = [("text", content)]
    elif isinstance(content, list):
        pieces = [_part(part, f"{where}, part {k}", images_allowed, limits) for k, part in enumerate(content)]
    else:
        raise UserInputError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    for kind, text in pieces:
        if kind == "text" and not _is_unicode(text):
            raise UserInputError(f"{where}: the text holds a lone UTF-16 surrogate (an escape like \\ud800 without "
                                 "its pair); send valid Unicode")
    return _arrange(pieces, where, images)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to strings that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _turns(messages: list, images: list, limits: MediaLimits) -> tuple[str | None, list[tuple[str, str]]]:
    """The system message and the role-merged ``(role, text)`` turns, checked for order."""
    system, turns = None, []
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise UserInputError(f"{where}: a message must be an object, got {type(message).__name__}")
        role = message.get("role")
        if role in SYSTEM_ROLES:
            if index != 0:
                raise UserInputError(f"{where}: a {role} message is only accepted first")
            system = _content(message, where, images, False, limits)
            continue
        if role not in ("user", "assistant"):
            raise UserInputError(f"{where}: unsupported role {role!r} (supported: system, developer, user, assistant)")
        text = _content(message, where, images, role == "user", limits)
        if not turns and role == "assistant":
            raise UserInputError(f"{where}: the conversation must start with a user message")
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise UserInputError(f"message {len(messages) - 1}: the last message must be a user message")
    return system, turns


def _count_images(messages: list, limit: int | None) -> None:
    """Refuse too many images before any is decoded."""
    count = sum(1 for message in messages if isinstance(message, dict) and isinstance(message.get("content"), list)
                for part in message["content"] if isinstance(part, dict) and part.get("type") == "image_url")
    if limit is not None and count > limit:
        raise UserInputError(f"the request has {count} images; this server accepts at most {limit} per request")


def _number(body: dict, key: str, integer: bool, minimum: float) -> Any:
    """An optional numeric field, checked (``True``/``False`` are not numbers here)."""
    value = body.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        raise UserInputError(f"{key} must be {'an integer' if integer else 'a number'} >= {minimum}, got {value!r}")
    return value


def _request_tiles(body: dict, cap: int | None) -> int | None:
    """The request's tile limit: ``max_num``, else vLLM's ``mm_processor_kwargs.max_dynamic_patch``."""
    value = _capped(_number(body, "max_num", True, 1), "max_num", cap)
    kwargs = body.get("mm_processor_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise UserInputError(f"mm_processor_kwargs must be an object, got {type(kwargs).__name__}")
    vllm = _capped(_number(kwargs or {}, "max_dynamic_patch", True, 1), "mm_processor_kwargs.max_dynamic_patch", cap)
    return value if value is not None else vllm


def _max_tokens(body: dict, cap: int | None) -> int | None:
    """The new tokens asked for: ``max_completion_tokens`` (OpenAI's current name), else ``max_tokens``; over the
    server's ``cap`` is an error (the one place the cap is checked)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _number(body, name, True, 1)
        if value is not None:
            if cap is not None and value > cap:
                raise UserInputError(f"{name} {value} is over this server's cap of {cap} tokens")
            return value
    return None


def _generation(body: dict, defaults: GenerationParams, cap: int | None = None) -> GenerationParams:
    """The body's decoding fields over ``defaults``: ``max_completion_tokens`` wins over ``max_tokens`` (at most
    ``cap``); ``min_tokens`` (vLLM's) and ``min_new_tokens`` (LMDeploy's) are one setting, sent alone or equal;
    vLLM's ``skip_special_tokens`` false keeps the grounding tags."""
    max_tokens = _max_tokens(body, cap)
    sent = {name: value for name in ("min_tokens", "min_new_tokens") if (value := _number(body, name, True, 0))
            is not None}
    if len(set(sent.values())) > 1:
        raise UserInputError(f"min_tokens {sent['min_tokens']} and min_new_tokens {sent['min_new_tokens']} "
                             "disagree; send one of them (min_new_tokens is another name for min_tokens)")
    minimum, limit = next(iter(sent.values()), None), max_tokens or defaults.max_new_tokens
    if minimum is not None and minimum > limit:
        raise UserInputError(f"{next(iter(sent))} {minimum} is over max_tokens {limit}: the answer could not be "
                             "that long")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise UserInputError(f"stop must be a string or a list of strings, got {stop!r:.80}")
    if stop is not None and not all(stop):
        raise UserInputError(f"stop strings must not be empty, got {stop}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserInputError(f"seed must be an integer, got {seed!r:.80}")
    skip = body.get("skip_special_tokens")
    if skip is not None and not isinstance(skip, bool):
        raise UserInputError(f"skip_special_tokens must be true or false, got {skip!r:.80}")
    fields = {"max_new_tokens": max_tokens, "min_new_tokens": minimum,
              "temperature": _number(body, "temperature", False, 0), "top_p": _number(body, "top_p", False, 0),
              "stop": None if stop is None else tuple(stop), "seed": seed,
              "keep_grounding_tokens": None if skip is None else not skip}
    try:
        return replace(defaults, **{k: v for k, v in fields.items() if v is not None})
    except ValueError as e:
        raise UserInputError(str(e)) from e


def parse_chat_request(body: dict, limits: MediaLimits | None = None,
                       defaults: GenerationParams | None = None) -> tuple[Request, GenerationParams]:
    """Read a chat-completions request body (the parsed JSON) into a :class:`~vlaser.inference.Request` and its
    :class:`~vlaser.inference.GenerationParams` (``defaults`` for the fields not sent).

    Each picture's tile limit is its own (LMDeploy's ``image_url.max_dynamic_patch``), else the request's
    (``max_num``, else vLLM's ``mm_processor_kwargs.max_dynamic_patch``), else None: the server's setting. A
    request with images holds one ``<image>`` tag per image (``tagged``); fields the server alone reads
    (``response_format``, ``n``, ``stream``) are left to it.
    """
    limits = limits or MediaLimits()
    if not isinstance(body, dict):
        raise UserInputError(f"a chat request is a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserInputError("a chat request needs a non-empty 'messages' list")
    _count_images(messages, limits.max_images)
    images: list[tuple[Image.Image, int | None]] = []
    system, turns = _turns(messages, images, limits)
    history = [Turn(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    params = _generation(body, defaults or GenerationParams(), limits.max_tokens)
    request_tiles = _request_tiles(body, limits.max_tiles)
    pictures = [Picture(image, request_tiles if own is None else own) for image, own in images]
    return Request(turns[-1][1], pictures, history, system, tagged=bool(pictures)), params

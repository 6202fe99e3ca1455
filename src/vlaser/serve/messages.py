"""OpenAI chat-completions requests read into the inference vocabulary (the server-side inverse of ``to_payload``).

A body becomes a :class:`~vlaser.inference.Request` (system message, earlier turns, the question, every image as a
:class:`~vlaser.inference.Picture` with its own tile limit, in tag order) and its
:class:`~vlaser.inference.GenerationParams`, from the request the schema (:mod:`vlaser.serve.schema`) validated;
here only the server's limits are checked. How content parts become text with ``<image>`` tags, where images may
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
from vlaser.inference.prepare import tag_parts
from vlaser.inference.types import GenerationParams, Picture, Request, Turn
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import to_pil
from vlaser.serve.schema import SYSTEM_ROLES, ChatCompletionRequest, ImagePart, Message, read_request

LMDEPLOY_IMAGE_TOKEN = "<IMAGE_TOKEN>"  #: LMDeploy's image placeholder (``lmdeploy.vl.constants``), read as ``<image>``
_HEADER_LOCK = threading.Lock()  # the warnings filter PIL's bomb check goes through is process-wide


@dataclass(frozen=True)
class MediaLimits:
    """What a request may ask for and carry: its new tokens and tiles at most (more is refused), its images and
    where they may come from (the defaults: no caps, data URLs, PIL's limits)."""

    max_images: int | None = None
    """Images per request (all messages together)."""
    max_new_tokens: int | None = None
    """The most new tokens a request may ask for: more is refused, never silently cut."""
    max_tiles: int | None = None
    """The largest tile limit a request may ask for (a request's or an image's own): each tile costs the model
    ``num_image_token`` tokens."""
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


#: What ``vlaser serve`` accepts without flags: its caps (``create_app``'s default limits).
SERVER_LIMITS = MediaLimits(max_images=16, max_new_tokens=4096, max_tiles=40, max_pixels=40_000_000)


def _image_bytes(url: str, where: str, limits: MediaLimits) -> tuple[bytes, str]:
    """The encoded image a ``data:`` URL holds, or, where ``limits`` allow, a remote or local file's bytes;
    with the source's name for errors (the URL's form was checked by the schema)."""
    if url.startswith("data:"):
        return _data_url_bytes(url, where), "the data: URL"
    if urlparse(url).scheme.lower() in ("http", "https"):
        if not limits.allow_remote:
            raise UserInputError(f"{where}: remote image URLs are not fetched ({url[:60]!r}); send the image as a "
                                 "base64 data: URL ('data:image/png;base64,...'), or start the server with "
                                 "--allow-remote-media")
        return _fetch(url, where, limits), repr(url[:100])
    if limits.local_root is None:  # a plain path or a file: URL
        raise UserInputError(f"{where}: local image files are not read ({url[:60]!r}); send the image as a "
                             "base64 data: URL, or start the server with --allow-local-media DIR")
    return _local_file(url, where, limits.local_root, limits.max_fetch_bytes), repr(url[:200])


def _data_url_bytes(url: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(url.partition(",")[2].split()), validate=True)
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


def _image(part: ImagePart, where: str, limits: MediaLimits) -> tuple[Image.Image, int | None]:
    """An image part's picture and its own tile limit (at most the server's)."""
    image = _decode(*_image_bytes(part.url(), where, limits), where, limits.max_pixels)
    return image, part.max_tiles(where, limits.max_tiles)


def _content(message: Message, where: str, images: list, limits: MediaLimits) -> str:
    """A message's content as text with ``<image>`` tags, which the prepare step places
    (:func:`~vlaser.inference.prepare.tag_parts`); its images join ``images`` in part order."""
    parts = [message.content] if isinstance(message.content, str) else message.content
    pieces, own = [], []
    for k, part in enumerate(parts):
        if isinstance(part, ImagePart):
            own.append(_image(part, f"{where}, part {k}", limits))
            pieces.append(None)
        else:
            text = part if isinstance(part, str) else part.text
            pieces.append(text.replace(LMDEPLOY_IMAGE_TOKEN, IMAGE_PLACEHOLDER))
    try:
        text = tag_parts(pieces)
    except ValueError as e:
        raise UserInputError(f"{where}: {e}") from e
    images.extend(own)
    return text


def _turns(messages: list[Message], images: list, limits: MediaLimits) -> tuple[str | None, list[tuple[str, str]]]:
    """The system message and the role-merged ``(role, text)`` turns (their order checked by the schema)."""
    system, turns = None, []
    for index, message in enumerate(messages):
        text = _content(message, f"message {index}", images, limits)
        if message.role in SYSTEM_ROLES:
            system = text
        elif turns and turns[-1][0] == message.role:
            turns[-1] = (message.role, turns[-1][1] + "\n" + text)
        else:
            turns.append((message.role, text))
    return system, turns


def _generation(body: ChatCompletionRequest, defaults: GenerationParams, cap: int | None = None) -> GenerationParams:
    """The body's decoding fields over ``defaults``: the new tokens it asks for (at most ``cap``); ``min_tokens``
    (vLLM's) and ``min_new_tokens`` (LMDeploy's) are one setting (the schema checked that they agree), at most the
    answer's length; vLLM's ``skip_special_tokens`` false keeps the grounding tags."""
    asked = body.max_new_tokens(cap)
    name = "min_tokens" if body.min_tokens is not None else "min_new_tokens"
    minimum, limit = getattr(body, name), asked or defaults.max_new_tokens
    if minimum is not None and minimum > limit:
        raise UserInputError(f"{name} {minimum} is over max_tokens {limit}: the answer could not be that long")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    skip = body.skip_special_tokens
    fields = {"max_new_tokens": asked, "min_new_tokens": minimum, "temperature": body.temperature,
              "top_p": body.top_p, "stop": None if stop is None else tuple(stop), "seed": body.seed,
              "keep_grounding_tokens": None if skip is None else not skip}
    try:
        return replace(defaults, **{k: v for k, v in fields.items() if v is not None})
    except ValueError as e:
        raise UserInputError(str(e)) from e


def parse_chat_request(body: ChatCompletionRequest | dict, limits: MediaLimits | None = None,
                       defaults: GenerationParams | None = None) -> tuple[Request, GenerationParams]:
    """A chat-completions request into a :class:`~vlaser.inference.Request` and its
    :class:`~vlaser.inference.GenerationParams` (``defaults`` for the fields not sent).

    ``body`` is the validated schema (the server's one parse), or the parsed JSON, validated here by that schema;
    this step checks only the server's ``limits``. Each picture's tile limit is its own (an image part's), else the
    request's (:meth:`~vlaser.serve.schema.ChatCompletionRequest.max_tiles`), else None: the server's setting. A
    request with images holds one ``<image>`` tag per image (``tagged``); fields the server alone reads
    (``response_format``, ``n``, ``stream``) are left to it.
    """
    limits = limits or MediaLimits()
    body = body if isinstance(body, ChatCompletionRequest) else read_request(body)
    if limits.max_images is not None and body.images() > limits.max_images:  # before any image is decoded
        raise UserInputError(f"the request has {body.images()} images; this server accepts at most "
                             f"{limits.max_images} per request")
    images: list[tuple[Image.Image, int | None]] = []
    system, turns = _turns(body.messages, images, limits)
    history = [Turn(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    params = _generation(body, defaults or GenerationParams(), limits.max_new_tokens)
    request_tiles = body.max_tiles(limits.max_tiles)
    pictures = [Picture(image, request_tiles if own is None else own) for image, own in images]
    return Request(turns[-1][1], pictures, history, system, tagged=bool(pictures)), params

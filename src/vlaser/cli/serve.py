"""``vlaser serve``: a model behind an OpenAI-compatible API (batched generation) and a web page at ``/``."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
from pathlib import Path

from vlaser.cli.args import add_decode_options, at_least, decode_options

log = logging.getLogger(__name__)

API_KEY_ENV = "VLASER_API_KEY"  #: where the key comes from when --api-key is not given
#: the startup log names these settings as their flags do
LOGGED_AS = {"max_tiles": "max_num", "tile_cap": "max_num_cap", "max_new_tokens": "max_tokens",
             "token_cap": "max_tokens_cap"}


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible API, with a web page at /")
    p.add_argument("--model", required=True, help="checkpoint directory (either layout)")
    p.add_argument("--served-model-name", help="the model id the API lists and answers with (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at_least(0), default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on every API route (default: ${API_KEY_ENV})")
    p.add_argument("--max-batch-size", type=at_least(1), default=8, help="requests per generate call (default 8)")
    p.add_argument("--max-wait-ms", type=at_least(0), default=10,
                   help="how long a request waits for others to share its batch (default 10)")
    p.add_argument("--max-queue", type=at_least(1), default=64,
                   help="requests waiting or running at most; more are answered 429 (default 64)")
    # flags keep InternVL's and OpenAI's names; inside, the settings are max_tiles and max_new_tokens
    p.add_argument("--max-num", dest="max_tiles", type=at_least(1), default=None,
                   help="tiles per image when a request does not say (default: the checkpoint's max_dynamic_patch)")
    p.add_argument("--max-num-cap", dest="tile_cap", type=at_least(1), default=40,
                   help="the most tiles per image a request may ask for (default 40)")
    p.add_argument("--max-tokens", dest="max_new_tokens", type=at_least(1), default=1024,
                   help="new tokens when a request does not say (default 1024)")
    p.add_argument("--max-tokens-cap", dest="token_cap", type=at_least(1), default=4096,
                   help="a request asking for more new tokens is refused (default 4096)")
    p.add_argument("--max-images", type=at_least(1), default=16, help="images per request at most (default 16)")
    p.add_argument("--max-pixels", type=at_least(1), default=40_000_000,
                   help="width x height of one image at most, checked before decoding (default 40000000)")
    p.add_argument("--max-body-mb", type=at_least(1), default=64, help="request body size at most (default 64 MiB)")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="fetch http(s) image URLs from public addresses (off: refused)")
    p.add_argument("--allow-private-media-hosts", action="store_true",
                   help="with --allow-remote-media: also from private, loopback and link-local addresses, through "
                        "the environment's proxies (off: refused, so requests cannot reach the server's network)")
    p.add_argument("--allow-local-media", metavar="DIR",
                   help="read image paths and file:// URLs inside DIR (off: refused)")
    p.add_argument("--keep-grounding-tokens", action="store_true",
                   help="keep <ref>/<box>/<quad> tags in answers (for box drawing); off: answers are decoded as "
                        "model.chat, vlaser eval, vLLM and LMDeploy decode them")
    p.add_argument("--dtype", default="auto", help="auto (checkpoint dtype), bfloat16, float16 or float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    add_decode_options(p)


def run(args) -> int:
    from vlaser.errors import UserInputError, require

    uvicorn = require("uvicorn", "serve", "vlaser serve")
    require("fastapi", "serve", "vlaser serve")
    require("fastapi_offline", "serve", "vlaser serve", package="fastapi-offline")
    if args.allow_local_media and not os.path.isdir(args.allow_local_media):
        raise UserInputError(f"--allow-local-media {args.allow_local_media}: not a folder")
    if args.max_new_tokens > args.token_cap:
        raise UserInputError(f"--max-tokens {args.max_new_tokens} is over --max-tokens-cap {args.token_cap}")
    decode = decode_options(args)
    listener = bind(args.host, args.port)  # a port in use is said now, not after minutes of loading the model
    from vlaser.api import VLM
    from vlaser.inference.types import GenerationParams
    from vlaser.serve.app import create_app
    from vlaser.serve.scheduler import Scheduler

    try:
        vlm = VLM.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    except BaseException:
        listener.close()
        raise
    scheduler = Scheduler(vlm, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                          max_queue=args.max_queue, max_tiles=args.max_tiles, **decode)
    app = create_app(scheduler, args.served_model_name or args.model, api_key=args.api_key or None,
                     limits=limits(args), defaults=GenerationParams(args.max_new_tokens,
                                                                    keep_grounding_tokens=args.keep_grounding_tokens),
                     max_body_bytes=args.max_body_mb * 2**20)
    _log_settings(args, vlm)
    if not args.api_key and not _is_loopback(args.host):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", args.host)
    # uvicorn finishes the requests in flight on SIGTERM (the lifespan then drains the scheduler) and re-raises the
    # signal afterwards; this handler turns that into an ordinary exit 0 instead of a kill by the default one.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    host, port = listener.getsockname()[:2]
    log.info("serving on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=None))
    server.run(sockets=[listener])  # the socket bound above: nothing else can take the port meanwhile
    return 0


def limits(args):
    """What a request may ask for and carry, from the flags (a :class:`~vlaser.serve.messages.MediaLimits`); a
    request may ask for the server's own tile limit (``--max-num``) even over ``--max-num-cap``."""
    from vlaser.serve.messages import MediaLimits

    return MediaLimits(max_images=args.max_images, max_new_tokens=args.token_cap,
                       max_tiles=max(args.tile_cap, args.max_tiles or 0),
                       max_pixels=args.max_pixels, allow_remote=args.allow_remote_media,
                       allow_private_hosts=args.allow_private_media_hosts,
                       local_root=Path(args.allow_local_media) if args.allow_local_media else None)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds one: ``SO_REUSEADDR``, IPv6 for an address with a
    colon), handed to uvicorn later; a port in use or an unknown host is vlaser's one-line error."""
    from vlaser.errors import UserInputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserInputError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                             "choose another --port (0: any free one)") from e
    return sock


def _log_settings(args, vlm) -> None:
    """The resolved settings, once at startup (the key only as set or not)."""
    skip = {"verb", "verbose", "debug", "api_key"}
    settings = {LOGGED_AS.get(key, key): value for key, value in vars(args).items() if key not in skip}
    settings.update(api_key=bool(args.api_key), max_num=args.max_tiles or vlm.max_tiles, dtype=str(vlm.model.dtype),
                    device=str(vlm.model.device))
    log.setLevel(logging.INFO)  # shown without -v: what the server runs with belongs in its log
    log.info("vlaser serve settings: %s", json.dumps(settings))


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

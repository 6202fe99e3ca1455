"""Argument types shared by the verbs."""

from __future__ import annotations

import argparse
import json


def at_least(least: int):
    """An argparse type: an integer of at least ``least`` (a clear usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def add_decode_options(p) -> None:
    """The engine's fixed-shape decode (``vlaser serve``, ``eval run``, ``eval suite``); off by default until it
    is measured faster on a GPU."""
    p.add_argument("--static-capacity", type=at_least(1), default=None, metavar="POSITIONS",
                   help="a static KV cache of POSITIONS per row (prompt plus new tokens), allocated once, and "
                        "fixed-shape decode steps; a longer request is refused (default: a cache that grows)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each decode step as a captured CUDA graph (needs --static-capacity; CUDA only)")


def decode_options(args) -> dict:
    """The engine's keywords from :func:`add_decode_options`' flags."""
    from vlaser.errors import UserInputError

    if args.cuda_graphs and args.static_capacity is None:
        raise UserInputError("--cuda-graphs needs --static-capacity: a graph replays fixed shapes only")
    return {"static_capacity": args.static_capacity, "cuda_graphs": args.cuda_graphs}


def json_object(text: str) -> dict:
    """An argparse ``type`` for a flag that takes a JSON object (``--config '{"proprio_dim": 8}'``)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


class FullHelp(argparse.Action):
    """``-h/--help`` of a command whose flags pass through argparse unparsed (``train``, ``vla train``): prints
    the readable parser that ``build(prog)`` returns, so the help lists every flag the real parser takes."""

    def __init__(self, option_strings, build, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.build = build

    def __call__(self, parser, namespace, values, option_string=None):
        self.build(parser.prog).print_help()
        parser.exit()

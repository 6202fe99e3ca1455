"""The ``vlaser`` command: a thin argparse layer over the Python API (one module per verb)."""

from __future__ import annotations

import argparse
import logging
import sys

from vlaser.cli import chat, convert, data, eval, info, quickstart, train

_VERBS = {"chat": chat, "convert": convert, "info": info, "train": train, "data": data, "eval": eval,
          "quickstart": quickstart}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlaser", description="Run, convert, inspect and fine-tune InternVL3/Vlaser models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="verb", required=True)
    for module in _VERBS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "passthrough"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "passthrough"):  # train / data preview take InternVL's flags as they are
        args.passthrough = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _VERBS[args.verb].run(args) or 0
    except (ValueError, OSError, ImportError) as e:  # user errors: one clear line, no traceback
        print(f"vlaser {args.verb}: error: {e}", file=sys.stderr)
        return 2

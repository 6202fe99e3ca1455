"""The ``vlaser`` command: a thin argparse layer over the Python API (one module per verb).

Error policy: a user's mistake is one line (``vlaser VERB [SUBVERB]: error: ...``, exit 2); that is a ``VlaserError``
(a bad path, file, flag, option or data line, a missing extra, a server that refuses), an argparse usage error,
or an ``OSError`` about a path the user gave (a named file that does not exist, or no permission/space in a
folder they chose). Anything else is a bug in vlaser and shows its traceback (exit 1). ``--debug`` shows the
traceback always.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

import vlaser
from vlaser.cli import chat, convert, data, eval, info, quickstart, serve, train, vla
from vlaser.errors import VlaserError

_VERBS = {"chat": chat, "convert": convert, "info": info, "train": train, "data": data, "eval": eval,
          "quickstart": quickstart, "serve": serve, "vla": vla}


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line naming the (sub)command and the option, with where to
    find the usage, instead of the whole usage block; its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """``--version``: the installed package's version, read only when asked (reading package metadata takes a
    tenth of a second that every other command would pay)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"vlaser {vlaser.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vlaser", description="Run, convert, inspect and fine-tune InternVL3/Vlaser models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    parser.add_argument("--version", action=_Version, help="print vlaser's version (its installed package's) and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, user errors too")
    sub = parser.add_subparsers(dest="verb", required=True)
    for module in _VERBS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    sub_verb = getattr(args, "eval_verb", None) or getattr(args, "vla_verb", None)
    command = " ".join(["vlaser", args.verb] + ([sub_verb] if sub_verb else []))
    if extra and not hasattr(args, "passthrough"):
        Parser(prog=command).error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "passthrough"):  # train / data preview take InternVL's flags as they are
        args.passthrough = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _VERBS[args.verb].run(args) or 0
    except Exception as e:
        user_error = _is_user_error(e, _user_paths(args))
        if args.debug or not user_error:
            traceback.print_exc()
        if user_error:
            print(f"{command}: error: {e}", file=sys.stderr)
            return 2
        print(f"{command}: internal error (a bug in vlaser; please report it with the traceback above)",
              file=sys.stderr)
        return 1


def _user_paths(args: argparse.Namespace) -> list[str]:
    """Every argument value that could be a path the user gave (absolute, normalised)."""
    values = []
    for value in vars(args).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item):
                values.append(os.path.abspath(item))
    return values


def _is_user_error(error: BaseException, user_paths: list[str]) -> bool:
    """A ``VlaserError``, a named file the user gave that does not exist, or another ``OSError`` on a path at or
    under one they gave (permissions, a full disk in their output folder). A missing file vlaser itself derived
    from their paths is a bug (it should have checked), so it shows a traceback."""
    if isinstance(error, VlaserError):
        return True
    if not isinstance(error, OSError) or not isinstance(error.filename, (str, bytes, os.PathLike)):
        return False
    path = os.path.abspath(os.fsdecode(error.filename))
    if isinstance(error, FileNotFoundError):
        return path in user_paths
    return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in user_paths)

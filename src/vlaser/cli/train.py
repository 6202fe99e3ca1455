"""``vlaser train``: InternVL's fine-tune flags (or one YAML/JSON file) -> the SFT recipe."""

from __future__ import annotations

import argparse

from vlaser.errors import UserInputError


class _FullHelp(argparse.Action):
    """``-h/--help``: every flag the training parser accepts, with its help (the flags pass through argparse
    here unparsed, so argparse alone would list none of them)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from vlaser.train.args import build_parser

        build_parser(prog=parser.prog).print_help()
        parser.exit()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="second-stage SFT with InternVL's fine-tune flags (or one YAML/JSON config file)",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_FullHelp, help="list every flag with its help")
    p.set_defaults(passthrough=[])


def run(args) -> int:
    from vlaser.train.sft import train

    if not args.passthrough:
        raise UserInputError("no flags given; see 'vlaser train --help'")
    out = train(args.passthrough)
    print(f"saved to {out}")
    return 0

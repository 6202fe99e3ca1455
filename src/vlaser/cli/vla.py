"""``vlaser vla``: the VLA half: validate LeRobot data, train a policy, serve it, run the offline quickstart."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from pathlib import Path

from vlaser.cli import vla_convert
from vlaser.cli.args import at_least
from vlaser.cli.serve import API_KEY_ENV

EXAMPLES = """examples:
  vlaser vla data ./bridge_lerobot --json
  vlaser vla train vla.yaml --max_steps 1000
  vlaser vla train --vlm OpenGVLab/Vlaser-2B --dataset ./bridge_lerobot --output_dir runs/vla --preset vlaser_2b_bridge
  vlaser vla convert step45390.pt --vlm OpenGVLab/InternVL3-2B --preset vlaser_2b_bridge --out runs/released
  vlaser vla serve runs/vla --port 8100
  vlaser vla quickstart --out vla-quickstart"""


def add_parser(sub) -> None:
    p = sub.add_parser("vla", help="vision-language-action policies: data, train, serve, quickstart",
                       description="The Vlaser-VLA half: a flow-matching action expert on a Vlaser/InternVL3 "
                                   "backbone, trained on LeRobot v3.0 data.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="vla_verb", required=True)

    d = verbs.add_parser("data", help="validate a LeRobot v3.0 dataset and print its summary")
    d.add_argument("path", type=Path, help="the dataset's root folder (with meta/info.json)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")

    t = verbs.add_parser("train", help="train a VLA policy (transformers' Trainer; DeepSpeed/FSDP as for SFT)",
                         add_help=False)
    t.add_argument("-h", "--help", action=_FullHelp, help="list every flag with its help")
    t.set_defaults(passthrough=[])

    vla_convert.add_parser(verbs)

    s = verbs.add_parser("serve", help="serve a trained policy over HTTP (POST /act, GET /info, GET /health)",
                         description="The policy on 'vlaser serve''s stack: the same API key, body-size limit and "
                                     "error body.")
    s.add_argument("policy", type=Path, help="a folder written by 'vlaser vla train'")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the policy's dtype (default float32, as the release evaluates)")
    s.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /act and /info (default: ${API_KEY_ENV})")
    s.add_argument("--max-body-mb", type=at_least(1), default=64, help="request body size at most (default 64 MiB)")

    q = verbs.add_parser("quickstart", help="the whole VLA loop offline on a CPU: demos, training, closed-loop eval",
                         description="Writes scripted demonstrations of a numpy reach task as a LeRobot v3.0 "
                                     "dataset, trains a tiny VLA on a tiny InternVL3 backbone for a step budget, "
                                     "evaluates it closed-loop on held-out episodes beside untrained, blind and "
                                     "scripted policies, and writes report.json, report.md and pictures.")
    q.add_argument("--out", type=Path, default=Path("vla-quickstart"),
                   help="output folder, new or empty (default: vla-quickstart)")
    q.add_argument("--max-steps", type=at_least(1), default=None,
                   help="training steps (default: 2,500, the tested budget; fewer gives a warning in the report)")
    q.add_argument("--minutes", type=float, default=None,
                   help="also stop training once this many minutes of it are spent (default: no time limit)")
    q.add_argument("--episodes", type=at_least(1), default=4000,
                   help="scripted demonstrations to train on (default: 4,000, the tested number)")
    q.add_argument("--eval-episodes", type=at_least(1), default=100,
                   help="held-out episodes each policy is evaluated on (default: 100)")
    q.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the evaluation (default: 0)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, each flag's default after its help."""


class _FullHelp(argparse.Action):
    """``-h/--help``: every flag of the training parser with its help (the flags pass through argparse here
    unparsed, as for ``vlaser train``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        help_parser(parser.prog).print_help()
        parser.exit()


def help_parser(prog: str) -> argparse.ArgumentParser:
    """The training parser's flags arranged for reading: the VLA's own first (required ones marked), then
    transformers' ``TrainingArguments`` (those whose default the VLA changes marked)."""
    from transformers import TrainingArguments

    from vlaser.vla.train_args import VLATrainArguments, build_parser

    full = build_parser(prog)
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    changed = {f.name for f in dataclasses.fields(VLATrainArguments)
               if f.name in base and f.default != base[f.name].default}
    shown = argparse.ArgumentParser(prog=prog, usage=full.usage, description=f"{full.description}\n\n{EXAMPLES}",
                                    formatter_class=_Formatter, add_help=False)
    own = shown.add_argument_group("VLA")
    training = shown.add_argument_group("training (transformers' TrainingArguments; * the VLA's default)")
    for action in full._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.required or action.dest in changed:
            action = copy.copy(action)
            action.help = f"{'(required) ' if action.required else '* '}{action.help or ''}"
            action.default = argparse.SUPPRESS if action.required else action.default
        (training if action.dest in base and action.dest != "output_dir" else own)._add_action(action)
    return shown


def run(args) -> int:
    if args.vla_verb == "data":
        from vlaser.vla.data.inspect import inspect_dataset

        summary = inspect_dataset(args.path)
        print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.render())
    elif args.vla_verb == "train":
        from vlaser.vla.train_args import parse_args

        train_args = parse_args(args.passthrough)
        from vlaser.vla.train import train_vla

        out = train_vla(train_args)
        print(f"saved the VLA policy to {out}")
    elif args.vla_verb == "convert":
        return vla_convert.run(args)
    elif args.vla_verb == "serve":
        from vlaser.vla.serve import serve

        serve(str(args.policy), host=args.host, port=args.port, device=args.device, dtype=args.dtype,
              api_key=args.api_key or None, max_body_bytes=args.max_body_mb * 2**20)
    else:
        from vlaser.vla.quickstart import run_quickstart

        run_quickstart(args.out, seed=args.seed, train_steps=args.max_steps, episodes=args.eval_episodes,
                       demos=args.episodes, minutes=args.minutes, overwrite=args.overwrite)
    return 0

"""``vlaser vla``: the VLA half: validate LeRobot data, train a policy, serve it, run the offline quickstart."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from vlaser.cli import vla_convert
from vlaser.cli.args import at_least
from vlaser.errors import UserInputError

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
                         description="Values come from CONFIG (YAML or JSON, the fields below) and are overridden "
                                     "by flags; dict fields (config, gripper_dims) take JSON.")
    t.add_argument("config_file", nargs="?", type=Path, metavar="CONFIG", help="a YAML/JSON training config")
    _add_train_flags(t)

    vla_convert.add_parser(verbs)

    s = verbs.add_parser("serve", help="serve a trained policy over HTTP (POST /act, GET /health)")
    s.add_argument("policy", type=Path, help="a folder written by 'vlaser vla train'")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))

    q = verbs.add_parser("quickstart", help="the whole VLA loop offline on a CPU: demos, training, closed-loop eval",
                         description="Writes scripted demonstrations of a numpy reach task as a LeRobot v3.0 "
                                     "dataset, trains a tiny VLA on a tiny InternVL3 backbone for a step budget, "
                                     "evaluates it closed-loop on held-out episodes beside untrained, blind and "
                                     "scripted policies, and writes report.json, report.md and pictures.")
    q.add_argument("--out", type=Path, default=Path("vla-quickstart"), help="output folder (new or empty)")
    q.add_argument("--steps", type=at_least(1), default=None, help="training steps (default: the tested budget)")
    q.add_argument("--episodes", type=at_least(1), default=100, help="held-out episodes per policy")
    q.add_argument("--seed", type=int, default=0)


def _train_fields() -> list[tuple[dataclasses.Field, str]]:
    from vlaser.vla.train_args import VLATrainArguments

    hints = typing.get_type_hints(VLATrainArguments)
    return [(f, str(hints[f.name])) for f in dataclasses.fields(VLATrainArguments)]


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    for f, hint in _train_fields():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        convert, metavar = _kind(hint)
        parser.add_argument(f"--{f.name}", *([f"--{f.name.replace('_', '-')}"] if "_" in f.name else []),
                            dest=f"flag_{f.name}", type=convert, default=argparse.SUPPRESS, metavar=metavar,
                            help=f"default: {default}")


def _kind(hint: str):
    """``(converter, metavar)`` of a field's type hint; a dict takes JSON (checked before ``int``, which
    ``dict[str, list[int]]`` also names)."""
    for name, convert, metavar in (("dict", _json_object, "JSON"), ("bool", _boolean, "BOOL"), ("int", int, "N"),
                                   ("float", float, "X")):
        if name in hint:
            return convert, metavar
    return str, "TEXT"


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def train_values(args: argparse.Namespace) -> dict:
    """The training fields: CONFIG's values overridden by the flags given."""
    from vlaser.train.args import read_config

    values = {}
    if args.config_file is not None:
        values = read_config(args.config_file)
        if not isinstance(values, dict):
            raise UserInputError(f"{args.config_file}: a VLA training config is a mapping of field names to values")
    values.update({k[len("flag_"):]: v for k, v in vars(args).items() if k.startswith("flag_")})
    return values


def run(args) -> int:
    if args.vla_verb == "data":
        from vlaser.vla.data.inspect import inspect_dataset

        summary = inspect_dataset(args.path)
        print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.render())
    elif args.vla_verb == "train":
        from vlaser.vla.train_args import VLATrainArguments

        where = f"{args.config_file} and the flags" if args.config_file else "the vla train flags"
        train_args = VLATrainArguments.from_dict(train_values(args), where=where)  # checked before torch loads
        from vlaser.vla.train import train_vla

        out = train_vla(train_args)
        print(f"saved the VLA policy to {out}")
    elif args.vla_verb == "convert":
        return vla_convert.run(args)
    elif args.vla_verb == "serve":
        from vlaser.vla.serve import serve

        serve(str(args.policy), host=args.host, port=args.port, device=args.device, dtype=args.dtype)
    else:
        from vlaser.vla.quickstart import run_quickstart

        run_quickstart(args.out, seed=args.seed, train_steps=args.steps, episodes=args.episodes)
    return 0

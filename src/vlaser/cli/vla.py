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
  vlaser vla quickstart --out vla-quickstart
  vlaser vla collect metaworld --tasks mt10 --episodes 50 --out mt10_demos --workers 8
  vlaser vla eval metaworld --policy runs/vla --tasks mt10 --episodes 10 --out mt10_eval"""


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
    q.add_argument("--episodes", type=at_least(1), default=None,
                   help="held-out episodes per policy (reach2d: 100) or per task and policy (metaworld: 10)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--env", choices=("reach2d", "metaworld"), default="reach2d",
                   help="reach2d: the numpy reach task (minutes); metaworld: 5 Meta-World tasks (~40 min)")
    _add_sim_parsers(verbs)


def _add_sim_parsers(verbs) -> None:
    """``collect metaworld`` and ``eval metaworld``: the simulator half (the ``sim`` extra)."""
    c = verbs.add_parser("collect", help="scripted demonstrations in a simulator, written as a LeRobot v3.0 dataset")
    c.add_argument("sim", choices=("metaworld",))
    c.add_argument("--tasks", required=True, help="task and group names, comma-separated (reach,push or easy,mt10)")
    c.add_argument("--episodes", type=at_least(1), required=True, help="episodes per task (failed ones dropped)")
    c.add_argument("--out", type=Path, required=True, help="the dataset folder (new or empty)")
    _add_render_flags(c, defaults=True)
    c.add_argument("--workers", type=at_least(1), default=1, help="rendering processes")
    c.add_argument("--seed", type=int, default=0, help="episode seeds are SEED*100000 + 0..episodes-1")
    c.add_argument("--video", action="store_true", help="store the camera as video (default: PNG frames, lossless)")

    e = verbs.add_parser("eval", help="closed-loop evaluation in a simulator (results.json, report.md, index.html)")
    e.add_argument("sim", choices=("metaworld",))
    e.add_argument("--policy", help="a policy folder written by 'vlaser vla train'")
    e.add_argument("--server", help="or the URL of 'vlaser vla serve' (asked through PolicyClient)")
    e.add_argument("--tasks", required=True, help="task and group names, comma-separated")
    e.add_argument("--episodes", type=at_least(1), required=True, help="episodes per task")
    e.add_argument("--out", type=Path, required=True, help="output folder (a killed run resumes from it)")
    e.add_argument("--dataset", help="the training demonstrations (their render settings are reused)")
    _add_render_flags(e, defaults=False)
    e.add_argument("--workers", type=at_least(1), default=1, help="simulator processes")
    e.add_argument("--envs-per-worker", type=at_least(1), default=4, help="episodes each worker runs at once")
    e.add_argument("--seed", type=int, default=1, help="held-out seeds SEED*100000 + 0..episodes-1 (collect: 0)")
    e.add_argument("--max-steps", type=at_least(1), default=None, help="step limit (default: the env's, 500)")
    e.add_argument("--instruction", default=None, help="give every episode this instruction (a blind check)")
    e.add_argument("--record", type=at_least(0), default=2, help="frame strips of the first N episodes per task")
    e.add_argument("--device", default="cpu")
    e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    e.add_argument("--no-expert", action="store_true", help="skip the scripted expert on the same seeds")


def _add_render_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    parser.add_argument("--image-size", type=at_least(8), default=224 if defaults else None,
                        help="square camera images (default: 224" + ("" if defaults else ", or the dataset's") + ")")
    parser.add_argument("--render", choices=("scene", "cheap"), default="scene" if defaults else None,
                        help="scene: the scene's shadows and multisampling (GPU); cheap: neither, ~10x faster on "
                             "a CPU (OSMesa)" + ("" if defaults else "; default: as the policy's dataset"))


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
    elif args.vla_verb in ("collect", "eval"):
        _run_sim(args)
    elif args.env == "metaworld":
        from vlaser.vla.sim.quickstart import run_metaworld_quickstart

        run_metaworld_quickstart(args.out, seed=args.seed, train_steps=args.steps, episodes=args.episodes)
    else:
        from vlaser.vla.quickstart import run_quickstart

        run_quickstart(args.out, seed=args.seed, train_steps=args.steps, episodes=args.episodes or 100)
    return 0


def _run_sim(args) -> None:
    cheap = None if args.render is None else args.render == "cheap"
    if args.vla_verb == "collect":
        from vlaser.vla.sim.collect import collect_metaworld
        from vlaser.vla.sim.metaworld import RenderSettings

        record = collect_metaworld(args.out, args.tasks, args.episodes, RenderSettings(args.image_size, cheap=cheap),
                                   workers=args.workers, seed=args.seed, video=args.video)
        print(f"wrote {record['episodes']} episodes ({record['dropped_episodes']} failed and dropped) to {args.out}; "
              f"{record['frames_rendered']} frames in {record['seconds']:.0f} s = "
              f"{record['frames_per_second']:.1f} frames/s")
        return
    from vlaser.vla.sim.evaluate import evaluate_metaworld

    results = evaluate_metaworld(
        args.out, args.tasks, args.episodes, policy=args.policy, server=args.server, dataset=args.dataset,
        image_size=args.image_size, cheap=cheap, workers=args.workers, slots=args.envs_per_worker, seed=args.seed,
        max_steps=args.max_steps, instruction=args.instruction, record=args.record, device=args.device,
        dtype=args.dtype, expert=not args.no_expert)
    print((args.out / "report.md").read_text())
    print(f"overall success {results['scores']['overall']['success_rate']:.3f}; wrote {args.out / 'index.html'}")

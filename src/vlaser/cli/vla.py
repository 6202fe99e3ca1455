"""``vlaser vla``: the VLA half: validate LeRobot data, train a policy, serve it, run the offline quickstart."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from pathlib import Path

from vlaser.cli import vla_convert
from vlaser.cli.args import FullHelp, at_least
from vlaser.cli.serve import API_KEY_ENV
from vlaser.errors import UserInputError

REACH_DEMOS, REACH_EVAL = 4000, 100  #: the reach2d quickstart's tested sizes

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
                         add_help=False)
    t.add_argument("-h", "--help", action=FullHelp, build=help_parser, help="list every flag with its help")
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
                   help="training steps (default: 2,500, the tested budget; fewer gives a warning in the report; "
                        "metaworld: 1,500 per policy)")
    q.add_argument("--minutes", type=float, default=None,
                   help="also stop training once this many minutes of it are spent (default: no time limit)")
    q.add_argument("--episodes", type=at_least(1), default=REACH_DEMOS,
                   help="scripted demonstrations to train on (default: 4,000, the tested number)")
    q.add_argument("--eval-episodes", type=at_least(1), default=REACH_EVAL,
                   help="held-out episodes each policy is evaluated on (default: 100)")
    q.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the evaluation (default: 0)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    q.add_argument("--env", choices=("reach2d", "metaworld"), default="reach2d",
                   help="reach2d: the numpy reach task (minutes); metaworld: 5 Meta-World tasks, a VLA and an "
                        "instruction-blind twin (~20 min; fixed sizes: --max-steps, --out and --seed apply)")
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


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, each flag's default after its help."""



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
    elif args.vla_verb in ("collect", "eval"):
        _run_sim(args)
    elif args.env == "metaworld":
        _metaworld_quickstart(args)
    else:
        from vlaser.vla.quickstart import run_quickstart

        run_quickstart(args.out, seed=args.seed, train_steps=args.max_steps, episodes=args.eval_episodes,
                       demos=args.episodes, minutes=args.minutes, overwrite=args.overwrite)
    return 0


def _metaworld_quickstart(args) -> None:
    reach_only = (args.minutes is not None, args.overwrite, args.episodes != REACH_DEMOS,
                  args.eval_episodes != REACH_EVAL)
    if any(reach_only):
        raise UserInputError("--minutes, --overwrite, --episodes and --eval-episodes are the reach2d quickstart's; "
                             "the metaworld one has fixed sizes (20 demonstrations and 20 held-out episodes per "
                             "task) and writes into a new folder")
    from vlaser.vla.sim.quickstart import run_metaworld_quickstart

    run_metaworld_quickstart(args.out, seed=args.seed, train_steps=args.max_steps)


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

"""``vlaser vla convert STEP.pt --vlm DIR --preset NAME --out POLICY``: the release's checkpoint as a vlaser policy."""

from __future__ import annotations

from pathlib import Path

from vlaser.cli.args import json_object


def add_parser(verbs) -> None:
    c = verbs.add_parser("convert", help="convert the released Vlaser-VLA checkpoint (open-pi-zero step{N}.pt)",
                         description="Reads {'model': PiZero.state_dict()} from STEP.pt (no code run), maps every "
                                     "tensor onto a vlaser policy built from --vlm with the preset's sizes, and "
                                     "writes it; unknown, missing, mis-shaped or inconsistent tensors are errors "
                                     "that name them. docs/vla.md lists the key table.")
    c.add_argument("checkpoint", type=Path, metavar="STEP.pt", help="the release's step{N}.pt")
    c.add_argument("--vlm", required=True, type=Path,
                   help="the InternVL3/Vlaser checkpoint the release trained from (config and tokenizer)")
    c.add_argument("--preset", required=True, help="vlaser_2b_bridge, vlaser_2b_fractal, vlaser_8b_bridge, ...")
    c.add_argument("--config", type=json_object, default={}, metavar="JSON",
                   help='VLAConfig fields overriding the preset, e.g. \'{"time_max_period": 10000}\'')
    c.add_argument("--stats", type=Path, help="the release's dataset statistics (config/bridge_statistics.json), "
                                              "written as norm_stats.json")
    c.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the written policy (the release evaluates in float32)")
    c.add_argument("--out", required=True, type=Path, help="the policy folder to write")


def run(args) -> int:
    from vlaser.vla.config import preset
    from vlaser.vla.release import convert_release

    out = convert_release(args.checkpoint, args.vlm, preset(args.preset, **args.config), args.out,
                          stats=args.stats, dtype=args.dtype)
    print(f"wrote the VLA policy to {out}")
    return 0

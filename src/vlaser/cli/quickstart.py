"""``vlaser quickstart``: synthetic embodied data -> SFT of a tiny model -> held-out evaluation and report."""

from __future__ import annotations

from pathlib import Path

from vlaser.cli.args import at_least


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quickstart", help="the whole Vlaser loop offline on a CPU: data, SFT, evaluation, report",
        description="Generates a seeded synthetic tabletop dataset in InternVL's SFT format, builds a tiny "
                    "InternVL3-architecture model, trains it with 'vlaser train' within a time budget, evaluates "
                    "it before and after on held-out sets in Where2Place's and MMSI-Bench's layouts beside blind "
                    "baselines, and writes summary.json, report.md and index.html.",
    )
    p.add_argument("--out", type=Path, default=Path("vlaser-quickstart"), help="output directory")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training budget (default: 10 basic, 30 hard)")
    budget.add_argument("--max-steps", type=at_least(20), default=None,
                        help="a step budget instead of the time budget: the same training on any machine")
    p.add_argument("--preset", choices=("basic", "hard"), default="basic",
                   help="basic: one object per scene; hard: 2-4 objects, referring pointing, relation questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args) -> int:
    from vlaser.quickstart.run import run_quickstart

    run_quickstart(args.out, minutes=args.minutes, preset=args.preset, seed=args.seed,
                   overwrite=args.overwrite, max_steps=args.max_steps)
    return 0

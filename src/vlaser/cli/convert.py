"""``vlaser convert SRC DST --to hf|original``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between the original and the transformers layout")
    p.add_argument("src", help="checkpoint directory (either layout)")
    p.add_argument("dst", help="new output directory")
    p.add_argument("--to", required=True, choices=["hf", "original"], help="layout to write")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")


def run(args) -> int:
    from vlaser.model.convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, to=args.to, max_shard_size=args.max_shard_size)
    print(f"wrote {args.to} layout checkpoint to {out}")
    return 0

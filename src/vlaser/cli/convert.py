"""``vlaser convert SRC DST --to hf|original``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between the original and the transformers layout")
    p.add_argument("src", help="checkpoint directory (either layout)")
    p.add_argument("dst", help="output directory (new or empty; written in a temporary sibling, then renamed)")
    p.add_argument("--to", required=True, choices=["hf", "original"], help="layout to write")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty DST (only once the new checkpoint is completely written)")


def run(args) -> int:
    from vlaser.model.convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, to=args.to, max_shard_size=args.max_shard_size,
                             overwrite=args.overwrite)
    print(f"wrote {args.to} layout checkpoint to {out}")
    return 0

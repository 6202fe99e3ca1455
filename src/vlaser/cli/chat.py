"""``vlaser chat``: one question, or a multi-turn prompt when no question is given."""

from __future__ import annotations

import sys

from vlaser.cli.args import at_least
from vlaser.errors import UserInputError


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="ask a model about images or a video")
    p.add_argument("question", nargs="?", help="the question; omit it for an interactive multi-turn chat")
    p.add_argument("--model", required=True, help="checkpoint directory (either layout)")
    p.add_argument("--image", action="append", default=[], help="image file; repeat for several images")
    p.add_argument("--video", help="video file (frames sampled like InternVL's load_video)")
    p.add_argument("--num-segments", type=at_least(1), default=8, help="video frames to sample (default 8)")
    p.add_argument("--max-num", dest="max_tiles", type=at_least(1), default=None,
                   help="max tiles per image (default: the checkpoint's max_dynamic_patch, with --point too); "
                        "-v logs how each image was tiled")
    p.add_argument("--point", action="store_true", help="ask with Vlaser's point prompt and print pixel points")
    p.add_argument("--draw", help="with --point: save the image with the points drawn to this PNG")
    p.add_argument("--max-new-tokens", type=at_least(1), default=None, help="default 1024 (100 with --point)")
    p.add_argument("--dtype", default="auto", help="auto (checkpoint dtype), bfloat16, float16 or float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")


def run(args) -> int:
    from vlaser.api import VLM

    if args.draw and not args.point:
        raise UserInputError("--draw needs --point")
    if args.point and (len(args.image) != 1 or args.video):
        raise UserInputError("--point needs exactly one --image")
    vlm = VLM.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    if args.point:
        return _point(vlm, args)
    gen = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    session = vlm.session(args.image or None, video=args.video, max_tiles=args.max_tiles,
                          num_segments=args.num_segments)
    if args.question:
        print(session.ask(args.question, **gen))
        return 0
    print("multi-turn chat; an empty line or Ctrl-D ends it", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            break
        print(session.ask(line.strip(), **gen), flush=True)
    return 0


def _point(vlm, args) -> int:
    from vlaser.model.preprocess import to_pil
    from vlaser.points import draw_boxes, draw_points

    if not args.question:
        raise UserInputError("--point needs a question, e.g. 'Point to the red cup.'")
    gen = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    answer = vlm.point(args.image[0], args.question, max_tiles=args.max_tiles, **gen)  # unset: the checkpoint's tiles
    print(answer.text)
    print("points (pixels):", [list(p) for p in answer.pixels])
    if answer.box_pixels:
        print("boxes (pixels):", [list(b) for b in answer.box_pixels])
    if args.draw:
        image = draw_boxes(draw_points(to_pil(args.image[0]), answer.pixels), answer.box_pixels)
        image.save(args.draw)
        print(f"drawn to {args.draw}")
    return 0

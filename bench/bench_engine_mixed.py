"""Mixed image sizes on CPU: the inference engine vs the batch-1 ``model.chat`` loop and ``batch_chat``.

The tiny original-layout checkpoint, 4 images (1920x1080, 300x900, 448x448, 640x480) with 6 questions each,
``max_num`` 6 (prompts of 1 to 7 tiles), 16 new tokens, greedy, float32; tiling is part of every timed path.
Every path must give the same answers (asserted). Usage: python bench/bench_engine_mixed.py [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from vlaser import VLM
from vlaser.inference import GenerationParams, Prepared
from vlaser.inference.engine import Engine
from vlaser.model.loading import load_model
from vlaser.model.template import build_chat_prompt
from vlaser.model.tiny import build_tiny_checkpoint

SIZES = [(1920, 1080), (300, 900), (448, 448), (640, 480)]
QUESTIONS = ["What is on the table?", "Point to the cup.", "Which object is left of the bowl?",
             "Describe the scene.", "How many chairs are there?", "What colour is the box?"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--exact", action="store_true", help="every answer exactly --new-tokens long (min = max)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_model(build_tiny_checkpoint(f"{tmp}/tiny", layout="original"), dtype=torch.float32,
                                      device="cpu")
    vlm = VLM(model, tokenizer, max_tiles=6)
    items = [(image, q) for image in _images() for q in QUESTIONS]
    minimum = args.new_tokens if args.exact else 0
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": minimum, "do_sample": False}
    params = GenerationParams(max_new_tokens=args.new_tokens, min_new_tokens=minimum)

    def loop():
        out = []
        for image, question in items:
            media = vlm.media(image)
            out.append(model.chat(tokenizer, media.pixel_values, question, dict(gen),
                                  num_patches_list=media.num_patches))
        return out

    def batch_chat():
        out = []
        for start in range(0, len(items), args.batch):
            chunk = [(vlm.media(image), q) for image, q in items[start:start + args.batch]]
            out += model.batch_chat(tokenizer, torch.cat([m.pixel_values for m, _ in chunk]), [q for _, q in chunk],
                                    dict(gen), num_patches_list=[m.num_patches[0] for m, _ in chunk])
        return out

    engine = Engine(model, tokenizer, max_batch_size=args.batch)

    def engined():
        prepared = []
        for image, question in items:
            media = vlm.media(image)
            prompt = build_chat_prompt(question, model.conv_template, media.num_patches, model.num_image_token,
                                       system_message=model.system_message)[1]
            prepared.append(Prepared(prompt, media.pixel_values, media.num_patches, media.sizes))
        return [c.text for c in engine.generate(prepared, params)]

    reference = loop()
    assert batch_chat() == reference, "batch_chat must answer as the chat loop"
    assert engined() == reference, "the engine must answer as the chat loop"
    times = {name: [] for name in ("chat loop", "batch_chat", "engine")}
    for _ in range(args.repeats):
        for name, fn in (("chat loop", loop), ("batch_chat", batch_chat), ("engine", engined)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"threads={torch.get_num_threads()} items={len(items)} new_tokens={args.new_tokens} batch={args.batch} "
          f"exact={args.exact} answers identical: yes")
    base = statistics.median(times["chat loop"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:10s} {t:6.3f} s  {len(items) / t:6.1f} items/s  {base / t:5.2f}x the chat loop")


if __name__ == "__main__":
    main()

"""VLA inference speed: action chunks per second of ``VLAModel.sample_actions`` (prefix and proprio computed once
and kept as a KV cache, then ``num_inference_steps`` Euler steps through the expert), beside recomputing the
prefix at every step.

Random weights in the chosen shapes, built directly on the device: ``--size tiny`` is the test model on the CPU
(the quickstart's policy is larger: its report measures its own chunks/s); ``--size 2b`` is InternVL3-2B with the
release's ``vlaser_2b_bridge`` expert (768 wide, MLP 8960, 28 layers), one 448 px tile, a 384-token prefix.
For scale: the open-pi-zero base reports 75 ms per chunk on an RTX 4090 (bf16, torch.compile).
Usage: python bench/bench_vla.py [--size tiny|2b] [--device cpu|cuda] [--dtype float32|bfloat16] [--batch 1]
"""

import argparse
import time

import torch
from gpu_train_throughput import build

from vlaser.vla.config import preset
from vlaser.vla.model import VLAModel

PRESETS = {"tiny": "tiny", "2b": "vlaser_2b_bridge"}  #: --size -> the VLA preset


def tile_side(vlm) -> int:
    """The backbone's tile side: a preset leaves ``image_size`` to the backbone (``vla.checks`` fills it on load)."""
    size = vlm.config.vision_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def inputs(model: VLAModel, batch: int, device: str, seed: int = 0) -> dict:
    """A prompt-shaped prefix: the image tokens of one tile, then text, right-padded to ``prefix_len``."""
    cfg, vlm = model.config, model.vlm
    g = torch.Generator().manual_seed(seed)
    n_image = int(vlm.config.image_seq_length)
    n_text = min(24, cfg.prefix_len - n_image)
    ids = torch.zeros((batch, cfg.prefix_len), dtype=torch.long)
    ids[:, :n_image] = vlm.config.image_token_id
    ids[:, n_image:n_image + n_text] = torch.randint(10, 500, (batch, n_text), generator=g)
    mask = torch.zeros_like(ids)
    mask[:, :n_image + n_text] = 1
    side = cfg.image_size or tile_side(vlm)
    pixels = torch.randn((batch, 3, side, side), generator=g)
    state = torch.rand((batch, cfg.proprio_dim), generator=g) * 2 - 1
    noise = torch.randn((batch, cfg.chunk_size, cfg.action_dim), generator=g)
    dtype = next(vlm.parameters()).dtype
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "pixel_values": pixels.to(device, dtype),
            "state": state.to(device, dtype), "noise": noise.to(device)}


def seconds_per_call(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    vlm = build(args.size, args.device, dtype).eval()
    config = preset(PRESETS[args.size])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = VLAModel(vlm, config).eval()
    finally:
        torch.set_default_dtype(previous)
    batch = inputs(model, args.batch, args.device)
    cached = seconds_per_call(lambda: model.sample_actions(**batch), args.device, args.repeats)
    recompute = seconds_per_call(lambda: model.sample_actions(**batch, use_cache=False), args.device,
                                 max(1, args.repeats // 4))
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{args.size} ({params:.2f}B parameters, expert {config.expert_hidden_size} wide), {args.device} "
          f"{args.dtype}, batch {args.batch}, {config.num_inference_steps} steps, prefix {config.prefix_len}")
    print(f"  prefix cached:    {cached * 1e3:8.1f} ms per call, {args.batch / cached:8.2f} chunks/s")
    print(f"  prefix recomputed:{recompute * 1e3:8.1f} ms per call, {args.batch / recompute:8.2f} chunks/s "
          f"(the cache is {recompute / cached:.2f}x faster)")


if __name__ == "__main__":
    main()

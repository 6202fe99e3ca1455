"""Training throughput of the real InternVL3-2B architecture (random weights) on packed 16k-token rows.

For a lent GPU (the device tool): bf16, gradient checkpointing, AdamW, packed rows of --tokens tokens
with --tiles image tiles each; prints tokens/s and model FLOPs utilisation (MFU) against --peak-tflops.
`--tiny` runs the same code path with the tiny test model on the CPU, to check the script itself.
Usage: python bench/gpu_train_throughput.py [--tokens 16384] [--tiles 24] [--steps 6] [--peak-tflops 989]
"""

import argparse
import time

import torch

from vlaser.model.chat import InternVLChat
from vlaser.model.convert import original_to_hf_config
from vlaser.model.loading import build_hf_config
from vlaser.model.packed_attention import use_packed_attention
from vlaser.model.tiny import randomize_, tiny_original_config


def internvl3_2b_config() -> dict:
    """InternVL3-2B's shapes: InternViT-300M-448px-V2_5 + Qwen2.5-1.5B."""
    config = tiny_original_config(vocab_size=151674, image_size=448)
    config["vision_config"].update(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                   num_hidden_layers=24)
    config["llm_config"].update(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                                num_key_value_heads=2, num_hidden_layers=28)
    return config


def flops_per_step(model, tokens: int, tiles: int, seq_lens: list[int]) -> float:
    """6 N per token (forward + backward) for each tower, plus causal attention scores and values."""
    text = model.config.text_config
    vis = model.config.vision_config
    n_llm = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n and "embed_tokens" not in n)
    n_vit = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    patches = (vis.image_size[0] // vis.patch_size[0]) ** 2 + 1
    attn_llm = 6 * text.num_hidden_layers * text.hidden_size * sum(n * n for n in seq_lens)  # causal: half of 12
    attn_vit = 12 * vis.num_hidden_layers * vis.hidden_size * patches * patches * tiles
    return 6 * n_llm * tokens + 6 * n_vit * patches * tiles + attn_llm + attn_vit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--tiles", type=int, default=24)
    ap.add_argument("--samples-per-row", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the script)")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    config = tiny_original_config(vocab_size=610) if args.tiny else internvl3_2b_config()
    model = InternVLChat(build_hf_config(original_to_hf_config(config, image_token_id=3)))
    randomize_(model, 0)
    model.to(device=device, dtype=dtype).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    print("language-model attention:", use_packed_attention(model))
    size = model.config.vision_config.image_size[0]
    per_tile = model.config.image_seq_length
    seq_lens = [args.tokens // args.samples_per_row] * args.samples_per_row
    ids = torch.randint(10, model.config.text_config.vocab_size, (1, args.tokens), device=device)
    ids[0, : args.tiles * per_tile] = model.config.image_token_id  # the rows' image tokens
    positions = torch.cat([torch.arange(n) for n in seq_lens]).to(device)[None]
    batch = dict(input_ids=ids, labels=ids.clone(), position_ids=positions,
                 pixel_values=torch.randn(args.tiles, 3, size, size, device=device, dtype=dtype),
                 image_flags=torch.ones(args.tiles, dtype=torch.long, device=device))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for _ in range(args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    t = sorted(times[1:])[len(times[1:]) // 2]  # median after warm-up
    flops = flops_per_step(model, args.tokens, args.tiles, seq_lens)
    print(f"device={torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} tokens/row={args.tokens} "
          f"tiles/row={args.tiles} step={t:.3f}s")
    print(f"tokens/s={args.tokens / t:,.0f}  model TFLOP/s={flops / t / 1e12:.1f}  "
          f"MFU={flops / t / (args.peak_tflops * 1e12):.1%} (peak {args.peak_tflops} TFLOP/s)")
    if device == "cuda":
        print(f"max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

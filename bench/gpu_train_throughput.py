"""Training throughput of InternVL3-2B / -8B shapes (random weights) on packed 16k-token rows.

For a lent GPU: the model is built directly on the device in bf16 (no CPU init), whole model trainable,
fused AdamW whose states are bf16 like the parameters (pure-bf16 training: what lets 8B fit one GPU, about
16 GB weights + 16 GB grads + 32 GB states), packed rows of --tokens tokens with --tiles tiles each.
Prints tokens/s, MFU against --peak-tflops, peak memory and the share of the step spent in the loss head.
`--tiny` runs the same code path with the tiny test model on the CPU, to check the script itself.
The rows carry their sample boundaries as `vlaser train`'s packed collator gives them (torch's variable-length
kernel on CUDA); `--boundaries positions` leaves them out, so attention finds them from the position ids per layer.
Usage: python bench/gpu_train_throughput.py --size 2b|8b [--loss chunked|plain] [--checkpointing 0|1|k]
       [--compile] [--tokens 16384] [--tiles 24] [--steps 6] [--peak-tflops 989] [--boundaries batch|positions]
"""

import argparse
import math
import time

import torch

from vlaser.data.packing import sample_boundaries
from vlaser.model.chat import InternVLChat
from vlaser.model.convert import original_to_hf_config
from vlaser.model.loading import build_hf_config
from vlaser.model.loss import chunked_lm_loss, weighted_lm_loss
from vlaser.model.packed_attention import use_packed_attention
from vlaser.model.tiny import randomize_, tiny_original_config
from vlaser.train.trainer import checkpoint_every, compile_decoder_layers


def internvl3_2b_config() -> dict:
    """InternVL3-2B's shapes: InternViT-300M-448px-V2_5 + Qwen2.5-1.5B."""
    config = tiny_original_config(vocab_size=151674, image_size=448)
    config["vision_config"].update(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                   num_hidden_layers=24)
    config["llm_config"].update(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                                num_key_value_heads=2, num_hidden_layers=28)
    return config


def internvl3_8b_config() -> dict:
    """InternVL3-8B's shapes: InternViT-300M-448px-V2_5 + Qwen2.5-7B."""
    config = internvl3_2b_config()
    config["llm_config"].update(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                                num_key_value_heads=4, num_hidden_layers=28)
    return config


@torch.no_grad()
def init_on_device_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fan-in scaled random weights drawn where the parameters live (the CPU init of 8B takes minutes)."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
        elif p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()) if "embed_tokens" not in name else 0.02)
        else:
            p.normal_(0.0, 0.02)


def create_on(device: str, dtype: torch.dtype, cls, *args):
    """``cls(*args)`` with its tensors created on ``device`` in ``dtype`` (never built on the host and copied)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(*args)
    finally:
        torch.set_default_dtype(previous)


def build(size: str, device: str, dtype: torch.dtype, image_token_id: int = 3) -> InternVLChat:
    """The model of ``size`` (tiny, 2b, 8b) created directly on ``device`` in ``dtype``."""
    config = {"tiny": lambda: tiny_original_config(vocab_size=610), "2b": internvl3_2b_config,
              "8b": internvl3_8b_config}[size]()
    hf_config = build_hf_config(original_to_hf_config(config, image_token_id=image_token_id))
    model = create_on(device, dtype, InternVLChat, hf_config)
    if size == "tiny":
        randomize_(model, 0)
    else:
        init_on_device_(model, 0)
    return model


def loss_seconds(model, batch, loss_impl: str, device: str, repeats: int = 3) -> float:
    """Median time of the loss head alone (forward + backward from detached hidden states)."""
    hidden = torch.randn(*batch["input_ids"].shape, model.config.text_config.hidden_size, device=device,
                         dtype=model.dtype, requires_grad=True)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        if loss_impl == "chunked":
            loss = chunked_lm_loss(model.lm_head, hidden, batch["labels"], "token", batch["loss_weight"])
        else:
            loss = weighted_lm_loss(model.lm_head(hidden), batch["labels"], "token", batch["loss_weight"])
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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


def packed_batch(model, tokens: int, tiles: int, samples_per_row: int, device: str, dtype: torch.dtype,
                 boundaries: str = "batch") -> tuple[dict, list[int]]:
    """One packed row of ``tokens`` tokens (``tiles`` tiles of image tokens first), ``samples_per_row`` samples,
    the same for every call (seeded), and the samples' lengths."""
    size = model.config.vision_config.image_size[0]
    seq_lens = [tokens // samples_per_row] * samples_per_row
    torch.manual_seed(0)  # the same batch for every --loss, so the printed losses compare
    ids = torch.randint(10, model.config.text_config.vocab_size, (1, tokens), device=device)
    ids[0, : tiles * model.config.image_seq_length] = model.config.image_token_id  # the rows' image tokens
    positions = torch.cat([torch.arange(n) for n in seq_lens]).to(device)[None]
    batch = dict(input_ids=ids, labels=ids.clone(), position_ids=positions,
                 loss_weight=torch.rand(1, tokens, device=device),
                 pixel_values=torch.randn(tiles, 3, size, size, device=device, dtype=dtype),
                 image_flags=torch.ones(tiles, dtype=torch.long, device=device))
    if boundaries == "batch":
        bounds = sample_boundaries([seq_lens], tokens)
        batch |= {k: v.to(device) if torch.is_tensor(v) else v for k, v in bounds.items()}
    return batch, seq_lens


def train_steps(model, batch: dict, loss_impl: str, steps: int, device: str) -> tuple[list[float], list[float]]:
    """Seconds and loss of each of ``steps`` optimizer steps (fused AdamW on CUDA, states in the params' dtype)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    times, losses = [], []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        loss = model(**batch, loss_impl=loss_impl).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return times, losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["2b", "8b"], default="2b")
    ap.add_argument("--loss", choices=["chunked", "plain"], default="chunked")
    ap.add_argument("--checkpointing", type=int, default=1, help="recompute every k-th decoder layer (0: off)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--tiles", type=int, default=24)
    ap.add_argument("--samples-per-row", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    ap.add_argument("--boundaries", choices=["batch", "positions"], default="batch",
                    help="sample boundaries from the batch (as vlaser train) or from the position ids per layer")
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the script)")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = build("tiny" if args.tiny else args.size, device, dtype).train()
    checkpoint_every(model, args.checkpointing)
    if args.compile:
        compile_decoder_layers(model)
    print("language-model attention:", use_packed_attention(model))
    batch, seq_lens = packed_batch(model, args.tokens, args.tiles, args.samples_per_row, device, dtype,
                                   args.boundaries)
    times, losses = train_steps(model, batch, args.loss, args.steps, device)
    t = sorted(times[1:])[len(times[1:]) // 2]  # median after warm-up
    flops = flops_per_step(model, args.tokens, args.tiles, seq_lens)
    share = loss_seconds(model, batch, args.loss, device) / t
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device={name} size={'tiny' if args.tiny else args.size} "
          f"loss={args.loss} checkpointing={args.checkpointing} compile={args.compile} boundaries={args.boundaries} "
          f"tokens/row={args.tokens} tiles/row={args.tiles} step={t:.3f}s")
    print(f"tokens/s={args.tokens / t:,.0f}  model TFLOP/s={flops / t / 1e12:.1f}  "
          f"MFU={flops / t / (args.peak_tflops * 1e12):.1%} (peak {args.peak_tflops} TFLOP/s)  "
          f"loss head={share:.1%} of the step")
    print("losses:", " ".join(f"{v:.5f}" for v in losses))
    if device == "cuda":
        print(f"max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

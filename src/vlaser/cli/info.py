"""``vlaser info PATH``: what a checkpoint is, read from its files without loading the weights."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: layout, sizes, dtype, tiling and template, special tokens")
    p.add_argument("path", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _part(key: str) -> str:
    if "vision" in key:
        return "vision"
    return "projector" if ("mlp1" in key or "projector" in key) else "language"


def describe(path: str) -> dict:
    """Layout, architecture sizes, parameter counts and dtypes, tokens and chat settings of a checkpoint."""
    from vlaser.model.checkpoint import inspect_checkpoint, iter_shapes, weight_files
    from vlaser.model.settings import ProcessorSettings
    from vlaser.model.tokenizer import load_tokenizer

    ckpt = inspect_checkpoint(path)
    files = weight_files(ckpt.path)
    params, dtypes = Counter(), Counter()
    for key, shape, dtype in iter_shapes(ckpt.path):
        n = math.prod(shape)
        params[_part(key)] += n
        dtypes[dtype] += n
    settings = ProcessorSettings.from_config(ckpt.config, source=str(ckpt.path / "config.json"))
    tok = load_tokenizer(ckpt.path)
    tokens = ["<img>", "</img>", "<IMG_CONTEXT>", "<ref>", "</ref>", "<box>", "</box>", "<|im_start|>", "<|im_end|>"]
    vis, llm = ckpt.vision_config, ckpt.llm_config
    return {
        "path": str(ckpt.path),
        "layout": ckpt.layout,
        "weight_files": [f.name for f in files],
        "parameters": dict(params) | {"total": sum(params.values())},
        "dtypes": {str(k): v for k, v in dtypes.items()},
        "vision": {k: vis.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size",
                                           "patch_size")},
        "language_model": {k: llm.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "processor": settings.to_config(),
        "processor_summary": settings.summary(),
        "special_tokens": {t: tok.convert_tokens_to_ids(t) for t in tokens},
    }


def run(args) -> int:
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    p = info["parameters"]
    print(f"{Path(info['path']).name}: {info['layout']} layout, {p['total'] / 1e6:.2f}M parameters "
          f"(vision {p.get('vision', 0) / 1e6:.2f}M, projector {p.get('projector', 0) / 1e6:.2f}M, "
          f"language {p.get('language', 0) / 1e6:.2f}M)")
    print(f"  weights: {', '.join(info['weight_files'])}  dtypes: {info['dtypes']}")
    print(f"  vision: {info['vision']}")
    print(f"  language model: {info['language_model']}")
    print(f"  processor: {info['processor_summary']}")
    print("    config keys: " + ", ".join(f"{k}={v!r}" for k, v in info["processor"].items()))
    print(f"  special tokens: {info['special_tokens']}")
    return 0

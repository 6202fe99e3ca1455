"""``vlaser info PATH``: what a checkpoint is, read from its files without loading the weights."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: layout, sizes, dtype, special tokens")
    p.add_argument("path", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _part(key: str) -> str:
    if "vision" in key:
        return "vision"
    return "projector" if ("mlp1" in key or "projector" in key) else "language"


def describe(path: str) -> dict:
    """Layout, architecture sizes, parameter counts and dtypes, tokens and chat settings of a checkpoint."""
    from vlaser.model.checkpoint import ORIGINAL, inspect_checkpoint, iter_shapes, weight_files
    from vlaser.model.convert import DEFAULT_CHAT_SETTINGS
    from vlaser.model.tokenizer import load_tokenizer

    ckpt = inspect_checkpoint(path)
    files = weight_files(ckpt.path)
    params, dtypes = Counter(), Counter()
    for key, shape, dtype in iter_shapes(ckpt.path):
        n = math.prod(shape)
        params[_part(key)] += n
        dtypes[dtype] += n
    settings = dict(DEFAULT_CHAT_SETTINGS)
    settings.update(ckpt.config if ckpt.layout == ORIGINAL else ckpt.config.get("internvl_chat") or {})
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
        "template": settings.get("template"),
        "system_message": settings.get("system_message", "(template default)"),
        "tiling": {k: settings.get(k) for k in ("dynamic_image_size", "use_thumbnail", "min_dynamic_patch",
                                                "max_dynamic_patch")},
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
    print(f"  template: {info['template']}  system message: {info['system_message']}")
    print(f"  tiling: {info['tiling']}")
    print(f"  special tokens: {info['special_tokens']}")
    return 0

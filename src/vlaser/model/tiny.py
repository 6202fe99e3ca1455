"""Tiny InternVL3-architecture checkpoints built in code, for tests, demos and benchmarks (no download).

``build_tiny_checkpoint`` writes a directory in the original ``InternVLChatModel`` layout (config keys as
InternVL3-2B ships them, scaled down) or in transformers' layout, with a tiny byte-level BPE tokenizer
that has the real Qwen2/InternVL3 special tokens.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

from vlaser.model.constants import INTERNVL_SPECIAL_TOKENS
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

_CORPUS = [
    INTERNVL2_5_SYSTEM_MESSAGE,
    "You are InternVL. Your task is to locate several points in the given image according to the task "
    'descriptions. Your answer should be formatted as "<point>[[x1, y1], [x2, y2],...]</point>". The point '
    "coordinates are normalized to integers between 0 and 1000. Return the answer in the point format directly.",
    "Point to the red cube on the table. The robot arm picks up the blue bowl and places it in the drawer.",
    "What is in the image? Please describe the image shortly. Which object is left of the green circle?",
    "Image-1: Image-2: Frame-1: Frame-2: A. B. C. D. yes no 0123456789 [[254, 624], [304, 624]] <ref> <box>",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer (Qwen2 pre-tokenisation) with Qwen2's chat tokens and InternVL's tokens."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer().train_new_from_iterator(_CORPUS * 4, vocab_size=600)
    tok.add_tokens(["<|im_start|>", "<|im_end|>", *INTERNVL_SPECIAL_TOKENS], special_tokens=True)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = 8192
    return tok


def tiny_original_config(vocab_size: int, image_size: int = 56, vision: dict | None = None,
                         **llm_overrides) -> dict:
    """An original-layout ``config.json`` shaped like InternVL3-2B's, with tiny dimensions."""
    llm = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
        "max_position_embeddings": 32768, "max_window_layers": 70, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}, "sliding_window": None,
        "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 0,
        "eos_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": False,
        "vocab_size": vocab_size, "_name_or_path": "./pretrained/Qwen2.5-1.5B-Instruct",
        "auto_map": {}, "attn_implementation": "flash_attention_2", "max_length": 20, "do_sample": False,
        "temperature": 1.0, "top_p": 1.0, "id2label": {"0": "LABEL_0"}, "transformers_version": "4.37.2",
    }
    llm.update(llm_overrides)
    vision_config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2, "hidden_act": "gelu",
        "image_size": image_size, "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6,
        "norm_type": "layer_norm", "qkv_bias": True, "qk_normalization": False, "attention_dropout": 0.0,
        "dropout": 0.0, "drop_path_rate": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "use_flash_attn": True,
    }
    vision_config.update(vision or {})
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": image_size, "select_layer": -1,
        "ps_version": "v2", "template": "internvl2_5", "use_thumbnail": True, "min_dynamic_patch": 1,
        "max_dynamic_patch": 12, "use_backbone_lora": 0, "use_llm_lora": 0, "pad2square": False,
        "torch_dtype": "float32", "llm_config": llm, "vision_config": vision_config,
    }


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic, non-degenerate weights: fan-in scaled matrices, norms near 1, small biases.

    Zero position embeddings or identity norms (transformers' init) would let mapping bugs go unseen.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif name.endswith("bias"):
            p.copy_(0.05 * noise)
        elif "lambda" in name:
            p.copy_(0.5 + 0.1 * noise)
        elif p.ndim >= 2 and "embed_tokens" not in name:
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:
            p.copy_(0.5 * noise)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """``(grid*grid, dim)`` 2-D sine-cosine position embeddings (half the channels per axis)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = [f(axis.reshape(-1, 1) * omega) for axis in (xs, ys) for f in (torch.sin, torch.cos)]
    out = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1])).float()


@torch.no_grad()
def trainable_init_(model: torch.nn.Module, seed: int = 0) -> None:
    """An init that trains from scratch: transformers' own init, fan-in scaled patch embedding and projector,
    and fixed 2-D sine-cosine position embeddings (zeros would leave the ViT blind to where things are)."""
    torch.manual_seed(seed)
    model.apply(model._init_weights)
    vision = model.model.vision_tower.embeddings
    grid = int((vision.position_embeddings.shape[1] - 1) ** 0.5)
    vision.position_embeddings[0, 1:] = sincos_2d(vision.position_embeddings.shape[-1], grid)
    for linear in (vision.patch_embeddings.projection, model.model.multi_modal_projector.linear_1,
                   model.model.multi_modal_projector.linear_2):
        fan_in = linear.weight[0].numel()
        linear.weight.normal_(0, fan_in**-0.5)
        linear.bias.zero_()


def build_tiny_checkpoint(out_dir: str | Path, layout: str = "original", seed: int = 0, image_size: int = 56,
                          system_message: str | None = None, vision: dict | None = None, llm: dict | None = None,
                          init: str = "random") -> Path:
    """Write a tiny InternVL3 checkpoint (weights, config, tokenizer) to ``out_dir``.

    ``init="random"`` gives the non-degenerate random weights the tests compare against; ``"trainable"``
    an init meant for training from scratch (the quickstart).
    """
    from huggingface_hub import save_torch_state_dict

    from vlaser.model.chat import InternVLChat
    from vlaser.model.convert import convert_checkpoint, hf_to_original_state_dict, original_to_hf_config
    from vlaser.model.loading import build_hf_config

    out = Path(out_dir)
    if layout == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            src = build_tiny_checkpoint(Path(tmp) / "original", "original", seed, image_size, system_message, vision,
                                        llm, init)
            return convert_checkpoint(src, out, to="hf")
    if layout != "original":
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    config = tiny_original_config(len(tok), image_size=image_size, vision=vision, **(llm or {}))
    if system_message is not None:
        config["system_message"] = system_message
    model = InternVLChat(build_hf_config(original_to_hf_config(config, tok.convert_tokens_to_ids("<IMG_CONTEXT>"))))
    (trainable_init_ if init == "trainable" else randomize_)(model, seed)
    state = hf_to_original_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    save_torch_state_dict(state, out, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    tok.save_pretrained(str(out))
    return out

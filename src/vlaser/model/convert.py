"""Original ``InternVLChatModel`` <-> transformers ``InternVLForConditionalGeneration``: keys, configs, files.

Key renames are data tables; the only tensor operation is the split (and re-fusion) of the vision
tower's ``attn.qkv``. Both directions are exact inverses, so original -> hf -> original is bit-exact.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from vlaser.errors import UserInputError
from vlaser.model.atomic import atomic_directory
from vlaser.model.checkpoint import HF, ORIGINAL, CheckpointError, CheckpointInfo, inspect_checkpoint, read_state_dict
from vlaser.model.template import DEFAULT_TEMPLATE, get_template

log = logging.getLogger(__name__)

# ---- key tables (original name -> transformers v5 name) -------------------------------------------------

_VISION_PREFIX = ("vision_model.", "model.vision_tower.")
_LAYER_PREFIX = ("encoder.layers.", "encoder.layer.")
_VISION_KEYS = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_VISION_LAYER_KEYS = {
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_PROJECTOR_KEYS = {
    "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
    "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
    "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
    "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
    "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
}
_LLM_PREFIXES = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
_QKV = ("attn.qkv.", ("attention.q_proj.", "attention.k_proj.", "attention.v_proj."))
#: Older transformers / hub ``-hf`` checkpoints use these prefixes; they are normalised before conversion.
_LEGACY_HF_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_LAYER_RE = re.compile(r"^(\d+)\.(.+)$")


def _swap_prefix(key: str, pairs, reverse: bool = False) -> str | None:
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _vision_key(rest: str, reverse: bool) -> str | None:
    """Map a vision-tower key (without its prefix) in either direction; ``None`` when unknown."""
    table = {v: k for k, v in _VISION_KEYS.items()} if reverse else _VISION_KEYS
    if rest in table:
        return table[rest]
    layer_src, layer_dst = _LAYER_PREFIX[::-1] if reverse else _LAYER_PREFIX
    if not rest.startswith(layer_src):
        return None
    m = _LAYER_RE.match(rest[len(layer_src):])
    if not m:
        return None
    inner = {v: k for k, v in _VISION_LAYER_KEYS.items()} if reverse else _VISION_LAYER_KEYS
    name = inner.get(m.group(2))
    return None if name is None else f"{layer_dst}{m.group(1)}.{name}"


def original_to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original keys to transformers' and split each fused ``attn.qkv`` into q/k/v (row blocks)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        new = _swap_prefix(key, _LLM_PREFIXES) or _PROJECTOR_KEYS.get(key)
        if new is None and key.startswith(_VISION_PREFIX[0]):
            rest = key[len(_VISION_PREFIX[0]):]
            qkv = re.fullmatch(rf"{re.escape(_LAYER_PREFIX[0])}(\d+)\.{re.escape(_QKV[0])}(weight|bias)", rest)
            if qkv:
                base = f"{_VISION_PREFIX[1]}{_LAYER_PREFIX[1]}{qkv.group(1)}."
                for part, name in zip(tensor.chunk(3, dim=0), _QKV[1]):
                    out[base + name + qkv.group(2)] = part.clone()  # own storage, so each saves alone
                continue
            mapped = _vision_key(rest, reverse=False)
            new = None if mapped is None else _VISION_PREFIX[1] + mapped
        if new is None:
            unknown.append(key)
        else:
            out[new] = tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} original-layout tensor(s) vlaser cannot map, e.g. {unknown[:5]}")
    return out


def normalize_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename older transformers-layout keys (``language_model.model.*``, ``vision_tower.*``) to v5 names."""
    return {(k if k.startswith(("model.", "lm_head.")) else _swap_prefix(k, _LEGACY_HF_PREFIXES) or k): v
            for k, v in state.items()}


def hf_to_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The exact inverse of :func:`original_to_hf_state_dict` (q/k/v are concatenated back into ``qkv``)."""
    state = normalize_hf_state_dict(state)
    projector = {v: k for k, v in _PROJECTOR_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        new = _swap_prefix(key, _LLM_PREFIXES, reverse=True) or projector.get(key)
        if new is None and key.startswith(_VISION_PREFIX[1]):
            rest = key[len(_VISION_PREFIX[1]):]
            qkv = re.fullmatch(rf"{re.escape(_LAYER_PREFIX[1])}(\d+)\.(attention\.[qkv]_proj\.)(weight|bias)", rest)
            if qkv:
                target = f"{_VISION_PREFIX[0]}{_LAYER_PREFIX[0]}{qkv.group(1)}.{_QKV[0]}{qkv.group(3)}"
                qkv_parts.setdefault(target, {})[qkv.group(2)] = tensor
                continue
            mapped = _vision_key(rest, reverse=True)
            new = None if mapped is None else _VISION_PREFIX[0] + mapped
        if new is None:
            unknown.append(key)
        else:
            out[new] = tensor
    for target, parts in qkv_parts.items():
        if set(parts) != set(_QKV[1]):
            raise CheckpointError(f"incomplete q/k/v projections for {target}: found {sorted(parts)}")
        out[target] = torch.cat([parts[name] for name in _QKV[1]], dim=0)
    if unknown:
        raise CheckpointError(f"{len(unknown)} transformers-layout tensor(s) vlaser cannot map, e.g. {unknown[:5]}")
    return out


# ---- configs -----------------------------------------------------------------------------------------------

#: Original vision_config key -> transformers InternVLVisionConfig key.
_VISION_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "norm_type": "norm_type",
    "patch_size": "patch_size",
    "num_channels": "num_channels",
    "qkv_bias": "attention_bias",
    "qk_normalization": "use_qk_norm",
    "attention_dropout": "attention_dropout",
    "dropout": "projection_dropout",
    "initializer_factor": "layer_scale_init_value",
    "initializer_range": "initializer_range",
}
#: llm_config keys that belong to the remote-code loader, not to Qwen2's config.
_LLM_JUNK = ("auto_map", "use_flash_attn", "attn_implementation", "_attn_implementation", "_name_or_path",
             "transformers_version")
#: Keys that pre-v5 configs serialised for every model (generation defaults, bookkeeping). Dropped so that,
#: e.g., a stale ``max_length: 20`` never reaches generation.
_LEGACY_CONFIG_KEYS = frozenset((
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder", "label2id", "length_penalty",
    "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_attentions", "output_hidden_states", "output_scores", "prefix", "problem_type", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict", "return_dict_in_generate", "sep_token_id",
    "suppress_tokens", "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder",
    "tokenizer_class", "top_k", "top_p", "torchscript", "typical_p", "use_bfloat16", "_attn_implementation_autoset",
    "moe_config",
))
#: Top-level original keys transformers' config has a field for (everything else is kept in ``internvl_chat``).
_TOP_MAPPED = ("architectures", "model_type", "llm_config", "vision_config", "downsample_ratio", "select_layer",
               "transformers_version", "torch_dtype", "dtype")
#: What InternVL3's tiling and prompt default to when a checkpoint does not say.
DEFAULT_CHAT_SETTINGS = {
    "template": DEFAULT_TEMPLATE,
    "ps_version": "v2",
    "dynamic_image_size": True,
    "use_thumbnail": True,
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 12,
}


def original_to_hf_config(config: dict, image_token_id: int) -> dict:
    """Translate an original ``config.json`` to a transformers ``internvl`` one.

    Settings transformers has no field for (``template``, ``system_message``, ``ps_version``, tiling, ...)
    are kept under ``internvl_chat`` so that vlaser's chat and the reverse conversion find them again.
    """
    if config.get("ps_version", "v2") != "v2":
        raise CheckpointError(
            f"ps_version={config['ps_version']!r}: only pixel-shuffle v2 (InternVL2.5/3) is supported"
        )
    vis = config["vision_config"]
    image_size = config.get("force_image_size") or vis["image_size"]
    patch = vis["patch_size"]
    ratio = config.get("downsample_ratio", 0.5)
    vision = {hf: vis[orig] for orig, hf in _VISION_CONFIG_KEYS.items() if orig in vis}
    vision.update(image_size=image_size, use_mean_pooling=True, use_absolute_position_embeddings=True)
    drop = set(_LLM_JUNK) | _LEGACY_CONFIG_KEYS
    text = {k: v for k, v in config["llm_config"].items() if k not in drop}
    text.update(tie_word_embeddings=False, use_cache=True)
    extras = {k: v for k, v in config.items() if k not in _TOP_MAPPED}
    extras["vision_config"] = {k: v for k, v in vis.items() if k not in _VISION_CONFIG_KEYS}
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "text_config": text,
        "vision_config": vision,
        "image_token_id": image_token_id,
        "image_seq_length": int((image_size // patch) ** 2 * ratio**2),
        "downsample_ratio": ratio,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.get("select_layer", -1),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "dtype": config.get("torch_dtype") or config.get("dtype") or config["llm_config"].get("torch_dtype"),
        "internvl_chat": extras,
    }


def _legacy_llm_config(text: dict) -> dict:
    """transformers 5 keeps RoPE settings in ``rope_parameters`` and the dtype in ``dtype``; InternVL's own
    code (and older readers) expect ``rope_theta``, ``rope_scaling`` and ``torch_dtype``."""
    rope = dict(text.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        text.setdefault("rope_theta", rope.pop("rope_theta"))
    if text.get("rope_scaling") is None:
        text["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    if text.get("dtype") is not None:
        text["torch_dtype"] = text.pop("dtype")
    return text


def hf_to_original_config(config: dict) -> dict:
    """Translate a transformers ``internvl`` config back to the original layout (inverse of the above)."""
    extras = dict(config.get("internvl_chat") or {})
    vis_extra = extras.pop("vision_config", None) or {"architectures": ["InternVisionModel"],
                                                      "model_type": "intern_vit_6b", "drop_path_rate": 0.0}
    vis = config["vision_config"]
    vision = {orig: vis[hf] for orig, hf in _VISION_CONFIG_KEYS.items() if hf in vis}
    size = vis.get("image_size", 448)
    vision["image_size"] = size[0] if isinstance(size, (list, tuple)) else size
    patch = vision.get("patch_size", 14)
    vision["patch_size"] = patch[0] if isinstance(patch, (list, tuple)) else patch
    vision.update(vis_extra)
    llm = _legacy_llm_config(dict(config.get("text_config") or {}))
    llm.setdefault("architectures", ["Qwen2ForCausalLM"])
    llm["tie_word_embeddings"] = False
    out = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}
    out.update({k: v for k, v in DEFAULT_CHAT_SETTINGS.items() if k not in extras})
    out["force_image_size"] = vision["image_size"]
    out.update(extras)
    out.update(
        downsample_ratio=config.get("downsample_ratio", 0.5),
        select_layer=config.get("vision_feature_layer", -1),
        llm_config=llm,
        vision_config=vision,
        torch_dtype=config.get("dtype") or config.get("torch_dtype") or llm.get("dtype") or "bfloat16",
    )
    return out


# ---- whole checkpoints ------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                    "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def save_weights(state: dict[str, torch.Tensor], dst: Path, max_shard_size: str) -> None:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({k: _own_storage(v) for k, v in state.items()}, dst, max_shard_size=max_shard_size,
                          metadata={"format": "pt"})


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` contiguous and alone in its storage: safetensors refuses a view of a larger one, which FSDP's
    gathered full state holds (a tensor whose first dimension does not divide among the processes, such as the
    ``(1, 1, C)`` class embedding, comes back as a view of its padded ``(world, 1, C)`` buffer)."""
    tensor = tensor.contiguous()
    return tensor if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size() else tensor.clone()


def convert_checkpoint(src: str | Path, dst: str | Path, to: str, max_shard_size: str = "5GB",
                       overwrite: bool = False) -> Path:
    """Write ``src`` to ``dst`` in the ``to`` layout (``"hf"`` or ``"original"``); safetensors in and out.

    The hf output loads with plain ``InternVLForConditionalGeneration.from_pretrained`` and carries a chat
    template with the ``internvl2_5`` system message; the original output keeps InternVL's file layout.
    """
    if to not in (HF, ORIGINAL):
        raise UserInputError(f"--to must be '{HF}' or '{ORIGINAL}', got {to!r}")
    info = inspect_checkpoint(src)
    dst = Path(dst)
    if dst.resolve() == info.path.resolve():
        raise UserInputError(f"destination {dst} is the source directory; choose a new directory")
    with atomic_directory(dst, overwrite) as tmp:  # a kill mid-write never leaves a checkpoint at dst
        n_tensors = _write_checkpoint(info, to, tmp, max_shard_size)
    log.info("wrote %s layout checkpoint (%d tensors) to %s", to, n_tensors, dst)
    return dst


def _write_checkpoint(info: CheckpointInfo, to: str, dst: Path, max_shard_size: str) -> int:
    """Write the converted checkpoint's files into the folder ``dst``; returns the number of tensors."""
    from vlaser.model.tokenizer import chat_generation_config, load_tokenizer, save_hf_tokenizer

    state = read_state_dict(info.path)
    tokenizer = load_tokenizer(info.path)
    if to == HF:
        config = original_to_hf_config(info.config, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")) \
            if info.layout == ORIGINAL else dict(info.config)
        state = original_to_hf_state_dict(state) if info.layout == ORIGINAL else state
    else:
        config = info.config if info.layout == ORIGINAL else hf_to_original_config(info.config)
        state = state if info.layout == ORIGINAL else hf_to_original_state_dict(state)
    save_weights(state, dst, max_shard_size)
    (dst / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for name in TOKENIZER_FILES:
        if (info.path / name).is_file():
            shutil.copy(info.path / name, dst / name)
    if to == HF:  # the chat template is written from the same ChatTemplate that vlaser's chat renders with
        chat = config.get("internvl_chat") or {}
        template = get_template(chat.get("template", DEFAULT_TEMPLATE))
        save_hf_tokenizer(tokenizer, dst, template, chat.get("system_message"))
    if (info.path / "generation_config.json").is_file():
        shutil.copy(info.path / "generation_config.json", dst / "generation_config.json")
    elif to == HF:
        chat_generation_config(tokenizer, template).save_pretrained(str(dst))
    return len(state)

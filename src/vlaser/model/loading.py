"""``load_model``: any InternVL3/Vlaser checkpoint directory (original or transformers layout) -> model, tokenizer."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

import torch
from transformers import GenerationConfig, InternVLConfig

from vlaser.errors import UserInputError
from vlaser.model.chat import InternVLChat
from vlaser.model.checkpoint import ORIGINAL, CheckpointError, inspect_checkpoint, read_state_dict
from vlaser.model.constants import IMG_CONTEXT_TOKEN
from vlaser.model.convert import normalize_hf_state_dict, original_to_hf_config, original_to_hf_state_dict
from vlaser.model.settings import ProcessorSettings
from vlaser.model.template import get_template
from vlaser.model.tokenizer import chat_generation_config, load_tokenizer

log = logging.getLogger(__name__)

def resolve_dtype(dtype: str | torch.dtype | None, config_dtype: str | None) -> torch.dtype:
    """``"auto"``/``None`` -> the checkpoint's dtype (float32 if it names none); strings like ``"bf16"`` too."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = config_dtype if dtype in (None, "auto") else dtype
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    name = aliases.get(str(name), str(name or "float32")).replace("torch.", "")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise UserInputError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _default_device(device: str | torch.device | None) -> str | torch.device:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _attn_implementation(device) -> str:
    on_gpu = str(device).startswith("cuda") or str(device) == "auto"
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_hf_config(config: dict) -> InternVLConfig:
    """A transformers ``InternVLConfig`` from a translated config dict."""
    drop = ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")
    return InternVLConfig(**{k: v for k, v in config.items() if k not in drop})


@contextlib.contextmanager
def _weights_bar(show: bool):
    """transformers' progress bars on while the weights load only when ``show``: progress is INFO, which the
    command line shows with ``-v``. Turned back on afterwards (a download bar of the hub is worth seeing)."""
    from transformers.utils import logging as hf_logging

    hide = not show and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


def load_model(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
):
    """Load an InternVL3/Vlaser checkpoint as ``(model, tokenizer)``.

    Args:
        path: a checkpoint directory in either layout (or a hub id, fetched when a network exists).
        dtype: ``"auto"`` keeps the checkpoint's dtype; or ``torch.bfloat16``, ``"float32"``, ...
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` to spread over GPUs (needs accelerate);
            default: CUDA when available.
        attn_implementation: default SDPA, or flash-attention 2 on GPU when ``flash_attn`` is installed.

    transformers' "Loading weights" bar shows only when this module's log is on at INFO (``vlaser -v``).

    The model is transformers' ``InternVLForConditionalGeneration`` with ``chat``/``batch_chat`` added;
    original-layout weights are mapped onto it in memory (no remote code, no conversion on disk). The
    checkpoint's tiling and template (``model.processor_settings``) are checked here, before the weights load.
    """
    info = inspect_checkpoint(path)
    tokenizer = load_tokenizer(info.path)
    device = _default_device(device)
    if info.layout == ORIGINAL:
        hf_dict = original_to_hf_config(info.config, tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN))
        state = original_to_hf_state_dict(read_state_dict(info.path))
    else:
        hf_dict = info.config
        state = normalize_hf_state_dict(read_state_dict(info.path))
    settings = ProcessorSettings.from_config(hf_dict, source=str(info.path / "config.json"))  # before the weights
    config_dtype = hf_dict.get("dtype") or hf_dict.get("torch_dtype")
    with _weights_bar(log.isEnabledFor(logging.INFO)):
        model, loading = InternVLChat.from_pretrained(
            None, config=build_hf_config(hf_dict), state_dict=state, dtype=resolve_dtype(dtype, config_dtype),
            device_map=device, attn_implementation=attn_implementation or _attn_implementation(device),
            output_loading_info=True,
        )
    gen_file = info.path / "generation_config.json"
    model.generation_config = (GenerationConfig.from_pretrained(str(info.path)) if gen_file.is_file()
                               else chat_generation_config(tokenizer, get_template(settings.template)))
    problems = {k: v for k, v in loading.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise CheckpointError(f"{info.path}: weights do not match the model: {problems}")
    _check_untied(model, info.path)
    if tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN) != model.config.image_token_id:
        raise CheckpointError(
            f"{info.path}: tokenizer id of {IMG_CONTEXT_TOKEN} ({tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)}) "
            f"differs from config image_token_id ({model.config.image_token_id})"
        )
    model.eval()
    log.info("loaded %s-layout checkpoint %s (%s, %s)", info.layout, info.path, model.dtype, model.device)
    log.info("processor settings: %s", settings.summary())
    return model, tokenizer


def _check_untied(model: InternVLChat, path) -> None:
    """InternVL checkpoints have separate input and output embeddings; a tied load would be silently wrong."""
    head = model.lm_head.weight
    embed = model.get_input_embeddings().weight
    if head is embed or (head.device == embed.device and head.data_ptr() == embed.data_ptr()):
        raise CheckpointError(f"{path}: lm_head got tied to the input embeddings; InternVL checkpoints are untied")

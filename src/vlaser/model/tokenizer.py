"""Tokenizer loading, and saving it with the transformers-side chat template and generation defaults."""

from __future__ import annotations

from pathlib import Path

from vlaser.model.checkpoint import CheckpointError
from vlaser.model.constants import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from vlaser.model.template import DEFAULT_TEMPLATE, ChatTemplate, get_template


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` without remote code; checks the InternVL image tokens are in the vocabulary."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer warns that `internvl_chat` is an unknown model type
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    vocab = tokenizer.get_vocab()
    stop = get_template(DEFAULT_TEMPLATE).stop_token
    missing = [t for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, stop) if t not in vocab]
    if missing:
        raise CheckpointError(f"the tokenizer in {path} lacks InternVL token(s) {missing}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    return tokenizer


def save_hf_tokenizer(tokenizer, dst: Path, template: ChatTemplate, system_message: str | None) -> None:
    """Save the tokenizer with ``template`` as its transformers chat template (``ChatTemplate.jinja``)."""
    tokenizer.chat_template = template.jinja(system_message)
    tokenizer.save_pretrained(str(dst))


def chat_generation_config(tokenizer, template: ChatTemplate):
    """Generation defaults for chat checkpoints: stop at the template's stop token, pad with the pad token."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids(template.stop_token),
                            pad_token_id=tokenizer.pad_token_id)

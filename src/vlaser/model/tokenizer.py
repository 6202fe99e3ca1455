"""Tokenizer loading and the transformers-side chat template that carries the ``internvl2_5`` system message."""

from __future__ import annotations

from pathlib import Path

from vlaser.model.checkpoint import CheckpointError
from vlaser.model.constants import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, VIDEO_TOKEN
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE


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
    missing = [t for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, "<|im_end|>") if t not in vocab]
    if missing:
        raise CheckpointError(f"the tokenizer in {path} lacks InternVL token(s) {missing}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    return tokenizer


def hf_chat_template(system_message: str | None = None) -> str:
    """A Jinja chat template rendering ``internvl2_5`` prompts for transformers' processor.

    Images render as ``<IMG_CONTEXT>\\n`` and videos as ``<video>\\n``, the placeholders transformers'
    ``InternVLProcessor`` expands; without a system turn the template's default system message is used.
    """
    system = (INTERNVL2_5_SYSTEM_MESSAGE if system_message is None else system_message).replace("'", "\\'")
    return (
        "{%- macro render(content) -%}{%- if content is string -%}{{- content -}}{%- else -%}"
        "{%- for item in content -%}{%- if item['type'] == 'image' -%}{{- '" + IMG_CONTEXT_TOKEN + "\\n' -}}"
        "{%- elif item['type'] == 'video' -%}{{- '" + VIDEO_TOKEN + "\\n' -}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{- '<|im_start|>system\\n' + render(messages[0]['content']) + '<|im_end|>\\n' -}}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{{- '<|im_start|>system\\n" + system + "<|im_end|>\\n' -}}"
        "{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + render(message['content']) + '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def save_hf_tokenizer(tokenizer, dst: Path, system_message: str | None) -> None:
    """Save the tokenizer with the internvl2_5 chat template for the transformers layout."""
    tokenizer.chat_template = hf_chat_template(system_message)
    tokenizer.save_pretrained(str(dst))


def chat_generation_config(tokenizer):
    """Generation defaults for chat checkpoints: stop at ``<|im_end|>``, pad with the tokenizer's pad token."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            pad_token_id=tokenizer.pad_token_id)

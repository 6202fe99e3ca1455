"""Which parameters train: InternVL's freezing flags and LoRA on the vision tower and/or language model.

Differences from the original, both documented in the README: ``--unfreeze_lm_head`` really makes
``lm_head`` trainable (the original set an attribute on the module and changed nothing), and vision LoRA
adapts q, k and v separately because transformers' vision tower has no fused ``qkv``.
"""

from __future__ import annotations

import logging

from vlaser.errors import require
from vlaser.train.args import ModelArguments

log = logging.getLogger(__name__)

LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")


def _set(module, trainable: bool) -> None:
    for param in module.parameters():
        param.requires_grad = trainable


def apply_freezing(model, args: ModelArguments) -> None:
    """``--freeze_llm`` (with ``lm_head``), ``--unfreeze_lm_head``, ``--freeze_backbone``,
    ``--unfreeze_vit_layers`` (layers ``[k:]``), ``--freeze_mlp``, applied in InternVL's order."""
    inner = model.model
    if args.freeze_backbone:
        _set(inner.vision_tower, False)
    if args.freeze_llm:
        _set(inner.language_model, False)
        _set(model.lm_head, False)
    if args.unfreeze_lm_head:
        _set(model.lm_head, True)
    if args.freeze_mlp:
        _set(inner.multi_modal_projector, False)
    if args.unfreeze_vit_layers:
        for layer in inner.vision_tower.encoder.layer[args.unfreeze_vit_layers:]:
            _set(layer, True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %d of %d", trainable, sum(p.numel() for p in model.parameters()))


def _inject(module, rank: int, targets: tuple[str, ...]) -> None:
    peft = require("peft", "train", "LoRA (--use_backbone_lora / --use_llm_lora)")
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=list(targets))
    peft.inject_adapter_in_model(config, module)
    for name, param in module.named_parameters():  # like get_peft_model on this part: only adapters train
        param.requires_grad = "lora_" in name


def apply_lora(model, args: ModelArguments):
    """``--use_backbone_lora r`` / ``--use_llm_lora r``: rank r, alpha 2r, dropout 0.05, as in InternVL."""
    if args.use_backbone_lora:
        _inject(model.model.vision_tower, args.use_backbone_lora, VISION_LORA_TARGETS)
    if args.use_llm_lora:
        _inject(model.model.language_model, args.use_llm_lora, LLM_LORA_TARGETS)
    return model


def merge_lora(model):
    """Fold every LoRA adapter into its base weight and put the plain layer back (for saving)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model

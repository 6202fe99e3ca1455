"""``SFTTrainer``: transformers' Trainer with InternVL's loss inputs, per-module learning rates, skip counts.

Only public hooks are overridden (``compute_loss``, ``create_optimizer``, ``get_optimizer_cls_and_kwargs``,
``_get_train_sampler``, ``log``); DeepSpeed, FSDP, mixed precision, accumulation, checkpointing and resuming
are the engine's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping

import torch
from torch.utils.data import WeightedRandomSampler
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.training_args import OptimizerNames

log = logging.getLogger(__name__)

#: Parameter-name fragments of the three parts whose learning rates can differ.
VISION, PROJECTOR = "vision_tower", "multi_modal_projector"


class PartsTrainer(Trainer):
    """The Trainer with a learning rate per part of the model: ``part_lrs`` maps a parameter-name fragment to its
    rate (None: the base ``learning_rate``); the first fragment a name contains decides. AdamW groups are
    (rate) x (decay / no decay). SFT's parts are the vision tower and the projector, the VLA's the action expert."""

    def __init__(self, *args, part_lrs: Mapping[str, float | None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.part_lrs = dict(part_lrs or {})

    def learning_rate_of(self, name: str) -> float:
        part = next((part for part in self.part_lrs if part in name), None)
        rate = None if part is None else self.part_lrs[part]
        return self.args.learning_rate if rate is None else rate

    def create_optimizer(self, model=None):
        if self.optimizer is not None or all(rate is None for rate in self.part_lrs.values()):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                key = (self.learning_rate_of(name), self.args.weight_decay if name in decay else 0.0)
                groups.setdefault(key, []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(
            [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()], **optimizer_kwargs
        )
        return self.optimizer


class SFTTrainer(PartsTrainer):
    def __init__(self, *args, loss_reduction: str = "token", loss_impl: str = "chunked",
                 vision_lr: float | None = None, mlp_lr: float | None = None, lengths: list[int] | None = None,
                 sample_weights: list[float] | None = None, initial_skips=(), **kwargs):
        super().__init__(*args, part_lrs={VISION: vision_lr, PROJECTOR: mlp_lr}, **kwargs)
        self.loss_reduction, self.vision_lr, self.mlp_lr, self.lengths = loss_reduction, vision_lr, mlp_lr, lengths
        self.sample_weights, self.loss_impl = sample_weights, loss_impl
        self.skips: dict[tuple[str, str, int], str] = {}  # (dataset, file, line) -> reason: each sample once
        self._record_skips(initial_skips)
        self._tokens, self._clock = 0, time.perf_counter()
        # the loss is a per-micro-batch mean, as in InternVL: the Trainer divides it by the accumulation steps
        self.model_accepts_loss_kwargs = False

    def _record_skips(self, skips) -> None:
        for skip in skips:
            self.skips.setdefault((skip.dataset, skip.file, skip.line), skip.reason)

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per dataset so far (each sample counted once, however often it was drawn)."""
        return dict(Counter(dataset for dataset, _, _ in self.skips))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._record_skips(inputs.pop("skipped", []))
        self._tokens += int(inputs.pop("n_tokens"))
        outputs = model(**inputs, loss_reduction=self.loss_reduction, loss_impl=self.loss_impl)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        """The Trainer's choice, with ``adamw_torch`` fused on CUDA (one kernel per step, not one per tensor)."""
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if args.optim == OptimizerNames.ADAMW_TORCH and args.device.type == "cuda":
            optimizer_kwargs["fused"] = True
        return optimizer_cls, optimizer_kwargs

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is not None:  # --use_data_resampling
            generator = torch.Generator().manual_seed(self.args.seed)
            return WeightedRandomSampler(self.sample_weights, num_samples=len(self.sample_weights), replacement=True,
                                         generator=generator)
        if self.args.train_sampling_strategy == "group_by_length" and self.lengths is not None:
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=self.lengths)
        return super()._get_train_sampler(train_dataset)

    def log(self, logs: dict, *args, **kwargs) -> None:
        elapsed = time.perf_counter() - self._clock
        if "loss" in logs and elapsed > 0:
            logs["tokens_per_second"] = round(self._tokens / elapsed, 1)
            logs["skipped_samples"] = len(self.skips)
            self._tokens, self._clock = 0, time.perf_counter()
        super().log(logs, *args, **kwargs)


def decoder_layers(model) -> list:
    """The language model's decoder layers (transformers' ``GradientCheckpointingLayer`` modules)."""
    return list(model.model.language_model.layers)


def checkpoint_every(model, every: int) -> None:
    """Recompute every ``every``-th decoder layer in backward (0: none, 1: all); the rest keep activations."""
    if every <= 0:
        model.gradient_checkpointing_disable()
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = i % every == 0


def compile_decoder_layers(model) -> None:
    """``torch.compile`` each decoder layer in place (fuses norms, rotary, SwiGLU; the model stays eager)."""
    for layer in decoder_layers(model):
        layer.compile()

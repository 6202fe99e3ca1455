"""``train_vla``: the VLA on transformers' Trainer (the engine vlaser's SFT uses): separate learning rates for the
backbone and the expert, warm-up, gradient clipping, bf16, DeepSpeed/FSDP configs and resuming are the Trainer's.

The release trains the whole VLM with the expert (open-pi-zero found an expert-only run does not work), LR 5e-5
for both, clip 1.0; its warm-up is unknown (open-pi-zero's default 200 steps, constant afterwards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import Trainer

from vlaser.errors import UserInputError
from vlaser.vla.config import VLAConfig
from vlaser.vla.policy import VLAPolicy
from vlaser.vla.train_args import VLATrainArguments

log = logging.getLogger(__name__)
EXPERT_PREFIX = "expert."


class VLATrainer(Trainer):
    """The Trainer with the flow-matching loss and two AdamW learning rates (backbone, expert)."""

    def __init__(self, *args, expert_learning_rate: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.expert_learning_rate = expert_learning_rate
        self.model_accepts_loss_kwargs = False  # the loss is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        expert_lr = self.args.learning_rate if self.expert_learning_rate is None else self.expert_learning_rate
        groups: dict[tuple[float, float], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                lr = expert_lr if name.startswith(EXPERT_PREFIX) else self.args.learning_rate
                groups.setdefault((lr, self.args.weight_decay if name in decay else 0.0), []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                                       **optimizer_kwargs)
        return self.optimizer


def _policy(args: VLATrainArguments) -> VLAPolicy:
    source = Path(args.vlm)
    if (source / "action_expert.safetensors").is_file():
        return VLAPolicy.from_pretrained(source)
    return VLAPolicy.from_vlm(source, args.vla_config(), seed=args.seed)


def _dataset(args: VLATrainArguments, config: VLAConfig):
    """The LeRobot v3.0 dataset of ``args.dataset`` as action chunks, and its normaliser."""
    if args.dataset is None:
        raise UserInputError("no training data: set dataset (a LeRobot v3.0 directory) or pass dataset=")
    from vlaser.vla.data import ActionChunkDataset, LeRobotDataset, Normalizer
    from vlaser.vla.data.augment import ImageAugmentation

    data = LeRobotDataset(args.dataset)
    normalizer = Normalizer(data.stats, mode=args.normalization, gripper_dims=args.gripper_dims)
    cameras = args.cameras.split(",") if isinstance(args.cameras, str) else args.cameras  # a CLI flag: a,b
    chunks = ActionChunkDataset(data, config.chunk_size, normalizer, cameras=cameras,
                                padded_actions=args.padded_actions,
                                augment=ImageAugmentation() if args.augment_images else None)
    return chunks, normalizer.to_json()


def _freeze(policy: VLAPolicy, args: VLATrainArguments) -> None:
    vlm = policy.model.vlm
    for module, frozen in ((vlm, args.freeze_vlm), (vlm.model.vision_tower, args.freeze_vision)):
        if frozen:
            for p in module.parameters():
                p.requires_grad = False
    if args.freeze_text_embeddings:
        vlm.get_input_embeddings().weight.requires_grad = False


def train_vla(args: VLATrainArguments | dict[str, Any], dataset=None, norm_stats: dict | None = None,
              callbacks: list | None = None) -> Path:
    """Train a VLA and save it to ``args.output_dir`` (see :class:`VLAPolicy` for the layout); returns the folder.

    ``dataset``: any map-style dataset of ActionChunkDataset items (then ``norm_stats`` is the dict written to
    ``norm_stats.json``); by default the LeRobot dataset at ``args.dataset``.
    """
    if isinstance(args, dict):
        args = VLATrainArguments.from_dict(args)
    policy = _policy(args)
    if dataset is None:
        dataset, norm_stats = _dataset(args, policy.config)
    _freeze(policy, args)
    trainer = VLATrainer(model=policy.model, args=args.training_arguments(), train_dataset=dataset,
                         data_collator=policy.collator, callbacks=callbacks,
                         expert_learning_rate=args.expert_learning_rate)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    from vlaser.train.saving import gathered_state_dict

    state = gathered_state_dict(trainer)
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        policy.save_pretrained(out, norm_stats=norm_stats if norm_stats is not None else policy.norm_stats,
                               state_dict=state)
    trainer.accelerator.wait_for_everyone()
    log.info("saved the VLA policy to %s", out)
    return out

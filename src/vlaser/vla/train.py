"""``train_vla``: the VLA on transformers' Trainer (the engine vlaser's SFT uses): separate learning rates for the
backbone and the expert, warm-up, gradient clipping, bf16, DeepSpeed/FSDP configs and resuming are the Trainer's.

The release trains the whole VLM with the expert (open-pi-zero found an expert-only run does not work), LR 5e-5
for both, clip 1.0; its warm-up is unknown (open-pi-zero's default 200 steps, constant afterwards).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments

from vlaser.errors import UserInputError
from vlaser.vla.config import VLAConfig, preset
from vlaser.vla.policy import VLAPolicy

log = logging.getLogger(__name__)
EXPERT_PREFIX = "expert."


@dataclass
class VLATrainArguments:
    """What ``train_vla`` needs; every field can come from a dict, a YAML/JSON config or CLI flags."""

    vlm: str  # a Vlaser/InternVL3 checkpoint directory (or a VLA policy directory to continue from)
    output_dir: str
    dataset: str | None = None  # a LeRobot v3.0 dataset directory (or pass dataset= to train_vla)
    preset: str = "vlaser_2b_bridge"
    config: dict[str, Any] = field(default_factory=dict)  # VLAConfig fields overriding the preset
    normalization: str = "quantile"  # quantile (the release's), mean_std or min_max
    # per key, the dimensions left unnormalised (None: the action's gripper, as released; {}: none)
    gripper_dims: dict[str, list[int]] | None = None
    learning_rate: float = 5e-5  # the backbone's
    expert_learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_scheduler_type: str = "constant_with_warmup"
    max_grad_norm: float = 1.0
    max_steps: int = -1
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    deepspeed: str | None = None
    fsdp: str = ""
    fsdp_config: str | None = None
    freeze_vlm: bool = False
    freeze_vision: bool = False
    # the release's choices, off by default (the recipes select them; docs/vla.md, "Release fidelity")
    freeze_text_embeddings: bool = False  # the release trains with the VLM's token embeddings frozen
    cameras: list[str] | None = None  # camera keys to train on (None: every camera; the release: the primary only)
    augment_images: bool = False  # Octo's random resized crop and colour jitter on training frames (the release's)
    padded_actions: str = "mask"  # chunk steps past an episode's end: "mask" (no loss) or "repeat" (the release's)
    logging_steps: int = 10
    save_strategy: str = "steps"  # "no": only the final policy is written
    save_steps: int = 500
    save_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    dataloader_num_workers: int = 0
    seed: int = 0
    report_to: str = "none"
    disable_tqdm: bool = False

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str = "VLA training config") -> VLATrainArguments:
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserInputError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
        missing = [f.name for f in fields if f.name not in obj
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserInputError(f"{where}: missing {', '.join(missing)}")
        return cls(**obj)

    def vla_config(self) -> VLAConfig:
        return preset(self.preset, **self.config)

    def training_arguments(self) -> TrainingArguments:
        return TrainingArguments(
            output_dir=self.output_dir, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps, lr_scheduler_type=self.lr_scheduler_type, max_grad_norm=self.max_grad_norm,
            max_steps=self.max_steps, num_train_epochs=self.num_train_epochs,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, bf16=self.bf16,
            deepspeed=self.deepspeed, fsdp=self.fsdp, fsdp_config=self.fsdp_config, logging_steps=self.logging_steps,
            save_strategy=self.save_strategy, save_steps=self.save_steps, save_total_limit=self.save_total_limit,
            seed=self.seed,
            dataloader_num_workers=self.dataloader_num_workers, remove_unused_columns=False, report_to=self.report_to,
            disable_tqdm=self.disable_tqdm,
        )


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

"""``VLATrainArguments``: what ``vlaser vla train`` takes, in a module that imports neither torch nor transformers,
so the command line builds its flags (and answers ``--help``) at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlaser.errors import UserInputError
from vlaser.vla.config import VLAConfig, preset

if TYPE_CHECKING:
    from transformers import TrainingArguments


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
        from transformers import TrainingArguments

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

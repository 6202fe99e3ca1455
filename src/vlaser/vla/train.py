"""``train_vla``: the VLA on transformers' Trainer (the engine vlaser's SFT uses): separate learning rates for the
backbone and the expert, warm-up, gradient clipping, bf16, DeepSpeed/FSDP configs and resuming are the Trainer's.

The release trains the whole VLM with the expert (open-pi-zero found an expert-only run does not work), LR 5e-5
for both, clip 1.0; its warm-up is unknown (open-pi-zero's default 200 steps, constant afterwards).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError
from vlaser.train.trainer import PartsTrainer
from vlaser.vla.config import VLAConfig
from vlaser.vla.policy import CONFIG_FILE, EXPERT_FILE, VLAPolicy
from vlaser.vla.train_args import VLATrainArguments, build_parser, parse_args

__all__ = ["VLATrainArguments", "VLATrainer", "build_parser", "parse_args", "train_vla"]

log = logging.getLogger(__name__)
EXPERT_PREFIX = "expert."


class VLATrainer(PartsTrainer):
    """The Trainer with the flow-matching loss; AdamW groups by part (backbone, expert), as SFT's."""

    def __init__(self, *args, expert_learning_rate: float | None = None, **kwargs) -> None:
        super().__init__(*args, part_lrs={EXPERT_PREFIX: expert_learning_rate}, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def _checked_config(args: VLATrainArguments, data) -> VLAConfig:
    """The VLA config (the preset's, or the policy's to continue) fitted to the backbone and the dataset, and the
    prompts checked against ``prefix_len``: all before any weights load (see ``vla.checks``)."""
    from vlaser.model.tokenizer import load_tokenizer
    from vlaser.vla.checks import check_prefix, fit_backbone, fit_dataset, read_backbone
    from vlaser.vla.collate import VLACollator

    source = Path(args.vlm)
    continued = (source / EXPERT_FILE).is_file()
    config = VLAConfig.load(source / CONFIG_FILE) if continued else args.vla_config()
    backbone = read_backbone(source)
    config = fit_backbone(config, backbone)
    if data is not None:
        config = fit_dataset(config, data, args.cameras)
        collator = VLACollator(load_tokenizer(backbone.path), config, backbone.image_tokens)
        check_prefix(config, collator, list(data.tasks), len(config.cameras))
    return config


def _policy(args: VLATrainArguments, config: VLAConfig) -> VLAPolicy:
    source = Path(args.vlm)
    if (source / EXPERT_FILE).is_file():
        return VLAPolicy.from_pretrained(source, config=config)
    return VLAPolicy.from_vlm(source, config, seed=args.seed)


def _dataset(args: VLATrainArguments, config: VLAConfig, data=None):
    """The LeRobot v3.0 dataset (``data``, or the one at ``args.dataset``) as action chunks, and its normaliser's
    statistics."""
    from vlaser.vla.data import ActionChunkDataset, LeRobotDataset, Normalizer
    from vlaser.vla.data.augment import ImageAugmentation

    data = LeRobotDataset(args.dataset) if data is None else data

    normalizer = Normalizer(data.stats, mode=args.normalization, gripper_dims=args.gripper_dims)
    chunks = ActionChunkDataset(data, config.chunk_size, normalizer, cameras=args.cameras,
                                padded_actions=args.padded_actions,
                                augment=ImageAugmentation() if args.augment_images else None)
    return chunks, normalizer.to_json()


def _freeze(policy: VLAPolicy, args: VLATrainArguments) -> None:
    """``freeze_vlm`` / ``freeze_vision`` as SFT's freezing flags (one implementation: ``train.freezing``)."""
    from vlaser.train.args import ModelArguments
    from vlaser.train.freezing import apply_freezing

    whole = args.freeze_vlm
    apply_freezing(policy.model.vlm, ModelArguments(model_name_or_path=args.vlm, freeze_llm=whole, freeze_mlp=whole,
                                                    freeze_backbone=whole or args.freeze_vision))
    if args.freeze_text_embeddings:
        policy.model.vlm.get_input_embeddings().weight.requires_grad = False


def _keep_sim_record(args: VLATrainArguments, out: Path) -> None:
    """A simulator dataset's record (``meta/sim.json``: how its images were rendered) goes with the policy, so
    closed-loop evaluation renders the same way."""
    record = Path(args.dataset) / "meta" / "sim.json" if args.dataset else None
    if record is not None and record.is_file():
        shutil.copyfile(record, out / "sim.json")


def train_vla(args: VLATrainArguments | dict[str, Any], dataset=None, norm_stats: dict | None = None,
              callbacks: list | None = None) -> Path:
    """Train a VLA and save it to ``args.output_dir`` (see :class:`VLAPolicy` for the layout); returns the folder.

    ``dataset``: any map-style dataset of ActionChunkDataset items (then ``norm_stats`` is the dict written to
    ``norm_stats.json``); by default the LeRobot dataset at ``args.dataset``.
    """
    if isinstance(args, dict):
        args = VLATrainArguments.from_dict(args)
    data = None
    if dataset is None:
        if args.dataset is None:
            raise UserInputError("no training data: set dataset (a LeRobot v3.0 directory) or pass dataset=")
        from vlaser.vla.data import LeRobotDataset

        data = LeRobotDataset(args.dataset)
    policy = _policy(args, _checked_config(args, data))
    if data is not None:
        dataset, norm_stats = _dataset(args, policy.config, data)
    _freeze(policy, args)
    trainer = VLATrainer(model=policy.model, args=args, train_dataset=dataset, data_collator=policy.collator,
                         callbacks=callbacks, expert_learning_rate=args.expert_learning_rate)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    from vlaser.train.saving import gathered_state_dict

    state = gathered_state_dict(trainer)
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        policy.save_pretrained(out, norm_stats=norm_stats if norm_stats is not None else policy.norm_stats,
                               state_dict=state)
        _keep_sim_record(args, out)
    trainer.accelerator.wait_for_everyone()
    log.info("saved the VLA policy to %s", out)
    return out

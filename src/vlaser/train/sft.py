"""The SFT recipe, top to bottom: arguments -> model -> freezing/LoRA -> data -> Trainer -> save.

``vlaser train`` accepts the flags of InternVL's ``internvl_chat_finetune.py`` (and every transformers
``TrainingArguments`` flag), so the Vlaser shell scripts run with ``vlaser train`` in its place.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlaser.data.collator import SFTCollator
from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.data.meta import check_datasets
from vlaser.data.packing import PackedCollator, PackedSFTDataset
from vlaser.errors import UserInputError
from vlaser.model.checkpoint import inspect_checkpoint
from vlaser.model.loading import load_model
from vlaser.model.packed_attention import use_packed_attention
from vlaser.train.args import DataTrainingArguments, ModelArguments, parse_args, processor_settings
from vlaser.train.freezing import apply_freezing, apply_lora, merge_lora
from vlaser.train.saving import check_output_dir, save_final, umask_callback
from vlaser.train.trainer import SFTTrainer, checkpoint_every, compile_decoder_layers

log = logging.getLogger(__name__)


def data_config(model, data_args: DataTrainingArguments, seed: int = 0) -> DataConfig:
    """The dataset settings for this model, checked against what the checkpoint was built with."""
    image_size = int(model.config.vision_config.image_size[0])
    if data_args.force_image_size != image_size:
        raise UserInputError(f"--force_image_size {data_args.force_image_size} but the checkpoint's tiles are "
                             f"{image_size}")
    if abs(data_args.down_sample_ratio - model.config.downsample_ratio) > 1e-9:
        raise UserInputError(f"--down_sample_ratio {data_args.down_sample_ratio} but the checkpoint uses "
                             f"{model.config.downsample_ratio}")
    return DataConfig(
        num_image_token=model.num_image_token, force_image_size=image_size, conv_style=data_args.conv_style,
        max_seq_length=data_args.max_seq_length, dynamic_image_size=data_args.dynamic_image_size,
        use_thumbnail=data_args.use_thumbnail, min_dynamic_patch=data_args.min_dynamic_patch,
        max_dynamic_patch=data_args.max_dynamic_patch, min_num_frame=data_args.min_num_frame,
        max_num_frame=data_args.max_num_frame, seed=seed,
    )


def _record_settings(model, model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Write the run's template and tiling into the config, as InternVL's script does, so they are saved
    and ``model.processor_settings`` (hence ``VLM``/``vlaser chat`` with the trained model) uses them."""
    settings = dict(getattr(model.config, "internvl_chat", None) or {})
    settings.update(processor_settings(data_args).to_config(), ps_version=model_args.ps_version)
    model.config.internvl_chat = settings
    model.config.vision_feature_layer = model_args.vision_select_layer
    model.config.text_config.use_cache = False


def train(argv: list[str], callbacks: list | None = None) -> Path:
    """Run one SFT job; returns the directory of the final checkpoint.

    ``callbacks`` are transformers ``TrainerCallback``s (the quickstart's time budget and learning curve).
    """
    from transformers import set_seed

    model_args, data_args, args = parse_args(argv)
    args.remove_unused_columns = False  # image_flags and skip records must reach compute_loss
    set_seed(args.seed)
    source = inspect_checkpoint(model_args.model_name_or_path)
    specs = check_datasets(data_args.meta_path)  # every input and the output checked before the weights load
    check_output_dir(args.output_dir)
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    model, tokenizer = load_model(source.path, dtype=dtype, device="cpu")
    tokenizer.model_max_length = data_args.max_seq_length
    _record_settings(model, model_args, data_args)
    apply_freezing(model, model_args)
    if model_args.grad_checkpoint:
        checkpoint_every(model, model_args.grad_checkpoint_every)  # the Trainer's flag would enable every layer
    if model_args.compile_layers:
        compile_decoder_layers(model)
    model = apply_lora(model, model_args)

    dataset = SFTDataset(data_args.meta_path, tokenizer, data_config(model, data_args, args.seed), specs)
    load_skips = dataset.load_skips
    lengths = None
    weights = dataset.resampling_weights() if data_args.use_data_resampling else None
    if data_args.use_packed_ds:
        dataset = PackedSFTDataset(dataset, data_args.max_packed_tokens, data_args.num_images_expected,
                                   data_args.loss_reduction, data_args.max_buffer_size, args.seed, weights)
        collator = PackedCollator(tokenizer.pad_token_id)
        log.info("packed rows use %s attention", use_packed_attention(model))
        args.accelerator_config.dispatch_batches = False  # every process iterates the same stream, keeps its share
    else:
        collator = SFTCollator(tokenizer.pad_token_id)
        if args.train_sampling_strategy == "group_by_length":
            lengths = dataset.estimated_lengths()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        processing_class=tokenizer, loss_reduction=data_args.loss_reduction, loss_impl=data_args.loss,
        vision_lr=model_args.vision_lr,
        mlp_lr=model_args.mlp_lr, lengths=lengths, sample_weights=None if data_args.use_packed_ds else weights,
        initial_skips=load_skips, callbacks=[*(callbacks or []), umask_callback()],
    )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.skips:
        log.warning("skipped samples per dataset: %s", trainer.skip_counts())
    out = Path(args.output_dir)
    trainer.model = merge_lora(trainer.model)
    save_final(trainer, tokenizer, out, layout=model_args.save_format or source.layout, source=source.path)
    return out

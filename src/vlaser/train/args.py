"""The fine-tune arguments under InternVL's names, plus every transformers ``TrainingArguments`` flag.

InternVL's shell scripts were written for transformers 4.37; the few ``TrainingArguments`` spellings that
changed since are translated here, in one table, before parsing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vlaser.data.config import DataConfig
from vlaser.errors import UserInputError, require

log = logging.getLogger(__name__)
_DATA = DataConfig()  # the one copy of the data defaults


@dataclass
class ModelArguments:
    """What to train and which parts (InternVL's ``ModelArguments``)."""

    _argument_group_name = "model (InternVL's ModelArguments)"  # the section of `vlaser train --help`
    model_name_or_path: str = field(metadata={"help": "checkpoint directory, original or transformers layout"})
    freeze_llm: bool = field(default=False, metadata={"help": "freeze the language model (incl. lm_head)"})
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the vision tower"})
    freeze_mlp: bool = field(default=False, metadata={"help": "freeze the projector (mlp1)"})
    unfreeze_vit_layers: int = field(default=0, metadata={"help": "train vision layers [k:] (-2: the last two)"})
    vision_select_layer: int = field(default=-1, metadata={"help": "vision layer whose features are used"})
    use_backbone_lora: int = field(default=0, metadata={"help": "LoRA rank for the vision tower (0: off)"})
    use_llm_lora: int = field(default=0, metadata={"help": "LoRA rank for the language model (0: off)"})
    unfreeze_lm_head: bool = field(default=False, metadata={"help": "train lm_head even with --freeze_llm"})
    grad_checkpoint: bool = field(default=True, metadata={"help": "gradient checkpointing in the language model"})
    grad_checkpoint_every: int = field(default=1, metadata={"help": "with --grad_checkpoint: recompute every k-th "
                                                                    "decoder layer only (1: all)"})
    compile_layers: bool = field(default=False, metadata={"help": "torch.compile each decoder layer"})
    drop_path_rate: float = field(default=0.0, metadata={"help": "accepted for compatibility; must be 0"})
    ps_version: str = field(default="v2", metadata={"help": "pixel shuffle version; only v2 is supported"})
    use_fast_tokenizer: bool = field(default=False, metadata={"help": "accepted for compatibility"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    mlp_lr: float | None = field(default=None, metadata={"help": "learning rate of the projector"})
    save_format: str | None = field(default=None, metadata={"help": "original or hf (default: the input's layout)"})


@dataclass
class DataTrainingArguments:
    """The data flags of InternVL's ``DataTrainingArguments``; the defaults they share with ``DataConfig``
    are read from it (InternVL's: no dynamic tiling, no thumbnail unless the flags turn them on).

    The tiling flags and ``conv_style`` are written into the saved checkpoint's config, so inference with the
    trained model tiles images as training did.
    """

    _argument_group_name = "data (InternVL's DataTrainingArguments)"

    meta_path: str = field(metadata={"help": "meta JSON listing the JSONL datasets"})
    conv_style: str = field(default=_DATA.conv_style, metadata={"help": "conversation template"})
    max_seq_length: int = field(default=_DATA.max_seq_length, metadata={"help": "longest tokenised sample"})
    force_image_size: int = field(default=_DATA.force_image_size,
                                  metadata={"help": "tile size; must match the checkpoint"})
    down_sample_ratio: float = field(default=0.5, metadata={"help": "pixel shuffle ratio; must match"})
    dynamic_image_size: bool = field(default=_DATA.dynamic_image_size, metadata={"help": "dynamic tiling"})
    use_thumbnail: bool = field(default=_DATA.use_thumbnail,
                                metadata={"help": "add a thumbnail tile to multi-tile images"})
    min_dynamic_patch: int = field(default=_DATA.min_dynamic_patch, metadata={"help": "fewest tiles per image"})
    max_dynamic_patch: int = field(default=_DATA.max_dynamic_patch, metadata={"help": "most tiles per image"})
    min_num_frame: int = field(default=_DATA.min_num_frame, metadata={"help": "fewest frames sampled from a video"})
    max_num_frame: int = field(default=_DATA.max_num_frame, metadata={"help": "most frames sampled from a video"})
    normalize_type: str = field(default="imagenet", metadata={"help": "only imagenet (InternVL3)"})
    pad2square: bool = field(default=False, metadata={"help": "accepted for compatibility; must be False"})
    use_data_resampling: bool = field(default=False, metadata={"help": "draw datasets in proportion to sqrt(size)"})
    use_packed_ds: bool = field(default=False, metadata={"help": "pack several samples per row (needs --max_steps)"})
    max_packed_tokens: int = field(default=8192, metadata={"help": "tokens per packed row"})
    num_images_expected: int = field(default=40, metadata={"help": "tiles per packed row"})
    max_buffer_size: int = field(default=20, metadata={"help": "open packs kept while filling"})
    loss_reduction: str = field(default="token", metadata={"help": "token, sample or square"})
    loss: str = field(default="chunked", metadata={"help": "chunked (no full-vocabulary logits) or plain"})


#: transformers 4.37 TrainingArguments spellings -> today's (value translation where needed).
_LEGACY_FLAGS = {
    "--evaluation_strategy": "--eval_strategy",
    "--warmup_ratio": "--warmup_steps",  # a float in [0, 1) is a ratio today
}
_DROPPED_FLAGS = {"--overwrite_output_dir"}  # output directories are always overwritten today


def translate_legacy(argv: list[str]) -> list[str]:
    """Rewrite 4.37-era flags (``--evaluation_strategy``, ``--group_by_length True``, ...) to today's names."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        takes_value = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = inline if eq else (argv[i + 1] if takes_value else "True")
        step = 1 if eq or not takes_value else 2
        if name in _DROPPED_FLAGS:
            log.info("ignoring %s (no longer a transformers flag)", name)
        elif name == "--group_by_length":
            if value.lower() in ("true", "1", "yes"):
                out += ["--train_sampling_strategy", "group_by_length"]
        elif name in _LEGACY_FLAGS:
            out += [_LEGACY_FLAGS[name], value]
        else:
            out += argv[i:i + step]
        i += step
    return out


def read_config(path: Path):
    """A YAML/JSON file's values; a syntax error names the file."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise UserInputError(f"{path}: not valid JSON ({e})") from e
    yaml = require("yaml", "train", "a YAML training config", package="pyyaml")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserInputError(f"{path}: not valid YAML ({e})") from e


def _file_flags(path: Path) -> list[str]:
    """A YAML/JSON config file as command-line flags."""
    values = read_config(path)
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: expected a mapping of flag names to values")
    flags = []
    for key, value in values.items():
        if value is False and key.endswith("_strategy"):
            value = "no"  # YAML reads `save_strategy: no` as a boolean
        flags += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def arguments_parser(dataclass_types, prog: str | None, usage: str, description: str, epilog: str | None = None,
                     allow_abbrev: bool = True):
    """An ``HfArgumentParser`` of ``dataclass_types`` whose usage errors (a bad value, a missing flag) raise
    vlaser's one-line ``UserInputError``; ``vlaser train`` and ``vlaser vla train`` are read by it."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):
            raise UserInputError(message)

    return Parser(dataclass_types, prog=prog, usage=usage, description=description, epilog=epilog,
                  allow_abbrev=allow_abbrev)


def with_config_file(argv: list[str]) -> list[str]:
    """``argv`` with a YAML/JSON file given first replaced by its values as flags (the flags after it win)."""
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        return _file_flags(Path(argv[0])) + list(argv[1:])
    return list(argv)


def build_parser(prog: str | None = None):
    """The parser of every flag ``vlaser train`` accepts, with its help: InternVL's model and data flags, then
    every transformers ``TrainingArguments`` flag (the 4.37-era spellings are translated before parsing)."""
    from transformers import TrainingArguments

    legacy = ", ".join(f"{old} -> {new}" for old, new in _LEGACY_FLAGS.items())
    return arguments_parser(
        (ModelArguments, DataTrainingArguments, TrainingArguments), prog=prog,
        usage=f"{prog or 'vlaser train'} [CONFIG.yaml|CONFIG.json] [--FLAG VALUE ...]",
        description="Second-stage SFT with the flags of InternVL's internvl_chat_finetune.py and transformers' "
                    "TrainingArguments. A YAML/JSON file given first supplies flag values; flags after it override "
                    "them. Run under torchrun for several processes.",
        epilog=f"Older transformers spellings are accepted: {legacy}, --group_by_length True -> "
               f"--train_sampling_strategy group_by_length; {', '.join(sorted(_DROPPED_FLAGS))} is ignored.",
    )


def parse_args(argv: list[str]):
    """``(ModelArguments, DataTrainingArguments, TrainingArguments)`` from flags, or from a YAML/JSON file
    given first, whose values the flags after it override."""
    parser = build_parser()
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(
            args=translate_legacy(with_config_file(argv)))
    except ValueError as e:  # unknown flags, or TrainingArguments refusing a combination of them
        raise UserInputError(str(e)) from e
    _validate(model_args, data_args, training_args)
    return model_args, data_args, training_args


def _validate(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> None:
    problems = []
    if data_args.use_packed_ds and training_args.max_steps <= 0:
        problems.append("--use_packed_ds streams packs without an epoch length: set --max_steps")
    if model_args.ps_version != "v2":
        problems.append("--ps_version: only v2 (InternVL2.5/3) is supported")
    if model_args.drop_path_rate:
        problems.append("--drop_path_rate: transformers' InternVL vision tower has no drop path; use 0")
    if data_args.normalize_type != "imagenet":
        problems.append("--normalize_type: InternVL3 uses imagenet normalisation")
    if data_args.pad2square:
        problems.append("--pad2square: not used by InternVL3; use False")
    if data_args.loss_reduction not in ("token", "sample", "square"):
        problems.append("--loss_reduction must be token, sample or square")
    if model_args.grad_checkpoint_every < 1:
        problems.append("--grad_checkpoint_every must be at least 1")
    if data_args.loss not in ("chunked", "plain"):
        problems.append("--loss must be chunked or plain")
    if model_args.save_format not in (None, "original", "hf"):
        problems.append("--save_format must be original or hf")
    if training_args.fsdp and training_args.device.type == "cpu":  # accelerate would drop it without a word
        problems.append("--fsdp: accelerate shards with FSDP on GPUs only; on the CPU it would train with DDP "
                        "instead; drop --fsdp there (the processes then train with DDP)")
    try:
        processor_settings(data_args)
    except ValueError as e:  # the message names the config key, which is the flag's name
        problems.append(str(e))
    if problems:
        raise UserInputError("invalid training arguments: " + "; ".join(problems))


def processor_settings(data_args: DataTrainingArguments):
    """The tiling and template a run trains with, as the ``ProcessorSettings`` its checkpoint will carry."""
    from vlaser.model.settings import ProcessorSettings

    return ProcessorSettings(image_size=data_args.force_image_size, min_dynamic_patch=data_args.min_dynamic_patch,
                             max_dynamic_patch=data_args.max_dynamic_patch, use_thumbnail=data_args.use_thumbnail,
                             dynamic=data_args.dynamic_image_size, template=data_args.conv_style)

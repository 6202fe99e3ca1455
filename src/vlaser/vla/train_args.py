"""``VLATrainArguments``: what ``vlaser vla train`` takes: transformers' ``TrainingArguments`` plus the VLA's own
fields, read by ``HfArgumentParser`` as ``vlaser train`` reads SFT's. Like ``vlaser train --help``, the help and
the usage errors of ``vlaser vla train`` need transformers (its ``TrainingArguments`` flags); the rest of the
command line does not."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from vlaser.errors import UserInputError
from vlaser.vla.config import PRESETS, VLAConfig, preset


def _release_default(name: str, value, text: str | None = None):
    """A ``TrainingArguments`` field with the VLA's default (the release's) and the Trainer's help."""
    base = TrainingArguments.__dataclass_fields__[name].metadata
    return field(default=value, metadata={**base, **({"help": text} if text else {})})


@dataclass(kw_only=True)
class VLATrainArguments(TrainingArguments):
    """transformers' ``TrainingArguments`` (every flag: schedules, DeepSpeed/FSDP, resuming) plus the VLA's own,
    read by ``HfArgumentParser`` as ``vlaser train`` reads SFT's; the defaults the release changes are set here."""

    _argument_group_name = "VLA"  # the section of `vlaser vla train --help`
    vlm: str = field(metadata={"help": "a Vlaser/InternVL3 checkpoint directory, or a VLA policy folder to continue "
                                       "from"})
    output_dir: str = field(metadata={"help": "where the policy (and the checkpoints) are written"})
    dataset: str | None = field(default=None, metadata={"help": "a LeRobot v3.0 dataset directory"})
    preset: str = field(default="vlaser_2b_bridge", metadata={"help": "the VLA's shapes and conventions",
                                                              "choices": tuple(PRESETS)})
    config: dict | str | None = field(default_factory=dict, metadata={
        "help": "VLAConfig fields overriding the preset, as a JSON object (e.g. '{\"chunk_size\": 8}')"})
    normalization: str = field(default="quantile", metadata={
        "help": "state and action normalisation: quantile (the release's p01/p99), mean_std or min_max",
        "choices": ("quantile", "mean_std", "min_max")})
    gripper_dims: dict | str | None = field(default=None, metadata={
        "help": "per key, the dimensions left unnormalised, as a JSON object; None: the action's gripper, as "
                "released; {}: none"})
    expert_learning_rate: float = field(default=5e-5, metadata={"help": "the action expert's learning rate"})
    freeze_vlm: bool = field(default=False, metadata={"help": "freeze the whole backbone (train the expert only)"})
    freeze_vision: bool = field(default=False, metadata={"help": "freeze the backbone's vision tower"})
    # the release's choices, off by default (the recipes select them; docs/vla.md, "Release fidelity")
    freeze_text_embeddings: bool = field(default=False, metadata={
        "help": "freeze the VLM's token embeddings (the release trains so)"})
    cameras: list[str] | str | None = field(default=None, metadata={
        "help": "camera keys to train on, comma-separated or a JSON list (default: every camera; the release: "
                "the primary only)"})
    augment_images: bool = field(default=False, metadata={
        "help": "Octo's random resized crop and colour jitter on training frames (the release's)"})
    padded_actions: str = field(default="mask", metadata={
        "help": "chunk steps past an episode's end: mask (no loss) or repeat (the release's)",
        "choices": ("mask", "repeat")})
    learning_rate: float = _release_default("learning_rate", 5e-5, "the backbone's learning rate")
    warmup_steps: float = _release_default("warmup_steps", 200)
    lr_scheduler_type: SchedulerType | str = _release_default("lr_scheduler_type", "constant_with_warmup")
    num_train_epochs: float = _release_default("num_train_epochs", 1.0)
    logging_steps: float = _release_default("logging_steps", 10)
    seed: int = _release_default("seed", 0)
    disable_tqdm: bool | None = _release_default("disable_tqdm", False)
    remove_unused_columns: bool = _release_default("remove_unused_columns", False,
                                                   "keep False: the collator reads every column")

    def __post_init__(self) -> None:
        self.config = _json_object(self.config, "config") or {}
        self.gripper_dims = _json_object(self.gripper_dims, "gripper_dims")
        self.cameras = _names(self.cameras)
        self.vla_config()  # an unknown preset or a bad field fails here
        super().__post_init__()

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str = "VLA training config") -> VLATrainArguments:
        """The arguments from a mapping (a YAML/JSON file's, or a script's); unknown and missing keys are named."""
        fields = [f for f in dataclasses.fields(cls) if f.init]
        known = {f.name for f in fields}
        unknown = sorted(set(obj) - known)
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            guess = "; ".join(f"{k}: did you mean {h[0]}?" for k, h in hints.items() if h)
            raise UserInputError(f"{where}: unknown keys {unknown}" + (f" ({guess})" if guess else ""))
        missing = [f.name for f in fields if f.name not in obj
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserInputError(f"{where}: missing {', '.join(missing)}")
        try:
            return cls(**obj)
        except ValueError as e:  # TrainingArguments refusing a combination
            raise UserInputError(f"{where}: {e}") from e

    def vla_config(self) -> VLAConfig:
        return preset(self.preset, **self.config)


def _json_object(value, name: str) -> dict | None:
    """A dict field given as JSON text (a flag) or as a mapping (a config file, a script)."""
    if isinstance(value, str):
        try:
            value = None if value in ("None", "null") else json.loads(value)
        except ValueError as e:
            raise UserInputError(f"{name}: expected a JSON object, got {value!r} ({e})") from None
    if value is not None and not isinstance(value, dict):
        raise UserInputError(f"{name}: expected a JSON object, got {value!r}")
    return value


def build_parser(prog: str = "vlaser vla train"):
    """The parser of every ``vlaser vla train`` flag, with its help: the VLA's own, then ``TrainingArguments``'."""
    from vlaser.train.args import arguments_parser

    return arguments_parser(
        (VLATrainArguments,), prog=prog, usage=f"{prog} [CONFIG.yaml|CONFIG.json] [--FLAG VALUE ...]",
        description="Train a VLA policy with transformers' Trainer. A YAML/JSON file given first supplies the "
                    "values (the fields below); flags after it override them; config and gripper_dims take JSON. "
                    "Run under torchrun for several processes (DeepSpeed/FSDP as for 'vlaser train').",
        allow_abbrev=False)  # a misspelt key in a config file is an error, not another field


def parse_args(argv: list[str], prog: str = "vlaser vla train") -> VLATrainArguments:
    """The arguments from flags, or from a YAML/JSON file given first, whose values the flags after it
    override."""
    from vlaser.train.args import with_config_file

    try:
        (args,) = build_parser(prog).parse_args_into_dataclasses(args=with_config_file(argv))
    except ValueError as e:  # TrainingArguments refusing a combination of flags
        raise UserInputError(str(e)) from e
    return args


def _names(value) -> list[str] | None:
    """Camera keys given as a list, as JSON text (a config file's list, passed as a flag) or as ``a,b``."""
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
    return None if value is None else [str(v) for v in value]

"""``vlaser train``: InternVL's fine-tune flags (or one YAML/JSON file) -> the SFT recipe."""

from __future__ import annotations

import argparse
import copy
import dataclasses

from vlaser.cli.args import FullHelp
from vlaser.errors import UserInputError

EXAMPLES = """examples:
  vlaser train --model_name_or_path ckpt/Vlaser-2B --meta_path data/meta.json --output_dir runs/sft \\
      --bf16 True --num_train_epochs 1 --per_device_train_batch_size 4
  torchrun --nproc_per_node 8 -m vlaser train recipes/vlaser_2b_sft.yaml --output_dir runs/sft-8gpu"""
#: the help's sections of vlaser's own flags beyond their dataclass (model, data), in the order shown
SECTIONS = {
    "tiling": ("force_image_size", "down_sample_ratio", "dynamic_image_size", "use_thumbnail", "min_dynamic_patch",
               "max_dynamic_patch", "min_num_frame", "max_num_frame"),
    "freezing and LoRA": ("freeze_llm", "freeze_backbone", "freeze_mlp", "unfreeze_vit_layers", "unfreeze_lm_head",
                          "use_backbone_lora", "use_llm_lora"),
    "packing": ("use_packed_ds", "max_packed_tokens", "num_images_expected", "max_buffer_size", "loss_reduction"),
}



def help_parser(prog: str) -> argparse.ArgumentParser:
    """The flags of the training parser arranged for reading: two examples, vlaser's own sections (model, data,
    tiling, freezing, packing) first, transformers' ``TrainingArguments`` last, required flags marked."""
    from vlaser.train.args import DataTrainingArguments, ModelArguments, build_parser

    full = build_parser(prog=prog)
    own = {"model": {f.name for f in dataclasses.fields(ModelArguments)},
           "data": {f.name for f in dataclasses.fields(DataTrainingArguments)}}
    shown = argparse.ArgumentParser(prog=prog, usage=full.usage, description=f"{full.description}\n\n{EXAMPLES}",
                                    epilog=full.epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                    add_help=False)
    groups = {title: shown.add_argument_group(title) for title in ("model", "data", *SECTIONS)}
    groups["training"] = shown.add_argument_group("training (transformers' TrainingArguments)")
    for action in full._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        section = next((title for title, names in SECTIONS.items() if action.dest in names), None) or \
            next((title for title, names in own.items() if action.dest in names), "training")
        if action.required:
            action = copy.copy(action)
            action.help = f"(required) {action.help or ''}"
        groups[section]._add_action(action)
    return shown


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="second-stage SFT with InternVL's fine-tune flags (or one YAML/JSON config file)",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=FullHelp, build=help_parser, help="list every flag with its help")
    p.set_defaults(passthrough=[])


def run(args) -> int:
    from vlaser.train.sft import train

    if not args.passthrough:
        raise UserInputError("no flags given; see 'vlaser train --help'")
    out = train(args.passthrough)
    print(f"saved to {out}")
    return 0

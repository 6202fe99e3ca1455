"""``vlaser train``: InternVL's fine-tune flags (or one YAML/JSON file) -> the SFT recipe."""

from __future__ import annotations

from vlaser.errors import UserInputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="second-stage SFT with InternVL's fine-tune flags (or one YAML/JSON config file)",
        description="Takes the flags of InternVL's internvl_chat_finetune.py and every transformers "
                    "TrainingArguments flag, e.g. --model_name_or_path M --meta_path meta.json --output_dir out "
                    "--conv_style internvl2_5 --max_dynamic_patch 12 --bf16 True. Run under torchrun for "
                    "several processes.",
    )
    p.set_defaults(passthrough=[])


def run(args) -> int:
    from vlaser.train.sft import train

    if not args.passthrough:
        raise UserInputError("no flags given; see 'vlaser train --help'")
    out = train(args.passthrough)
    print(f"saved to {out}")
    return 0

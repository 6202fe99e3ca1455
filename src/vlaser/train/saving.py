"""Writing a trained model in the original InternVL layout or in transformers' layout.

The final save is staged (``model.atomic.staged_checkpoint``): a run killed while saving never leaves an
output folder that looks like a finished checkpoint. Intermediate ``checkpoint-N`` folders are the Trainer's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vlaser.errors import UserInputError
from vlaser.model.atomic import follow_umask, staged_checkpoint
from vlaser.model.checkpoint import HF, ORIGINAL
from vlaser.model.convert import TOKENIZER_FILES, hf_to_original_config, hf_to_original_state_dict, save_weights
from vlaser.model.template import DEFAULT_TEMPLATE, get_template
from vlaser.model.tokenizer import save_hf_tokenizer


def check_output_dir(out: str | Path) -> None:
    """Make sure the output folder can be written, before any weights are loaded: a file in its place, or a
    folder without write permission, is an error now rather than after training."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output_dir {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserInputError(f"--output_dir {out}: no permission to write into it")


def save_checkpoint(model, tokenizer, out: Path, layout: str, source: Path | None = None,
                    max_shard_size: str = "5GB", state_dict: dict | None = None) -> Path:
    """Save ``model`` (transformers' InternVL) as a checkpoint directory in ``layout``; ``state_dict``: its
    weights when the model's own are sharded across processes (ZeRO-3, FSDP) and were gathered."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    if layout == HF:
        model.save_pretrained(out, max_shard_size=max_shard_size, state_dict=state_dict)
        chat = config.get("internvl_chat") or {}
        template = get_template(chat.get("template", DEFAULT_TEMPLATE))
        save_hf_tokenizer(tokenizer, out, template, chat.get("system_message"))
        return out
    weights = model.state_dict() if state_dict is None else state_dict
    state = hf_to_original_state_dict({k: v.detach().cpu() for k, v in weights.items()})
    save_weights(state, out, max_shard_size)
    (out / "config.json").write_text(json.dumps(hf_to_original_config(config), indent=2, ensure_ascii=False) + "\n")
    copied = False
    for name in TOKENIZER_FILES if source else ():
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
            copied = True
    if not copied:
        tokenizer.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    return out


def umask_callback():
    """A ``TrainerCallback`` giving each ``checkpoint-N`` folder the Trainer saves the umask's permissions (the
    safetensors writer makes its weights 0600, unreadable to others on a shared cluster)."""
    from transformers import TrainerCallback

    class FollowUmask(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                follow_umask(folder)

    return FollowUmask()


def gathered_state_dict(trainer) -> dict | None:
    """The full weights when the processes each hold a shard (DeepSpeed, FSDP), else None (the model's own).

    Every process must call this: ZeRO-3 and FSDP gather the shards collectively.
    """
    if not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        return None
    try:
        return trainer.accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model)
    except ValueError as e:  # accelerate's refusal when ZeRO-3 may not gather 16-bit weights
        raise UserInputError(f"cannot gather the final weights ({e}); set stage3_gather_16bit_weights_on_model_save "
                             "to true in the DeepSpeed config") from e


def save_final(trainer, tokenizer, out: Path, layout: str, source: Path) -> None:
    """The end-of-training save, called on every process: the weights are gathered where sharded, the main
    process writes the checkpoint into a staged folder and publishes it into ``out`` (with InternVL's remote
    code for the original layout, so its own loader still works), and the others wait until it is in place."""
    state = gathered_state_dict(trainer)
    if trainer.is_world_process_zero():
        with staged_checkpoint(out) as staged:
            save_checkpoint(trainer.model, tokenizer, staged, layout=layout, source=source, state_dict=state)
            if layout == ORIGINAL:
                for code in source.glob("*.py"):
                    shutil.copy(code, staged / code.name)
    trainer.accelerator.wait_for_everyone()

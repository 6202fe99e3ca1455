"""Writing a trained model in the original InternVL layout or in transformers' layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlaser.model.checkpoint import HF
from vlaser.model.convert import TOKENIZER_FILES, hf_to_original_config, hf_to_original_state_dict, save_weights
from vlaser.model.tokenizer import save_hf_tokenizer


def save_checkpoint(model, tokenizer, out: Path, layout: str, source: Path | None = None,
                    max_shard_size: str = "5GB") -> Path:
    """Save ``model`` (transformers' InternVL) as a checkpoint directory in ``layout``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    if layout == HF:
        model.save_pretrained(out, max_shard_size=max_shard_size)
        save_hf_tokenizer(tokenizer, out, (config.get("internvl_chat") or {}).get("system_message"))
        return out
    state = hf_to_original_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
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

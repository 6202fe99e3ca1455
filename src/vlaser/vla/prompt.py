"""The release's VLA prompt: InternVL's ``internvl2_5`` turn with a literal "None" system message, one tile per
image, the instruction as the user text and the assistant header open, right-padded to the prefix length.

``<|im_start|>system\\nNone<|im_end|>\\n<|im_start|>user\\n<img>...</img>\\n{instruction}<|im_end|>\\n
<|im_start|>assistant\\n`` (V:``Vlaser_VLA/Simpler/src/model/vla/processing.py``, ``InternVLAProcessor``).
"""

from __future__ import annotations

import torch

from vlaser.errors import UserInputError
from vlaser.model.template import build_chat_prompt, get_template, multi_image_prefix

TEMPLATE = "internvl2_5"


def vla_prompt(instruction: str, num_image_token: int, n_images: int = 1, system_message: str = "None") -> str:
    """The prompt text of one observation (``n_images`` cameras, one tile each)."""
    question = instruction if n_images == 1 else multi_image_prefix(n_images) + instruction
    return build_chat_prompt(question, get_template(TEMPLATE), [1] * n_images, num_image_token,
                             system_message=system_message)[1]


def tokenize_prompts(tokenizer, prompts: list[str], prefix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``(B, prefix_len)``, right-padded; a longer prompt is an error
    (truncating would cut image tokens or the instruction)."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), prefix_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix_len), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > prefix_len:
            raise UserInputError(f"prompt {i} has {len(row)} tokens, more than prefix_len={prefix_len}: "
                                 f"shorten the instruction or raise prefix_len")
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask

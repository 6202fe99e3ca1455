"""``DataConfig``: the data settings of one SFT run, under the names of InternVL's fine-tune flags.

Its defaults are the defaults of InternVL's ``internvl_chat_finetune.py`` (no dynamic tiling, no thumbnail,
at most 12 tiles when tiling is on) and the only copy of them: ``vlaser train``'s flags take theirs from
here, so a dataset built in code and a training run given no tiling flags cut images the same way.
Kept free of heavy imports so that parsing flags does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """The data flags of InternVL's fine-tune script (same names), resolved for one model."""

    num_image_token: int = 256
    force_image_size: int = 448
    conv_style: str = "internvl2_5"
    max_seq_length: int = 8192
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    min_num_frame: int = 8
    max_num_frame: int = 32
    seed: int = 0

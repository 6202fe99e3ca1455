"""Where answers come from: a local model through the inference core (more backends plug in here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TransformersBackend:
    """Batched greedy generation with a local checkpoint (``VLM.ask_batch``: left-padded ``batch_chat``)."""

    def __init__(self, model_path: str, dtype="auto", device=None):
        import os

        import torch

        from vlaser.api import VLM

        if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun process
        self.model_path = model_path
        self.vlm = VLM.from_pretrained(model_path, dtype=dtype, device=device)

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.model_path, "dtype": str(self.vlm.model.dtype)}

    def generate(self, requests: Sequence[tuple[list[Path], str]], max_num: int, max_new_tokens: int) -> list[str]:
        images = [paths[0] if len(paths) == 1 else paths for paths, _ in requests]
        return self.vlm.ask_batch([(im, prompt) for im, (_, prompt) in zip(images, requests)], max_num=max_num,
                                  max_new_tokens=max_new_tokens, do_sample=False)

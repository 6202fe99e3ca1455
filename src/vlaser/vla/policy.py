"""``VLAPolicy``: a trained VLA on disk and in use. Saved as the VLM in transformers' layout plus
``action_expert.safetensors``, ``vla_config.json`` and ``norm_stats.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaser.errors import UserInputError
from vlaser.model.checkpoint import HF
from vlaser.model.loading import load_model
from vlaser.vla.checks import ACTION_KEY, STATE_KEY, fit_backbone, read_backbone
from vlaser.vla.collate import VLACollator
from vlaser.vla.config import VLAConfig
from vlaser.vla.model import VLAModel

EXPERT_FILE, CONFIG_FILE, NORM_FILE = "action_expert.safetensors", "vla_config.json", "norm_stats.json"


def action_tokens(n: int) -> list[str]:
    """The release's ``<a0>``..``<a{n-1}>`` vocabulary additions."""
    return [f"<a{i}>" for i in range(n)]


def add_action_tokens(vlm, tokenizer, n: int) -> None:
    """Add the release's action tokens as special tokens and grow the embeddings (and head) to the new size."""
    if n and tokenizer.add_tokens(action_tokens(n), special_tokens=True):
        vlm.resize_token_embeddings(len(tokenizer))


class VLAPolicy:
    """A ``VLAModel`` with its tokenizer, input pipeline and normaliser: observations in, actions out.

    The backbone loads with SDPA whatever kernels are installed (``load_model`` would pick flash-attention 2
    where ``flash_attn`` is, and that ignores the joint attention's 4-D block mask).
    """

    def __init__(self, model: VLAModel, tokenizer, normalizer=None, norm_stats: Mapping | None = None) -> None:
        self.model, self.tokenizer, self.normalizer, self.norm_stats = model, tokenizer, normalizer, norm_stats
        self.collator = VLACollator(tokenizer, model.config, int(model.vlm.config.image_seq_length))

    @property
    def config(self) -> VLAConfig:
        return self.model.config

    @classmethod
    def from_vlm(cls, path: str | os.PathLike, config: VLAConfig, dtype="float32", device="cpu",
                 seed: int = 0) -> VLAPolicy:
        """A fresh (untrained) expert on a Vlaser/InternVL3 checkpoint; the release's action tokens added. The
        config's tile size is the backbone's (checked before the weights load)."""
        config = fit_backbone(config, read_backbone(path))
        vlm, tokenizer = load_model(path, dtype=dtype, device=device, attn_implementation="sdpa")  # see VLAModel
        add_action_tokens(vlm, tokenizer, config.num_action_tokens_added)
        torch.manual_seed(seed)
        model = VLAModel(vlm, config)
        model.expert.init_layers_()
        model.expert.to(device=vlm.device, dtype=vlm.dtype)
        return cls(model, tokenizer)

    def save_pretrained(self, out: str | os.PathLike, norm_stats: Mapping | None = None,
                        state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write the policy; ``norm_stats`` (the caller's dict, e.g. ``Normalizer.to_json()``) goes to
        ``norm_stats.json`` as given (default: the statistics this policy was loaded with); ``state_dict``: the
        whole ``VLAModel``'s weights when they were gathered from shards (ZeRO-3, FSDP)."""
        from safetensors.torch import save_file

        from vlaser.train.saving import save_checkpoint

        out = Path(out)
        vlm_state = expert_state = None
        if state_dict is not None:
            vlm_state = {k[len("vlm."):]: v for k, v in state_dict.items() if k.startswith("vlm.")}
            expert_state = {k[len("expert."):]: v for k, v in state_dict.items() if k.startswith("expert.")}
        save_checkpoint(self.model.vlm, self.tokenizer, out, layout=HF, state_dict=vlm_state)
        expert_state = self.model.expert.state_dict() if expert_state is None else expert_state
        save_file({k: v.detach().cpu().contiguous() for k, v in expert_state.items()}, str(out / EXPERT_FILE))
        self.config.save(out / CONFIG_FILE)
        stats = self.norm_stats if norm_stats is None else norm_stats
        if stats is not None:
            (out / NORM_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", device="cpu", normalizer=None,
                        config: VLAConfig | None = None) -> VLAPolicy:
        """Load what :meth:`save_pretrained` wrote, exactly; the normaliser comes from ``norm_stats.json``
        (through ``vlaser.vla.data.Normalizer.from_json``) unless one is passed; ``config`` replaces the saved one
        (the same shapes; ``train_vla`` records the cameras of a continued run)."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in (EXPERT_FILE, CONFIG_FILE):
            if not (path / name).is_file():
                raise UserInputError(f"{path} is not a VLA policy: {name} is missing")
        config = VLAConfig.load(path / CONFIG_FILE) if config is None else config
        vlm, tokenizer = load_model(path, dtype=dtype, device=device, attn_implementation="sdpa")  # see VLAModel
        model = VLAModel(vlm, config)
        state = load_file(str(path / EXPERT_FILE))
        missing, unexpected = model.expert.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserInputError(f"{path / EXPERT_FILE}: missing {missing}, unexpected {unexpected}")
        model.expert.to(device=vlm.device, dtype=vlm.dtype)
        model.eval()
        stats = json.loads((path / NORM_FILE).read_text()) if (path / NORM_FILE).is_file() else None
        if normalizer is None and stats is not None:
            from vlaser.vla.data import Normalizer

            normalizer = Normalizer.from_json(stats, where=str(path / NORM_FILE))
        return cls(model, tokenizer, normalizer, stats)

    @torch.no_grad()
    def predict_normalized(self, images: Sequence[Any] | Any, state: np.ndarray, instruction: str,
                           noise: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """The chunk ``(chunk, A)`` in [-1, 1], from a normalised state."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        device = self.model.vlm.device
        batch = {k: v.to(device) for k, v in self.collator.prefix([images], [instruction]).items()}
        state_t = torch.as_tensor(np.asarray(state, dtype=np.float32)).reshape(1, -1).to(device)
        if state_t.shape[1] != self.config.proprio_dim:
            raise UserInputError(f"state has {state_t.shape[1]} values, the policy expects {self.config.proprio_dim}")
        noise_t = None if noise is None else torch.as_tensor(noise, dtype=torch.float32).reshape(
            1, self.config.chunk_size, self.config.action_dim)
        out = self.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                        state_t, noise=noise_t)
        return out[0].float().cpu().numpy()

    def predict(self, images: Sequence[Any] | Any, state: np.ndarray, instruction: str,
                noise: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """Un-normalised actions ``(chunk, A)`` for one observation: raw ``state`` in, robot actions out."""
        if self.normalizer is None:
            raise UserInputError("this policy has no normaliser (no norm_stats.json); pass normalizer= or use "
                                 "predict_normalized")
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape[0] != self.config.proprio_dim:
            raise UserInputError(f"state has {state.shape[0]} values, the policy expects {self.config.proprio_dim}")
        norm_state = np.asarray(self.normalizer.normalize(STATE_KEY, state))
        actions = self.predict_normalized(images, norm_state, instruction, noise)
        return np.asarray(self.normalizer.unnormalize(ACTION_KEY, actions.astype(np.float64)), dtype=np.float32)

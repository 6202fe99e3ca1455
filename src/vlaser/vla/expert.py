"""The action expert: transformers' Qwen2 decoder layers built from a copy of the backbone's text config at the
release's width (hidden 768; MLP 8960 for 2B, 5600 for 8B), with the backbone's layer count, heads, KV heads,
head size and RoPE; no embeddings, no LM head; plus the proprio encoder, the action-time encoder and the decoder."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

from vlaser.vla.config import VLAConfig


def head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def expert_text_config(text_config, config: VLAConfig):
    """A copy of the backbone's Qwen2 config at the expert's width; head size kept (joint attention needs it)."""
    out = copy.deepcopy(text_config)
    out.head_dim = head_dim(text_config)
    out.hidden_size = config.expert_hidden_size
    out.intermediate_size = config.expert_intermediate_size
    return out


class ActionEncoder(nn.Module):
    """pi0's action-time MLP as open-pi-zero writes it: ``W3 silu(W2 [time; W1 a])``."""

    def __init__(self, action_dim: int, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(action_dim, width)
        self.linear_2 = nn.Linear(2 * width, width)
        self.linear_3 = nn.Linear(width, width)

    def forward(self, actions: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        emb = self.linear_1(actions)
        time_full = time_emb[:, None, :].expand(-1, actions.shape[1], -1)
        return self.linear_3(nn.functional.silu(self.linear_2(torch.cat([time_full, emb], dim=-1))))


class ActionExpert(nn.Module):
    """Qwen2 layers, final norm and rotary embedding of the expert stream, and its input/output maps."""

    def __init__(self, text_config, config: VLAConfig) -> None:
        super().__init__()
        cfg = expert_text_config(text_config, config)
        self.config = cfg
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = Qwen2RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(cfg)
        self.proprio_encoder = nn.Linear(config.proprio_dim, cfg.hidden_size)
        self.action_encoder = ActionEncoder(config.action_dim, cfg.hidden_size)
        self.action_decoder = nn.Linear(cfg.hidden_size, config.action_dim)

    @torch.no_grad()
    def init_layers_(self) -> None:
        """The init ``Qwen2ForCausalLM(config)`` gives the release's expert: normal(0, initializer_range)
        matrices, zero biases, unit norms (the encoders keep PyTorch's Linear init, as in open-pi-zero)."""
        std = self.config.initializer_range
        for module in [*self.layers.modules(), self.norm]:
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, Qwen2RMSNorm):
                module.weight.fill_(1.0)

"""``VLAModel``: the backbone (vlaser's ``InternVLChat``) and the action expert, the flow-matching loss, and
sampling with the prefix (and proprio) kept as a KV cache while the expert integrates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from vlaser.model.image_features import image_features, write_image_features
from vlaser.vla import flow
from vlaser.vla.config import VLAConfig
from vlaser.vla.expert import ActionExpert
from vlaser.vla.joint import KVCache, Stream, additive, block_mask, joint_forward, position_ids

log = logging.getLogger(__name__)

N_PROPRIO = 1
#: attention implementations that apply the joint attention's 4-D additive block mask (flash-attention drops it)
MASK_ATTENTION = ("sdpa", "eager")


@dataclass
class VLAOutput(ModelOutput):
    loss: torch.Tensor | None = None
    velocity: torch.Tensor | None = None


def use_mask_attention(vlm: nn.Module) -> None:
    """Switch ``vlm``'s language model to SDPA (one logged line) unless its attention applies a 4-D mask: the
    joint attention's prefix / proprio / action blocks are that mask, which flash-attention would ignore."""
    current = vlm.config.text_config._attn_implementation
    if current not in MASK_ATTENTION:
        log.warning("VLA backbone: %s ignores the joint attention's 4-D block mask; its language model runs "
                    "on sdpa instead", current)
        vlm.set_attn_implementation({"text_config": "sdpa"})


class VLAModel(nn.Module):
    """The policy network: ``vlm`` (transformers' InternVL, vlaser's class) plus ``expert``."""

    def __init__(self, vlm: nn.Module, config: VLAConfig) -> None:
        super().__init__()
        use_mask_attention(vlm)
        self.vlm = vlm
        self.config = config
        self.expert = ActionExpert(vlm.config.text_config, config)

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.model.language_model

    # ---- inputs -------------------------------------------------------------------------------------------

    def embed_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     pixel_values: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image features written over the ``<IMG_CONTEXT>`` positions; padding is
        zero (as in the release; no one attends to it)."""
        embeds = self.vlm.get_input_embeddings()(input_ids)
        features = image_features(self.vlm, pixel_values)
        embeds = write_image_features(embeds, input_ids, features, self.vlm.config.image_token_id)
        return embeds.masked_fill(~attention_mask.bool()[..., None], 0.0)

    def _positions(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return position_ids(attention_mask, N_PROPRIO, self.config.chunk_size, self.config.positions)

    def _time_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = flow.time_embedding(t, self.expert.config.hidden_size, self.config.time_max_period, self.config.flow)
        return emb.to(dtype)

    def _prefix_stream(self, embeds: torch.Tensor, positions: torch.Tensor) -> Stream:
        return Stream(self.language_model.layers, embeds, self.language_model.rotary_emb(embeds, positions))

    def _expert_stream(self, hidden: torch.Tensor, positions: torch.Tensor) -> Stream:
        return Stream(self.expert.layers, hidden, self.expert.rotary_emb(hidden, positions))

    def velocity(self, prefix_embeds: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor,
                 x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The expert's velocity at ``x_t``, everything recomputed (training, and the uncached reference)."""
        dtype = prefix_embeds.dtype
        prefix_pos, expert_pos = self._positions(attention_mask)
        suffix = torch.cat([self.expert.proprio_encoder(state.to(dtype))[:, None],
                            self.expert.action_encoder(x_t.to(dtype), self._time_embedding(t, dtype))], dim=1)
        mask = additive(block_mask(attention_mask, N_PROPRIO, self.config.chunk_size), dtype)
        hidden = joint_forward([self._prefix_stream(prefix_embeds, prefix_pos),
                                self._expert_stream(suffix, expert_pos)], mask)[0][1]
        return self.expert.action_decoder(self.expert.norm(hidden[:, N_PROPRIO:]))

    # ---- training -----------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                state: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, time: torch.Tensor | None = None) -> VLAOutput:
        """Flow-matching loss: mean squared velocity error over the valid (unpadded) steps of each chunk."""
        cfg = self.config
        actions = actions.float()
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = flow.sample_time(actions.shape[0], cfg.flow, device=actions.device)
        x_t = flow.interpolate(noise, actions, time, cfg.flow, cfg.flow_sig_min)
        target = flow.velocity_target(noise, actions, cfg.flow, cfg.flow_sig_min)
        embeds = self.embed_prefix(input_ids, attention_mask, pixel_values)
        v = self.velocity(embeds, attention_mask, state, x_t, time.to(embeds.dtype)).float()
        err = (v - target) ** 2
        if action_mask is None:
            return VLAOutput(loss=err.mean(), velocity=v)
        weight = action_mask.to(err.dtype)[..., None].expand_as(err)
        return VLAOutput(loss=(err * weight).sum() / weight.sum().clamp(min=1.0), velocity=v)

    # ---- sampling -----------------------------------------------------------------------------------------

    def prefix_cache(self, prefix_embeds: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor) -> KVCache:
        """Per-layer keys and values of the prefix and the proprio token, computed once per observation."""
        dtype = prefix_embeds.dtype
        prefix_pos, expert_pos = self._positions(attention_mask)
        lead = attention_mask.shape[1] + N_PROPRIO
        mask = additive(block_mask(attention_mask, N_PROPRIO, self.config.chunk_size)[:, :lead, :lead], dtype)
        proprio = self.expert.proprio_encoder(state.to(dtype))[:, None]
        streams = [self._prefix_stream(prefix_embeds, prefix_pos),
                   self._expert_stream(proprio, expert_pos[:, :N_PROPRIO])]
        return joint_forward(streams, mask, return_cache=True)[1]

    def cached_velocity(self, cache: KVCache, attention_mask: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """The expert's velocity with the prefix and proprio read from ``cache`` (action tokens only)."""
        dtype = cache[0][0].dtype
        lead = attention_mask.shape[1] + N_PROPRIO
        mask = additive(block_mask(attention_mask, N_PROPRIO, self.config.chunk_size)[:, lead:], dtype)
        expert_pos = self._positions(attention_mask)[1][:, N_PROPRIO:]
        hidden = self.expert.action_encoder(x_t.to(dtype), self._time_embedding(t, dtype))
        hidden = joint_forward([self._expert_stream(hidden, expert_pos)], mask, cache=cache)[0][0]
        return self.expert.action_decoder(self.expert.norm(hidden))

    @torch.no_grad()
    def sample_actions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                       state: torch.Tensor, noise: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
        """Normalised action chunks ``(B, chunk, A)``: Euler steps from noise, clamped to the clip value.

        ``use_cache=False`` recomputes the prefix at every step (the reference the cache is checked against).
        """
        cfg = self.config
        embeds = self.embed_prefix(input_ids, attention_mask, pixel_values)
        b = input_ids.shape[0]
        x = (torch.randn((b, cfg.chunk_size, cfg.action_dim), device=embeds.device) if noise is None
             else noise.to(embeds.device)).float()
        t0, dt = flow.euler_schedule(cfg.num_inference_steps, cfg.flow)
        cache = self.prefix_cache(embeds, attention_mask, state) if use_cache else None
        t = torch.full((b,), t0, device=embeds.device, dtype=embeds.dtype)
        for _ in range(cfg.num_inference_steps):
            v = (self.cached_velocity(cache, attention_mask, x, t) if use_cache
                 else self.velocity(embeds, attention_mask, state, x, t))
            x = x + dt * v.float()
            t = t + dt  # accumulated, as the release does
        return x.clamp(-cfg.final_action_clip, cfg.final_action_clip)

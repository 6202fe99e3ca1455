"""The release's ``PiZero`` (V: Vlaser_VLA/Simpler/src/model/vla/pizero_internvl.py, joint_model.py, modules.py)
written out in plain torch from its structure, reading every tensor by the name the release saves it under.

``release_state_dict`` builds a ``PiZero.state_dict()`` at tiny sizes: the names and shapes the release's modules
give, with the shared modules repeated under each path as ``state_dict()`` repeats them. ``ReferencePiZero`` runs
the release's naive action sampler (``infer_action_naive``: every Euler step recomputes the whole sequence) and the
VLM's text head. Only InternViT comes from ``reference_internvl`` (the release's ``vision_tower.vision_model`` is
InternVL's ``InternVisionModel``). Used by tests, never by the package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from reference_internvl import ReferenceInternVL

VIT = "vision_tower.vision_model."
MIX = "joint_model.mixtures."


def _qwen2_layer(prefix: str, hidden: int, inter: int, heads: int, kv: int, head_dim: int) -> dict[str, tuple]:
    """Shapes of a transformers Qwen2DecoderLayer (q/k/v with bias, o_proj without)."""
    a, m = prefix + "self_attn.", prefix + "mlp."
    return {a + "q_proj.weight": (heads * head_dim, hidden), a + "q_proj.bias": (heads * head_dim,),
            a + "k_proj.weight": (kv * head_dim, hidden), a + "k_proj.bias": (kv * head_dim,),
            a + "v_proj.weight": (kv * head_dim, hidden), a + "v_proj.bias": (kv * head_dim,),
            a + "o_proj.weight": (hidden, heads * head_dim), m + "gate_proj.weight": (inter, hidden),
            m + "up_proj.weight": (inter, hidden), m + "down_proj.weight": (hidden, inter),
            prefix + "input_layernorm.weight": (hidden,), prefix + "post_attention_layernorm.weight": (hidden,)}


def _vit_layer(prefix: str, dim: int, inter: int) -> dict[str, tuple]:
    return {prefix + "attn.qkv.weight": (3 * dim, dim), prefix + "attn.qkv.bias": (3 * dim,),
            prefix + "attn.proj.weight": (dim, dim), prefix + "attn.proj.bias": (dim,), prefix + "ls1": (dim,),
            prefix + "ls2": (dim,), prefix + "norm1.weight": (dim,), prefix + "norm1.bias": (dim,),
            prefix + "norm2.weight": (dim,), prefix + "norm2.bias": (dim,), prefix + "mlp.fc1.weight": (inter, dim),
            prefix + "mlp.fc1.bias": (inter,), prefix + "mlp.fc2.weight": (dim, inter), prefix + "mlp.fc2.bias": (dim,)}


def release_shapes(config: dict, vocab: int, vla) -> dict[str, tuple]:
    """Primary names and shapes of ``PiZero.state_dict()`` for an original-layout InternVL3 ``config`` and a
    vlaser ``VLAConfig`` (expert width and MLP, proprio and action sizes)."""
    llm, vit = config["llm_config"], config["vision_config"]
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    head_dim = llm["hidden_size"] // heads
    d, grid = vit["hidden_size"], vit["image_size"] // vit["patch_size"]
    shapes = {VIT + "embeddings.class_embedding": (1, 1, d),
              VIT + "embeddings.patch_embedding.weight": (d, 3, vit["patch_size"], vit["patch_size"]),
              VIT + "embeddings.patch_embedding.bias": (d,),
              VIT + "embeddings.position_embedding": (1, 1 + grid ** 2, d)}
    for i in range(vit["num_hidden_layers"]):
        shapes |= _vit_layer(f"{VIT}encoder.layers.{i}.", d, vit["intermediate_size"])
    h, merged = llm["hidden_size"], d * 4  # pixel shuffle 0.5 stacks 4 patches
    shapes |= {"multi_modal_projector.0.weight": (merged,), "multi_modal_projector.0.bias": (merged,),
               "multi_modal_projector.1.weight": (h, merged), "multi_modal_projector.1.bias": (h,),
               "multi_modal_projector.3.weight": (h, h), "multi_modal_projector.3.bias": (h,),
               "embed_tokens.weight": (vocab, h)}
    he = vla.expert_hidden_size
    for i in range(llm["num_hidden_layers"]):
        shapes |= _qwen2_layer(f"{MIX}vlm.layers.{i}.", h, llm["intermediate_size"], heads, kv, head_dim)
        shapes |= _qwen2_layer(f"{MIX}action.layers.{i}.", he, vla.expert_intermediate_size, heads, kv, head_dim)
    return shapes | {
        MIX + "vlm.norm.weight": (h,), MIX + "action.norm.weight": (he,),
        "internvl_model.language_model.lm_head.weight": (vocab, h),
        "internvl_model.action_expert.lm_head.weight": (vocab, he),
        "action_encoder.linear_1.weight": (he, vla.action_dim), "action_encoder.linear_1.bias": (he,),
        "action_encoder.linear_2.weight": (he, 2 * he), "action_encoder.linear_2.bias": (he,),
        "action_encoder.linear_3.weight": (he, he), "action_encoder.linear_3.bias": (he,),
        "proprio_encoder.weight": (he, vla.proprio_dim), "proprio_encoder.bias": (he,),
        "action_decoder.weight": (vla.action_dim, he), "action_decoder.bias": (vla.action_dim,)}


def _value(name: str, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen)
    if name.endswith(("norm.weight", "layernorm.weight", "norm1.weight", "norm2.weight", ".0.weight")):
        return 1.0 + 0.1 * x
    if name.endswith(("bias", "ls1", "ls2", "embedding")):
        return 0.1 * x
    return x / math.sqrt(math.prod(shape[1:]))


def release_state_dict(config: dict, vocab: int, vla, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ``PiZero.state_dict()`` at tiny sizes; shared modules appear under every path (same tensors)."""
    gen = torch.Generator().manual_seed(seed)
    state = {name: _value(name, shape, gen) for name, shape in release_shapes(config, vocab, vla).items()}
    aliases = {"internvl_model.vision_model.": VIT, f"{MIX}proprio.layers.": f"{MIX}action.layers."}
    for alias, prefix in aliases.items():
        state |= {alias + k[len(prefix):]: v for k, v in list(state.items()) if k.startswith(prefix)}
    state["internvl_model.language_model.model.embed_tokens.weight"] = state["embed_tokens.weight"]
    state["internvl_model.language_model.model.norm.weight"] = state[MIX + "vlm.norm.weight"]
    for alias in (MIX + "proprio.norm.weight", "internvl_model.action_expert.model.norm.weight"):
        state[alias] = state[MIX + "action.norm.weight"]
    return state


class _ReleaseViT(ReferenceInternVL):
    """InternViT under the release's names (``PiZero.vision_tower.vision_model`` is ``InternVisionModel``)."""

    def __init__(self, state: dict, vision_config: dict) -> None:  # no LLM: only ``vision`` is used
        self.s = {"vision_model." + k[len(VIT):]: v for k, v in state.items() if k.startswith(VIT)}
        self.vcfg = vision_config


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    rotated = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * cos + rotated * sin


class ReferencePiZero:
    """The release's forward on its own tensor names (float32)."""

    def __init__(self, state: dict, config: dict, vla, image_token_id: int, pad_token_id: int) -> None:
        self.s, self.vla = state, vla
        self.llm, self.vit = config["llm_config"], config["vision_config"]
        self.image_token_id, self.pad_token_id = image_token_id, pad_token_id
        self.heads, self.kv = self.llm["num_attention_heads"], self.llm["num_key_value_heads"]
        self.head_dim = self.llm["hidden_size"] // self.heads

    # ---- _forward_siglip_and_text_embedding -------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        s = self.s
        feats = _ReleaseViT(s, self.vit).vision(pixel_values)[-1][:, 1:]  # last_hidden_state without CLS
        side = int(feats.shape[1] ** 0.5)
        x = ReferenceInternVL.pixel_shuffle_v2(feats.reshape(feats.shape[0], side, side, -1))
        x = F.layer_norm(x, (x.shape[-1],), s["multi_modal_projector.0.weight"], s["multi_modal_projector.0.bias"])
        x = F.gelu(F.linear(x, s["multi_modal_projector.1.weight"], s["multi_modal_projector.1.bias"]))
        image = F.linear(x, s["multi_modal_projector.3.weight"], s["multi_modal_projector.3.bias"])
        text = F.embedding(input_ids, s["embed_tokens.weight"])
        out = torch.zeros_like(text)
        text_mask = (input_ids != self.image_token_id) & (input_ids != self.pad_token_id)
        image_mask = input_ids == self.image_token_id
        out[text_mask] = text[text_mask]
        out[image_mask] = image.reshape(-1, image.shape[-1])
        return out

    # ---- joint_model: one attention over the mixtures, each with its own weights ----------------------------

    def _layer(self, hidden: dict, names: dict, positions: dict, mask: torch.Tensor, i: int) -> dict:
        eps, theta = self.llm["rms_norm_eps"], self.llm["rope_theta"]
        qs, ks, vs = [], [], []
        for stream, x in hidden.items():
            p = f"{MIX}{names[stream]}.layers.{i}."
            pre = _rms(x, self.s[p + "input_layernorm.weight"], eps)
            b, t, _ = x.shape

            def proj(w: str, n: int, p=p, pre=pre, b=b, t=t) -> torch.Tensor:
                out = F.linear(pre, self.s[p + f"self_attn.{w}.weight"], self.s[p + f"self_attn.{w}.bias"])
                return out.view(b, t, n, self.head_dim).transpose(1, 2)

            qs.append(_rotate(proj("q_proj", self.heads), positions[stream], theta))
            ks.append(_rotate(proj("k_proj", self.kv), positions[stream], theta))
            vs.append(proj("v_proj", self.kv))
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        k, v = (z.repeat_interleave(self.heads // self.kv, dim=1) for z in (k, v))
        scores = q @ k.transpose(2, 3) * self.head_dim ** -0.5 + mask[:, None]
        attended = (torch.softmax(scores.float(), dim=-1) @ v).transpose(1, 2)
        attended = attended.reshape(*attended.shape[:2], -1).split([x.shape[1] for x in hidden.values()], dim=1)
        out = {}
        for (stream, x), a in zip(hidden.items(), attended):
            p = f"{MIX}{names[stream]}.layers.{i}."
            x = x + F.linear(a, self.s[p + "self_attn.o_proj.weight"])
            y = _rms(x, self.s[p + "post_attention_layernorm.weight"], eps)
            y = F.linear(F.silu(F.linear(y, self.s[p + "mlp.gate_proj.weight"])) * F.linear(
                y, self.s[p + "mlp.up_proj.weight"]), self.s[p + "mlp.down_proj.weight"])
            out[stream] = x + y
        return out

    def _joint(self, hidden: dict, positions: dict, mask: torch.Tensor) -> dict:
        names = {stream: stream for stream in hidden}
        for i in range(self.llm["num_hidden_layers"]):
            hidden = self._layer(hidden, names, positions, mask, i)
        return {stream: _rms(x, self.s[f"{MIX}{stream}.norm.weight"], self.llm["rms_norm_eps"])
                for stream, x in hidden.items()}

    def _block_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """``build_causal_mask_and_position_ids``: additive ``(B, L, L)``."""
        b, lp = attention_mask.shape
        n = lp + 1 + self.vla.chunk_size
        mask = torch.full((b, n, n), torch.finfo(torch.float32).min)
        for row, count in enumerate(attention_mask.sum(1).tolist()):
            mask[row, :count, :count] = 0
            mask[row, lp:, :count] = 0
        mask[:, lp:lp + 1, lp:lp + 1] = 0
        mask[:, lp + 1:, lp:] = 0
        return mask

    # ---- action-time encoder, naive Euler sampling --------------------------------------------------------

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        half = self.vla.expert_hidden_size // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(self.vla.time_max_period) / (half - 1)))
        angle = t[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)

    def _encode_actions(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.s
        emb = F.linear(x, s["action_encoder.linear_1.weight"], s["action_encoder.linear_1.bias"])
        emb = torch.cat([self._time(t)[:, None].expand(-1, x.shape[1], -1), emb], dim=-1)
        emb = F.silu(F.linear(emb, s["action_encoder.linear_2.weight"], s["action_encoder.linear_2.bias"]))
        return F.linear(emb, s["action_encoder.linear_3.weight"], s["action_encoder.linear_3.bias"])

    @torch.no_grad()
    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
               proprio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s, cfg = self.s, self.vla
        b, lp = input_ids.shape
        embeds = self.embed(input_ids, pixel_values)
        proprio_embeds = F.linear(proprio, s["proprio_encoder.weight"], s["proprio_encoder.bias"])[:, None]
        positions = {"vlm": torch.arange(1, lp + 1).repeat(b, 1), "proprio": torch.ones(b, 1, dtype=torch.long),
                     "action": torch.arange(2, cfg.chunk_size + 2).repeat(b, 1)}
        mask = self._block_mask(attention_mask)
        action, t, dt = noise.clone(), torch.zeros(b), 1.0 / cfg.num_inference_steps
        for _ in range(cfg.num_inference_steps):
            hidden = {"vlm": embeds, "proprio": proprio_embeds, "action": self._encode_actions(action, t)}
            out = self._joint(hidden, positions, mask)["action"]
            action = action + dt * F.linear(out, s["action_decoder.weight"], s["action_decoder.bias"])
            t = t + dt
        return action.clamp(-cfg.final_action_clip, cfg.final_action_clip)

    @torch.no_grad()
    def text_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """The VLM alone, causal, positions from 0 (InternVL's chat), through its final norm and LM head."""
        b, n, _ = embeds.shape
        mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1).expand(b, n, n)
        hidden = self._joint({"vlm": embeds}, {"vlm": torch.arange(n).repeat(b, 1)}, mask)["vlm"]
        return F.linear(hidden, self.s["internvl_model.language_model.lm_head.weight"])

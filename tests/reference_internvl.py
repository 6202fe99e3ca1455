"""An independent, plain-torch forward of the original InternVLChatModel, written from its description.

It reads original-layout tensors by their original names (fused ``attn.qkv``, ``ls1``, ``mlp1.*``) and runs:
InternViT (bicubic position-embedding resize, pre-norm blocks with layer scale), CLS drop, pixel shuffle v2,
``mlp1`` (LN, Linear, GELU, Linear), and the write of vision features over the ``<IMG_CONTEXT>`` embeddings
(``emb * 0 + vit``). Only the Qwen2 decoder is transformers' own. Used by tests, never by the package.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from transformers import Qwen2Config, Qwen2ForCausalLM


class ReferenceInternVL:
    def __init__(self, state: dict, config: dict, img_context_token_id: int):
        self.s = state
        self.cfg = config
        self.vcfg = config["vision_config"]
        self.ctx_id = img_context_token_id
        llm_cfg = {k: v for k, v in config["llm_config"].items() if k in Qwen2Config().to_dict() or k == "vocab_size"}
        # Plain RoPE with the checkpoint's theta: the original ran Qwen2 on transformers 4.37, which ignored
        # rope_scaling (dynamic NTK would only act beyond max_position_embeddings anyway).
        llm_cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": config["llm_config"]["rope_theta"]}
        self.llm = Qwen2ForCausalLM(Qwen2Config(**llm_cfg)).eval()
        llm_state = {k[len("language_model."):]: v for k, v in state.items() if k.startswith("language_model.")}
        self.llm.load_state_dict(llm_state, strict=True)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = self.s["vision_model.embeddings.position_embedding"]  # (1, 1 + g*g, D)
        g = int((pos.shape[1] - 1) ** 0.5)
        grid = pos[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, -1, h * w).permute(0, 2, 1).to(pos.dtype)
        return torch.cat([pos[:, :1], grid], dim=1)

    def vision(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """All hidden states: the embeddings, then the output of every layer."""
        s, v = self.s, self.vcfg
        p = "vision_model.embeddings."
        x = F.conv2d(pixel_values, s[p + "patch_embedding.weight"], s[p + "patch_embedding.bias"],
                     stride=v["patch_size"])  # (B, D, h, w)
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([s[p + "class_embedding"].expand(b, 1, d), x], dim=1) + self._pos_embed(h, w)
        states = [x]
        heads = v["num_attention_heads"]
        for i in range(v["num_hidden_layers"]):
            q = f"vision_model.encoder.layers.{i}."
            y = F.layer_norm(x, (d,), s[q + "norm1.weight"], s[q + "norm1.bias"], v["layer_norm_eps"])
            qkv = F.linear(y, s[q + "attn.qkv.weight"], s.get(q + "attn.qkv.bias"))
            qkv = qkv.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            attn = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * (d // heads) ** -0.5, dim=-1) @ qkv[2]
            attn = attn.transpose(1, 2).reshape(b, -1, d)
            x = x + s[q + "ls1"] * F.linear(attn, s[q + "attn.proj.weight"], s[q + "attn.proj.bias"])
            y = F.layer_norm(x, (d,), s[q + "norm2.weight"], s[q + "norm2.bias"], v["layer_norm_eps"])
            y = F.linear(F.gelu(F.linear(y, s[q + "mlp.fc1.weight"], s[q + "mlp.fc1.bias"])),
                         s[q + "mlp.fc2.weight"], s[q + "mlp.fc2.bias"])
            x = x + s[q + "ls2"] * y
            states.append(x)
        return states

    @staticmethod
    def pixel_shuffle_v2(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.shape
        x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
        return x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.vision(pixel_values)[self.cfg.get("select_layer", -1)][:, 1:, :]
        side = int(x.shape[1] ** 0.5)
        x = self.pixel_shuffle_v2(x.reshape(x.shape[0], side, side, -1), self.cfg["downsample_ratio"])
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        s = self.s
        x = F.layer_norm(x, (x.shape[-1],), s["mlp1.0.weight"], s["mlp1.0.bias"], 1e-5)
        x = F.gelu(F.linear(x, s["mlp1.1.weight"], s["mlp1.1.bias"]))
        return F.linear(x, s["mlp1.3.weight"], s["mlp1.3.bias"])

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        emb = self.llm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            b, n, c = emb.shape
            emb = emb.reshape(b * n, c)
            selected = input_ids.reshape(-1) == self.ctx_id
            emb[selected] = emb[selected] * 0.0 + self.extract_feature(pixel_values).reshape(-1, c)
            emb = emb.reshape(b, n, c)
        return self.llm(inputs_embeds=emb).logits

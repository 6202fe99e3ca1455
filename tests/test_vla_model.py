"""The VLA model: joint attention parity, the prefix cache, the loss against the release's formulas written out
here, the two flow conventions, mask, positions, prompt, presets and an exact save/load."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from transformers import Qwen2Config

from vlaser.inference.prepare import preset_prompt
from vlaser.inference.types import Picture, Request
from vlaser.vla import flow
from vlaser.vla.config import VLAConfig, preset
from vlaser.vla.expert import ActionExpert, expert_text_config
from vlaser.vla.joint import additive, block_mask, joint_forward, position_ids
from vlaser.vla.policy import VLAPolicy, action_tokens

TASKS = ["Point to the red cube on the table", "pick up the blue bowl"]


@pytest.fixture(scope="module")
def policy(tiny_original):
    return VLAPolicy.from_vlm(tiny_original, preset("tiny"), seed=0)


def _image(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _items(n: int, cfg: VLAConfig, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"images": [_image(seed + i)], "state": torch.rand(cfg.proprio_dim, generator=gen) * 2 - 1,
             "actions": torch.rand(cfg.chunk_size, cfg.action_dim, generator=gen) * 2 - 1,
             "action_mask": torch.ones(cfg.chunk_size, dtype=torch.bool), "task": TASKS[i % 2]} for i in range(n)]


# ---- joint attention and the cache -----------------------------------------------------------------------

def test_prefix_only_causal_equals_language_model(policy):
    model = policy.model
    lm = model.language_model
    embeds = torch.randn(2, 11, lm.config.hidden_size, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(1, 12).expand(2, 11)
    with torch.no_grad():
        want = lm(inputs_embeds=embeds, position_ids=pos).last_hidden_state
        valid = torch.ones(2, 11, dtype=torch.long)
        causal = additive(block_mask(valid, 0, 0, causal_prefix=True), embeds.dtype)
        got = lm.norm(joint_forward([model._prefix_stream(embeds, pos)], causal)[0][0])
        bidirectional = additive(block_mask(valid, 0, 0), embeds.dtype)
        other = lm.norm(joint_forward([model._prefix_stream(embeds, pos)], bidirectional)[0][0])
    assert (got - want).abs().max().item() <= 1e-6
    assert (other - want).abs().max().item() > 1e-2  # the released bidirectional prefix is a different model


def test_cached_sampling_equals_recomputing_the_prefix(policy):
    cfg = policy.config
    items = _items(2, cfg)
    items[1]["task"] = "pick up the blue bowl and place it in the drawer"  # different lengths: padding differs
    batch = policy.collator(items)
    assert batch["attention_mask"].sum(1).unique().numel() == 2
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(2))
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["state"])
    cached = policy.model.sample_actions(*args, noise=noise, use_cache=True)
    plain = policy.model.sample_actions(*args, noise=noise, use_cache=False)
    assert (cached - plain).abs().max().item() <= 1e-6
    assert (cached - noise.clamp(-1, 1)).abs().max().item() > 1e-3  # the steps moved the sample


def test_padding_is_invisible(policy):
    """Changing what sits in the padded prompt slots changes no action."""
    cfg = policy.config
    batch = policy.collator(_items(1, cfg))
    noise = torch.randn(1, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(3))
    ids = batch["input_ids"].clone()
    ids[batch["attention_mask"] == 0] = 5
    a = policy.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                    batch["state"], noise=noise)
    b = policy.model.sample_actions(ids, batch["attention_mask"], batch["pixel_values"], batch["state"], noise=noise)
    assert torch.equal(a, b)


# ---- the loss against the release's formulas, written out independently -----------------------------------

def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[:, None, :, None].float() * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin


def _release_mask(attention_mask, n_action):
    """open-pi-zero's ``build_causal_mask_and_position_ids`` as a loop over the batch."""
    b, lp = attention_mask.shape
    n = lp + 1 + n_action
    mask = torch.full((b, n, n), torch.finfo(torch.float32).min)
    for i, cnt in enumerate(attention_mask.sum(1).tolist()):
        mask[i, :cnt, :cnt] = 0
        mask[i, lp:, :cnt] = 0
    mask[:, lp:lp + 1, lp:lp + 1] = 0
    mask[:, lp + 1:, lp:] = 0
    return mask[:, None]


def _reference_velocity(model, embeds, attention_mask, state, x_t, t, theta, max_period):
    cfg, ex = model.config, model.expert
    b, lp, _ = embeds.shape
    half = ex.config.hidden_size // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(max_period) / (half - 1)))
    temb = torch.cat([(t[:, None] * freq).sin(), (t[:, None] * freq).cos()], -1)
    enc = ex.action_encoder
    a = F.linear(x_t, enc.linear_1.weight, enc.linear_1.bias)
    a = F.linear(torch.cat([temb[:, None].expand(-1, cfg.chunk_size, -1), a], -1), enc.linear_2.weight,
                 enc.linear_2.bias)
    a = F.linear(F.silu(a), enc.linear_3.weight, enc.linear_3.bias)
    p = F.linear(state, ex.proprio_encoder.weight, ex.proprio_encoder.bias)[:, None]
    groups = [embeds, torch.cat([p, a], 1)]
    positions = [torch.arange(1, lp + 1).expand(b, lp), torch.arange(1, cfg.chunk_size + 2).expand(b, -1)]
    mask = _release_mask(attention_mask, cfg.chunk_size)
    for vl, el in zip(model.language_model.layers, ex.layers):
        qs, ks, vs = [], [], []
        for layer, h, pos in zip((vl, el), groups, positions):
            at = layer.self_attn
            x = _rms(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            def split(y, n=h.shape[1], d=at.head_dim):
                return y.view(b, n, -1, d).transpose(1, 2)
            qs.append(_rope(split(F.linear(x, at.q_proj.weight, at.q_proj.bias)), pos, theta))
            ks.append(_rope(split(F.linear(x, at.k_proj.weight, at.k_proj.bias)), pos, theta))
            vs.append(split(F.linear(x, at.v_proj.weight, at.v_proj.bias)))
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, -1)
        out = (w @ v).transpose(1, 2).reshape(b, q.shape[2], -1)
        new = []
        for layer, h, o in zip((vl, el), groups, out.split([g.shape[1] for g in groups], 1)):
            h = h + F.linear(o, layer.self_attn.o_proj.weight)
            y = _rms(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            m = layer.mlp
            y = F.linear(F.silu(F.linear(y, m.gate_proj.weight)) * F.linear(y, m.up_proj.weight), m.down_proj.weight)
            new.append(h + y)
        groups = new
    h = _rms(groups[1][:, 1:], ex.norm.weight, ex.norm.variance_epsilon)
    return F.linear(h, ex.action_decoder.weight, ex.action_decoder.bias)


def test_loss_equals_the_release_formulas(policy):
    model, cfg = policy.model, policy.config
    items = _items(2, cfg, seed=4)
    items[1]["task"] = "pick up the blue bowl and place it in the drawer"
    items[1]["action_mask"] = torch.tensor([True, True, False, False])
    batch = policy.collator(items)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim, generator=gen)
    t = 0.999 * (1 - torch.rand(2, generator=gen) ** (2 / 3))
    with torch.no_grad():
        got = model(**batch, noise=noise, time=t).loss
        embeds = model.embed_prefix(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        sig = 0.001
        x_t = (1 - (1 - sig) * t[:, None, None]) * noise + t[:, None, None] * batch["actions"]
        target = batch["actions"] - (1 - sig) * noise
        theta = model.language_model.config.rope_parameters["rope_theta"]
        v = _reference_velocity(model, embeds, batch["attention_mask"], batch["state"], x_t, t, theta, 100.0)
        m = batch["action_mask"][..., None].float()
        want = (((v - target) ** 2) * m).sum() / (m.sum() * cfg.action_dim)
    assert abs(got.item() - want.item()) <= 1e-6
    unmasked = model(**{**batch, "action_mask": torch.ones_like(batch["action_mask"])}, noise=noise, time=t).loss
    assert abs(unmasked.item() - want.item()) > 1e-4  # the mask matters


def test_loss_averages_the_valid_steps_only(policy):
    """Padded steps add nothing to the loss (their noisy inputs still reach the other tokens, as released)."""
    cfg = policy.config
    items = _items(2, cfg, seed=6)
    items[0]["action_mask"] = torch.tensor([True, True, True, False])
    batch = policy.collator(items)
    noise, t = torch.randn(2, cfg.chunk_size, cfg.action_dim), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        out = policy.model(**batch, noise=noise, time=t)
    target = batch["actions"] - 0.999 * noise
    err = ((out.velocity - target) ** 2).mean(-1)
    want = torch.cat([err[0, :3], err[1]]).mean()
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-6)


# ---- flow conventions ------------------------------------------------------------------------------------

def test_conventions_map_both_ways():
    gen = torch.Generator().manual_seed(7)
    eps, a = torch.randn(5, 4, 3, generator=gen), torch.randn(5, 4, 3, generator=gen)
    t = torch.tensor([0.0, 0.25, 0.5, 0.625, 0.99609375])  # dyadic: 1 - (1 - t) == t exactly
    release = flow.interpolate(eps, a, t, "release", 0.0)
    openpi = flow.interpolate(eps, a, flow.release_time_to_openpi(t), "openpi", 0.0)
    assert torch.equal(release, openpi)
    assert torch.equal(flow.interpolate(eps, a, t, "openpi", 0.0),
                       flow.interpolate(eps, a, flow.release_time_to_openpi(t), "release", 0.0))
    # velocities: the release's d x / d t is A - eps, openpi's is eps - A (its time runs the other way)
    assert torch.equal(flow.velocity_target(eps, a, "release", 0.0), -flow.velocity_target(eps, a, "openpi", 0.0))
    # with sigma > 0 the release's path ends at (1 - sigma) eps-weight 0.001 instead of 0
    x1 = flow.interpolate(eps, a, torch.ones(5), "release", 0.001)
    assert torch.allclose(x1, 0.001 * eps + a)


def test_euler_reaches_the_data_end_in_both_conventions():
    """With the exact velocity, each convention's Euler schedule carries noise to the actions."""
    gen = torch.Generator().manual_seed(8)
    eps, a = torch.randn(3, 4, 2, generator=gen), torch.randn(3, 4, 2, generator=gen)
    for convention in ("release", "openpi"):
        t0, dt = flow.euler_schedule(10, convention)
        x = eps.clone()
        for _ in range(10):
            x = x + dt * flow.velocity_target(eps, a, convention, 0.0)
        assert torch.allclose(x, a, atol=1e-5), convention


def test_time_sampling_ranges():
    gen = torch.Generator().manual_seed(9)
    r = flow.sample_time(20000, "release", gen)
    o = flow.sample_time(20000, "openpi", torch.Generator().manual_seed(9))
    assert r.min() >= 0 and r.max() <= 0.999
    assert torch.allclose(o, 0.999 - r + 0.001, atol=1e-6)  # same z: t_release = 0.999 (1 - z)
    # z ~ Beta(1.5, 1) has mean 0.6, so the release's t has mean 0.999 * 0.4
    assert abs(r.mean().item() - 0.999 * 0.4) < 0.01


def test_time_embedding_values():
    t = torch.tensor([0.0, 0.5])
    emb = flow.time_embedding(t, 8, 100.0, "release")
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freq = torch.tensor([100.0 ** (-i / 3) for i in range(4)])
    assert torch.allclose(emb[1], torch.cat([(0.5 * freq).sin(), (0.5 * freq).cos()]), atol=1e-7)
    openpi = flow.time_embedding(t, 8, 4.0, "openpi")
    periods = torch.tensor([4e-3 * (4.0 / 4e-3) ** (i / 3) for i in range(4)])
    assert torch.allclose(openpi[1], torch.cat([(0.5 * 2 * math.pi / periods).sin(),
                                                (0.5 * 2 * math.pi / periods).cos()]), atol=1e-5)


# ---- mask, positions, prompt, presets --------------------------------------------------------------------

def test_block_mask_hand_checked():
    allowed = block_mask(torch.tensor([[1, 1, 0]]), 1, 2)[0].int()
    assert allowed.tolist() == [[1, 1, 0, 0, 0, 0],
                                [1, 1, 0, 0, 0, 0],
                                [1, 1, 0, 0, 0, 0],  # a padding row (never used) sees the prefix
                                [1, 1, 0, 1, 0, 0],
                                [1, 1, 0, 1, 1, 1],
                                [1, 1, 0, 1, 1, 1]]


def test_positions_restart_and_contiguous():
    valid = torch.tensor([[1, 1, 1, 0]])
    prefix, expert = position_ids(valid, 1, 4, "restart")
    assert prefix.tolist() == [[1, 2, 3, 4]] and expert.tolist() == [[1, 2, 3, 4, 5]]
    prefix, expert = position_ids(valid, 1, 4, "contiguous")
    assert prefix[0, :3].tolist() == [0, 1, 2] and expert.tolist() == [[3, 4, 5, 6, 7]]


def test_prompt_is_the_release_string():
    request = Request("put the spoon on the towel", [Picture("camera")])
    got = preset_prompt("vla", request, 3)
    assert got == ("<|im_start|>system\nNone<|im_end|>\n<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 3
                   + "</img>\nput the spoon on the towel<|im_end|>\n<|im_start|>assistant\n")
    two = preset_prompt("vla", Request("go", [Picture("a"), Picture("b")], system="S"), 2)
    assert two == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nImage-1: <img>" + "<IMG_CONTEXT>" * 2
                   + "</img>\nImage-2: <img>" + "<IMG_CONTEXT>" * 2 + "</img>\ngo<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="unknown prompt preset"):
        preset_prompt("nope", request, 3)


def _internvl3_2b_text_config() -> Qwen2Config:
    return Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=32768, vocab_size=151674)


def test_2b_expert_shapes():
    text = _internvl3_2b_text_config()
    for name, proprio, act_steps in (("vlaser_2b_bridge", 7, 4), ("vlaser_2b_fractal", 8, 2)):
        cfg = preset(name)
        assert (cfg.proprio_dim, cfg.action_dim, cfg.chunk_size, cfg.act_steps) == (proprio, 7, 4, act_steps)
        assert (cfg.prefix_len, cfg.time_max_period, cfg.num_action_tokens_added) == (384, 100.0, 256)
        ecfg = expert_text_config(text, cfg)
        assert (ecfg.hidden_size, ecfg.intermediate_size, ecfg.num_hidden_layers, ecfg.num_attention_heads,
                ecfg.num_key_value_heads, ecfg.head_dim) == (768, 8960, 28, 12, 2, 128)
        assert ecfg.rope_parameters == text.rope_parameters
    assert preset("vlaser_2b_fractal").sticky_gripper_steps == 15
    assert text.hidden_size == 1536  # the copy left the backbone's config alone
    with torch.device("meta"):
        expert = ActionExpert(text, preset("vlaser_2b_bridge"))
    n_layers = sum(p.numel() for p in expert.layers.parameters())
    assert abs(n_layers / 1e6 - 655.3) < 1.0  # the reference's count for the 2B expert's layers
    assert expert_text_config(text, preset("vlaser_8b_bridge")).intermediate_size == 5600


def test_release_adds_256_action_tokens(tiny_original):
    pol = VLAPolicy.from_vlm(tiny_original, preset("tiny", num_action_tokens_added=256))
    tok = pol.tokenizer
    assert tok.convert_tokens_to_ids("<a0>") == len(tok) - 256 and tok.convert_tokens_to_ids("<a255>") == len(tok) - 1
    assert pol.model.vlm.get_input_embeddings().weight.shape[0] == len(tok)
    assert action_tokens(2) == ["<a0>", "<a1>"]


# ---- saving and the inference API ------------------------------------------------------------------------

class _Scale:
    """A normaliser stand-in: x / 2 in, y * 2 out (the policy only calls these two methods)."""

    def normalize(self, key, x):
        return np.asarray(x) / 2

    def unnormalize(self, key, y):
        return np.asarray(y) * 2


def test_save_load_exact(policy, tmp_path):
    stats = {"mode": "quantile", "features": {"action": {"q01": [0.0, 0.0], "q99": [1.0, 1.0]}}}
    out = policy.save_pretrained(tmp_path / "vla", norm_stats=stats)
    for name in ("config.json", "model.safetensors", "action_expert.safetensors", "vla_config.json",
                 "norm_stats.json"):
        assert (out / name).is_file(), name
    loaded = VLAPolicy.from_pretrained(out, normalizer=_Scale())
    assert loaded.config == policy.config and loaded.norm_stats == stats
    want = policy.model.state_dict()
    got = loaded.model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    noise = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    a = loaded.predict([_image(1)], np.full(4, 0.4), TASKS[0], noise=noise)
    b = VLAPolicy(policy.model, policy.tokenizer, _Scale()).predict([_image(1)], np.full(4, 0.4), TASKS[0],
                                                                    noise=noise)
    assert a.shape == (4, 2) and np.array_equal(a, b)
    assert np.abs(a).max() <= 2.0  # clamped to [-1, 1] before un-normalising (x2)


def test_predict_rejects_a_wrong_state(policy):
    with pytest.raises(Exception, match="state has 3 values"):
        policy.predict_normalized([_image(0)], np.zeros(3), TASKS[0])


# ---- overfitting ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_overfits_eight_chunks(tiny_original, capsys):
    torch.manual_seed(0)
    pol = VLAPolicy.from_vlm(tiny_original, preset("tiny"), seed=0)
    cfg = pol.config
    items = _items(8, cfg, seed=10)
    for i, item in enumerate(items):
        item["task"] = f"{TASKS[i % 2]} {i}"
    batch = pol.collator(items)
    noise = torch.randn(8, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(11))
    opt = torch.optim.AdamW(pol.model.parameters(), lr=1e-3)
    start, err, step = time.perf_counter(), float("inf"), 0
    for step in range(1, 5001):
        pol.model.train()
        loss = pol.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pol.model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            pol.model.eval()
            pred = pol.model.sample_actions(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                            batch["state"], noise=noise)
            err = (pred - batch["actions"]).abs().mean().item()
            if err <= 0.08:
                break
    with capsys.disabled():
        print(f"\noverfit: mean |a - a*| = {err:.4f} after {step} steps, {time.perf_counter() - start:.1f} s")
    assert err <= 0.08


def test_the_backbone_loads_with_an_attention_that_applies_the_block_mask(tiny_original, monkeypatch, tmp_path):
    """Where ``flash_attn`` is installed ``load_model`` picks flash_attention_2, which ignores the 4-D block mask;
    the policy loads its backbone with SDPA whatever the availability check says, fresh or saved."""
    from vlaser.model import loading

    monkeypatch.setattr(loading, "_attn_implementation", lambda device: "flash_attention_2")  # flash_attn found
    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny"), seed=0)
    assert policy.model.vlm.config.text_config._attn_implementation == "sdpa"
    policy.save_pretrained(tmp_path / "p")
    assert VLAPolicy.from_pretrained(tmp_path / "p").model.vlm.config.text_config._attn_implementation == "sdpa"


def test_a_flash_attention_backbone_is_switched_to_sdpa_with_one_logged_line(tiny_original, caplog):
    import logging

    import vlaser
    from vlaser.vla.model import VLAModel

    vlm, _ = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    vlm.config.text_config._attn_implementation = "flash_attention_2"  # as if loaded with it
    with caplog.at_level(logging.WARNING, logger="vlaser.vla.model"):
        model = VLAModel(vlm, preset("tiny"))
    assert [r.getMessage() for r in caplog.records] == [
        "VLA backbone: flash_attention_2 ignores the joint attention's 4-D block mask; its language model runs on "
        "sdpa instead"]
    assert model.language_model.layers[0].self_attn.config._attn_implementation == "sdpa"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlaser.vla.model"):
        VLAModel(vlm, preset("tiny"))
    assert not caplog.records  # sdpa already: nothing to say

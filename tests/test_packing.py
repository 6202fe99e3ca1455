"""Packing changes nothing but speed: per-sample losses, weighting, bounds, and training with packs."""

import json

import pytest
import torch
from PIL import Image

from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.data.packing import PackedCollator, PackedSFTDataset, pack_samples
from vlaser.model.loss import IGNORE_INDEX, len2weight, per_token_ce
from vlaser.train.sft import train


@pytest.fixture(scope="module")
def dataset(tiny_original, tmp_path_factory):
    from vlaser.model.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("packdata")
    rows = []
    for i, size in enumerate([(56, 56), (200, 56), (56, 150), (90, 90)]):
        Image.new("RGB", size, (40 * i, 255 - 40 * i, 90)).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "Describe the scene" + " please" * i},
            {"from": "gpt", "value": "A table with a cube" + " and a bowl" * (3 - i)}]})
    for i in range(3):
        rows.append({"conversations": [{"from": "human", "value": f"Count to {i}"},
                                       {"from": "gpt", "value": " ".join(str(k) for k in range(i + 2))}]})
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "meta.json").write_text(json.dumps({"d": {"root": str(root), "annotation": str(root / "d.jsonl")}}))
    config = DataConfig(num_image_token=4, force_image_size=56, max_dynamic_patch=4, dynamic_image_size=True,
                        use_thumbnail=True)
    return SFTDataset(root / "meta.json", load_tokenizer(tiny_original), config)


def _per_sample_ce(model, batch, lengths):
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")}, loss_impl="plain")
    ce = per_token_ce(out.logits, batch["labels"])[0]  # (T-1,)
    result, start = [], 0
    for n in lengths:
        result.append(ce[start:start + n - 1])  # predictions within the sample only
        start += n
    return result


@pytest.fixture(params=["transformers block mask", "per-sample sdpa"])
def packed_model(request, tiny_original):
    import vlaser
    from vlaser.model.packed_attention import use_packed_attention

    model, tok = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    if request.param == "per-sample sdpa":
        use_packed_attention(model)
    return model, tok


def test_packed_row_gives_each_sample_its_own_losses(packed_model, dataset):
    model, tok = packed_model
    samples = [dataset[i] for i in range(len(dataset))]
    packed = PackedCollator(tok.pad_token_id)([pack_samples(samples, "token")])
    assert "attention_mask" not in packed
    together = _per_sample_ce(model, packed, [len(s["input_ids"]) for s in samples])
    for sample, ce in zip(samples, together):
        n = len(sample["input_ids"])
        single = {"input_ids": sample["input_ids"][None], "labels": sample["labels"][None],
                  "attention_mask": torch.ones(1, n, dtype=torch.long), "pixel_values": sample["pixel_values"],
                  "image_flags": sample["image_flags"]}
        alone = _per_sample_ce(model, single, [n])[0]
        torch.testing.assert_close(ce, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_packed_loss_is_weighted_like_internvl(packed_model, dataset, reduction):
    model, tok = packed_model
    samples = [dataset[i] for i in range(len(dataset))]
    batch = PackedCollator(tok.pad_token_id)([pack_samples(samples, reduction)])
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")}).loss
    numerator = denominator = 0.0
    for ce, s in zip(_per_sample_ce(model, batch, [len(x["input_ids"]) for x in samples]), samples):
        supervised = s["labels"][1:] != IGNORE_INDEX
        weight = len2weight(int(supervised.sum()), reduction)
        numerator += weight * float(ce[supervised].sum())
        denominator += weight * int(supervised.sum())
    assert float(loss) == pytest.approx(numerator / denominator, rel=1e-5)


def test_packs_respect_bounds_and_hold_every_sample_once(dataset):
    lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    limit = max(lengths) + 10
    packer = PackedSFTDataset(dataset, max_packed_tokens=limit, num_images_expected=12, max_buffer_size=3)
    epoch = list(packer._epoch(0, []))
    assert sorted(n for p in epoch for n in p["sample_lengths"]) == sorted(lengths)
    assert all(sum(p["sample_lengths"]) <= limit and p["pixel_values"].shape[0] <= 12 for p in epoch)
    assert len(epoch) < len(lengths)  # samples do share rows
    first = next(iter(packer))
    assert torch.equal(first["input_ids"], epoch[0]["input_ids"])


def test_oversized_samples_are_skipped_and_named(dataset):
    lengths = sorted(len(dataset[i]["input_ids"]) for i in range(len(dataset)))
    limit = lengths[len(lengths) // 2]
    too_long = sum(n > limit for n in lengths)
    packer = PackedSFTDataset(dataset, max_packed_tokens=limit, num_images_expected=40)
    stream = iter(packer)
    packs = [next(stream) for _ in range(2 * len(lengths))]  # two epochs at least: skips left over carry on
    reasons = [s.reason for p in packs for s in p["skipped"]]
    assert len(reasons) >= too_long and all("exceed a pack" in r for r in reasons)
    with pytest.raises(ValueError, match="no sample fits"):
        list(PackedSFTDataset(dataset, max_packed_tokens=lengths[0] - 1, num_images_expected=40)._epoch(0, []))


def test_training_with_packing(tiny_original, tmp_path, monkeypatch):
    from transformers import AttentionInterface

    from test_train import colour_data, flags, losses
    from vlaser.model import packed_attention

    seen = []
    real = packed_attention.packed_sdpa

    def recording(*args, **kwargs):
        seen.append(kwargs.get("cu_seq_lens_host"))
        return real(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "packed_sdpa", recording)  # what `vlaser train` registers
    monkeypatch.setitem(AttentionInterface._global_mapping, packed_attention.NAME, real)  # restored afterwards
    meta = colour_data(tmp_path, n_text=3)
    common = ["--use_packed_ds", "True", "--max_packed_tokens", "512", "--num_images_expected", "20",
              "--per_device_train_batch_size", "1", "--max_steps", "40", "--loss_reduction", "square"]
    out = train(flags(tiny_original, meta, tmp_path / "out", *common))
    curve = losses(out)
    assert len(curve) == 40 and curve[0] / min(curve[-5:]) > 5, curve
    assert seen and all(isinstance(bounds, tuple) and bounds[0] == 0 for bounds in seen)  # the Trainer passes them on
    with pytest.raises(ValueError, match="max_steps"):
        train(flags(tiny_original, meta, tmp_path / "o2", "--use_packed_ds", "True"))


def _twenty_steps(tiny_original, batches, reduction, loss_impl):
    """(loss, gradient norm) of 20 AdamW steps cycling through ``batches``."""
    import vlaser

    torch.manual_seed(0)
    model, _ = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trace = []
    for step in range(20):
        batch = {k: v for k, v in batches[step % len(batches)].items() if k not in ("skipped", "n_tokens")}
        loss = model(**batch, loss_reduction=reduction, loss_impl=loss_impl).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        optimizer.step()
        optimizer.zero_grad()
        trace.append((loss.item(), norm.item()))
    return torch.tensor(trace, dtype=torch.float64)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_chunked_loss_trains_like_the_plain_one(tiny_original, dataset, monkeypatch, packed, reduction):
    from vlaser.data.collator import SFTCollator
    from vlaser.model import loss as loss_module
    from vlaser.model.tokenizer import load_tokenizer

    pad = load_tokenizer(tiny_original).pad_token_id
    samples = [dataset[i] for i in range(len(dataset))]
    if packed:
        batches = [PackedCollator(pad)([pack_samples(samples[:4], reduction)]),
                   PackedCollator(pad)([pack_samples(samples[4:], reduction)])]
    else:
        batches = [SFTCollator(pad)(samples[i:i + 2]) for i in range(0, len(samples), 2)]
    plain = _twenty_steps(tiny_original, batches, reduction, "plain")
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 11)  # a few tokens per chunk: many chunks per row
    chunked = _twenty_steps(tiny_original, batches, reduction, "chunked")
    assert plain[-1, 0] < plain[0, 0]  # it trains
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=0)


def test_generation_is_unchanged_by_packed_attention(tiny_original):
    import vlaser
    from vlaser.model.packed_attention import use_packed_attention

    model, tok = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    questions = ["Hi?", "Describe the scene in one long sentence, please."]  # different lengths: left padding
    gen = dict(max_new_tokens=12, do_sample=False)
    before = model.batch_chat(tok, None, questions, dict(gen)), model.chat(tok, None, questions[1], dict(gen))
    use_packed_attention(model)
    after = model.batch_chat(tok, None, questions, dict(gen)), model.chat(tok, None, questions[1], dict(gen))
    assert after == before


@pytest.mark.parametrize("every", [0, 1, 2])
def test_checkpointing_every_kth_layer_keeps_the_gradients(tiny_original, dataset, every):
    import vlaser
    from vlaser.train.trainer import checkpoint_every, decoder_layers

    model, tok = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    model.train()
    batch = PackedCollator(tok.pad_token_id)([pack_samples([dataset[i] for i in range(3)], "token")])
    batch = {k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")}
    model(**batch).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    checkpoint_every(model, every)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [
        every > 0 and i % every == 0 for i in range(len(decoder_layers(model)))]
    model(**batch).loss.backward()
    for want, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


def _row(lengths: list[int]) -> dict:
    """A packed row of text-only samples of the given lengths."""
    return pack_samples([{"input_ids": torch.arange(n) + 10, "labels": torch.arange(n) + 10,
                          "pixel_values": torch.zeros(0, 3, 2, 2), "image_flags": torch.zeros(0, dtype=torch.long)}
                         for n in lengths], "token")


def test_collator_gives_the_sample_boundaries_once():
    from vlaser.model.packed_attention import _segments

    batch = PackedCollator(0)([_row([3, 5]), _row([4])])  # rows of 8 tokens: the second gets a 4-token pad block
    assert batch["cu_seq_lens_host"] == (0, 3, 8, 12, 16)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert batch[key].dtype == torch.int32 and batch[key].tolist() == [0, 3, 8, 12, 16]
    assert batch["max_length_q"] == batch["max_length_k"] == 5 and isinstance(batch["max_length_q"], int)
    from_positions = [b * 8 + start for b in range(2) for start, _ in _segments(batch["position_ids"][b])] + [16]
    assert tuple(from_positions) == batch["cu_seq_lens_host"]
    assert PackedCollator(0)([_row([2, 6])])["cu_seq_lens_host"] == (0, 2, 8)  # no padding, no pad block


def _without_boundaries(batch: dict) -> dict:
    drop = ("skipped", "n_tokens", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cu_seq_lens_host")
    return {k: v for k, v in batch.items() if k not in drop}


def _loss_and_grads(model, inputs: dict):
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.fixture
def packed_batch(tiny_original, dataset):
    """The tiny model on per-sample attention and two packed rows of different lengths (one padded)."""
    import vlaser
    from vlaser.model.packed_attention import use_packed_attention

    model, tok = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    use_packed_attention(model)
    model.train()
    samples = [dataset[i] for i in range(len(dataset))]
    batch = PackedCollator(tok.pad_token_id)([pack_samples(samples[:4], "token"), pack_samples(samples[4:], "token")])
    assert batch["cu_seq_lens_host"][-1] == batch["input_ids"].numel() and len(batch["cu_seq_lens_host"]) == 9
    return model, batch


def test_boundaries_from_the_batch_give_bit_equal_loss_and_grads(packed_batch):
    model, batch = packed_batch
    from_positions = _loss_and_grads(model, _without_boundaries(batch))
    from_batch = _loss_and_grads(model, {k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")})
    assert torch.equal(from_batch[0], from_positions[0])
    assert len(from_batch[1]) == len(from_positions[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(from_batch[1], from_positions[1]))


def test_boundaries_from_the_batch_read_nothing_back_per_layer(packed_batch, monkeypatch):
    """With the batch's boundaries no layer copies device values to the host, in forward or in recompute."""
    from transformers import AttentionInterface

    from vlaser.model import packed_attention
    from vlaser.train.trainer import checkpoint_every

    model, batch = packed_batch
    checkpoint_every(model, 1)
    inside, reads, calls = [False], [], []

    def watched(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_host"))
        inside[0] = True
        try:
            return packed_attention.packed_sdpa(*args, **kwargs)
        finally:
            inside[0] = False

    def counting(name, original):
        def wrapper(*args, **kwargs):
            if inside[0]:
                reads.append(name)
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setitem(AttentionInterface._global_mapping, packed_attention.NAME, watched)
    for name in ("tolist", "item", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
    layers = model.config.text_config.num_hidden_layers

    _loss_and_grads(model, _without_boundaries(batch))  # the check can fail: position ids are read back
    assert len(calls) == 2 * layers and "tolist" in reads and "torch.nonzero" in reads
    calls.clear()
    reads.clear()
    _loss_and_grads(model, {k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")})
    assert calls == [batch["cu_seq_lens_host"]] * (2 * layers)  # they reach every layer, forward and recompute
    assert reads == []


@pytest.mark.gpu
def test_cuda_varlen_kernel_matches_per_sample_sdpa():
    """torch's variable-length kernel (grouped KV heads, bf16) against SDPA per sample, with no host sync."""
    from vlaser.model import packed_attention

    torch.manual_seed(0)
    lengths = [[37, 1, 90], [64, 64]]  # two rows of 128 tokens
    bounds = tuple(int(n) for n in torch.tensor([0] + [n for row in lengths for n in row]).cumsum(0))
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths]).cuda()
    q = torch.randn(2, 8, 128, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 2, 128, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    module = torch.nn.Module().eval()
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fast = packed_attention.packed_sdpa(module, q, k, v, None, scaling=0.125, cu_seq_lens_q=cu, max_length_q=90,
                                            cu_seq_lens_host=bounds)[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert packed_attention._kernel["cuda"] is not None, "the varlen kernel did not run"
    fast_grads = torch.autograd.grad(fast.float().square().sum(), (q, k, v))
    slow = packed_attention.packed_sdpa(module, q, k, v, None, scaling=0.125, position_ids=positions)[0]
    slow_grads = torch.autograd.grad(slow.float().square().sum(), (q, k, v))
    torch.testing.assert_close(fast, slow, atol=2e-3, rtol=1.6e-2)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=1.6e-2)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 13, 43, 44, 1000, None])
def test_the_chunked_loss_cuts_chunks_of_the_tokens_asked_and_equals_the_plain_one(monkeypatch, chunk_tokens):
    """43 supervised tokens (of 2 rows x 25, some ignored) in chunks of the size asked (the last one shorter), or
    of ``CHUNK_TOKENS`` by default; loss and both gradients equal the plain loss's within 1e-5."""
    import torch.utils.checkpoint

    from vlaser.model import loss as loss_module
    from vlaser.model.loss import chunked_lm_loss, weighted_lm_loss

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 16, generator=gen))
    hidden = torch.randn(2, 25, 16, generator=gen, dtype=torch.float32).requires_grad_()
    labels = torch.randint(0, 50, (2, 25), generator=gen)
    labels[0, :3] = labels[1, 10:13] = IGNORE_INDEX  # 48 predicted positions (labels 1..24), 5 ignored
    weights = torch.rand(2, 25, generator=gen)
    chunks, real = [], torch.utils.checkpoint.checkpoint

    def counting(fn, head, hidden, *args, **kwargs):
        chunks.append(hidden.shape[0])
        return real(fn, head, hidden, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 5)
    chunked = chunked_lm_loss(head, hidden, labels, "sample", weights, chunk_tokens=chunk_tokens)
    size = chunk_tokens or 5
    assert chunks == [size] * (43 // size) + ([43 % size] if 43 % size else [])
    chunked.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    plain = weighted_lm_loss(head(hidden), labels, "sample", weights)
    plain.backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=0)
    for got, want in zip(grads, (hidden.grad, head.weight.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="need chunk_tokens >= 1, got 0"):
        chunked_lm_loss(head, hidden, labels, chunk_tokens=0)

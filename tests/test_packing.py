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


def test_training_with_packing(tiny_original, tmp_path):
    from test_train import colour_data, flags, losses

    meta = colour_data(tmp_path, n_text=3)
    common = ["--use_packed_ds", "True", "--max_packed_tokens", "512", "--num_images_expected", "20",
              "--per_device_train_batch_size", "1", "--max_steps", "40", "--loss_reduction", "square"]
    out = train(flags(tiny_original, meta, tmp_path / "out", *common))
    curve = losses(out)
    assert len(curve) == 40 and curve[0] / min(curve[-5:]) > 5, curve
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
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 1000)  # a few tokens per chunk: many chunks per row
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

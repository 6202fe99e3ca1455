"""The hot paths read nothing back from the device, proven on the CPU by watching every aten op: the engine's
fixed-shape decode step (what a CUDA graph captures) makes no host read; a packed training step makes a fixed
number, none per layer. The tiny checkpoints carry InternVL3-2B's real ``rope_scaling`` (dynamic NTK, factor 2.0
over 32768 positions), whose transformers update reads the host in every forward; the static step runs on fixed
frequencies instead, equal to the dynamic ones within ``max_position_embeddings`` (bit for bit)."""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from test_inference_engine import QUESTIONS, _prepared
from vlaser.data.packing import PackedCollator, pack_samples
from vlaser.errors import UserInputError
from vlaser.inference import GenerationParams
from vlaser.inference.engine import Engine, static_buffers
from vlaser.model.rope import fixed_rotary

aten = torch.ops.aten
#: ops whose result is a Python value, or whose output shape depends on the values: each waits for the device
READS = {aten._local_scalar_dense, aten.is_nonzero, aten.item, aten.equal, aten.allclose, aten.nonzero,
         aten.masked_select, aten.masked_scatter_backward, aten.unique_consecutive, aten._unique2, aten.unique_dim,
         aten.bincount}
INTERNVL3_ROPE = {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}  # InternVL3-2B's llm_config


def _read(func, args, kwargs) -> bool:
    """Whether one aten call reads device values on the host (or would, on a GPU)."""
    if func._overloadpacket in READS or func is aten.repeat_interleave.Tensor:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):  # a boolean mask: nonzero
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if func is aten.copy_.default:  # a device-to-host copy
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    if func is aten._to_copy.default:
        to = kwargs.get("device")
        return args[0].device.type != "cpu" and to is not None and torch.device(to).type == "cpu"
    return False


class HostReads(TorchDispatchMode):
    """Records ``(op, caller)`` for every host read inside the block; ``tolist`` (never dispatched) too."""

    def __init__(self):
        super().__init__()
        self.reads: list[tuple[str, str]] = []
        self._tolist = torch.Tensor.tolist

    def _record(self, name: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename]
        self.reads.append((name, f"{frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _read(func, args, kwargs or {}):
            self._record(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        mode = self

        def tolist(tensor):
            mode._record("Tensor.tolist")
            return mode._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def test_the_watcher_sees_each_kind_of_host_read():
    t = torch.tensor([1, 2, 3])
    with HostReads() as mode:
        t.sum() + t * 2  # device work only
        assert mode.reads == []
        int(t[0]), torch.is_nonzero(t[1] > 1), t[t > 1], t.nonzero(), t.tolist(), torch.equal(t, t)
        t.masked_select(t > 2), bool(t[2] > 1)
    assert [name for name, _ in mode.reads] == [
        "aten._local_scalar_dense.default", "aten._local_scalar_dense.default", "aten.index.Tensor",  # is_nonzero too
        "aten.nonzero.default", "Tensor.tolist", "aten.equal.default", "aten.masked_select.default",
        "aten._local_scalar_dense.default"]
    assert all(where.startswith("test_capture_safe.py:") for _, where in mode.reads)


@pytest.fixture(scope="module")
def vlm(loaded):
    from vlaser import VLM

    model, tokenizer = loaded
    text = model.config.text_config
    assert {k: text.rope_parameters[k] for k in INTERNVL3_ROPE} == INTERNVL3_ROPE  # the real rope_scaling
    assert text.max_position_embeddings == 32768
    return VLM(model, tokenizer)


def _watched_steps(engine, monkeypatch) -> tuple[list, list]:
    """Runs every static decode step under :class:`HostReads`: (reads, logits) of each step."""
    reads, logits, step = [], [], engine._static_step

    def watched(inputs):
        with HostReads() as mode:
            out = step(inputs)
        reads.append(mode.reads)
        logits.append(out.clone())
        return out

    monkeypatch.setattr(engine, "_static_step", watched)
    return reads, logits


def _items(vlm, n=4):
    pairs = [_prepared(vlm, size, q) for size, q in QUESTIONS[:n]]
    return [p for p, _ in pairs], [GenerationParams(max_new_tokens=k) for k in (9, 3, 9, 6)[:n]]


def test_the_static_decode_step_reads_nothing_from_the_host(vlm, monkeypatch):
    items, params = _items(vlm)
    engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=4, static_capacity=4096)
    reads, _ = _watched_steps(engine, monkeypatch)
    engine.generate(items, params)
    assert len(reads) >= 8  # one per decode step, buckets 4, 2 and 1
    assert reads == [[]] * len(reads)


def test_fixed_frequencies_give_the_dynamic_path_bit_for_bit(vlm, monkeypatch):
    """Logits and answers of the static step on fixed frequencies equal those on the model's dynamic rotary."""
    items, params = _items(vlm)
    runs = []
    for rotary in ("fixed", "dynamic"):
        engine = Engine(vlm.model, vlm.tokenizer, max_batch_size=4, static_capacity=4096)
        assert engine._rotary is not None and engine._rotary.rope_type == "default"
        if rotary == "dynamic":
            engine._rotary = None  # the model's own rotary embedding, with its per-step update
        _, logits = _watched_steps(engine, monkeypatch)
        runs.append((engine.generate(items, params), logits))
    (fixed, fixed_logits), (dynamic, dynamic_logits) = runs
    assert fixed == dynamic
    assert len(fixed_logits) == len(dynamic_logits) > 0
    assert all(torch.equal(a, b) for a, b in zip(fixed_logits, dynamic_logits))
    assert vlm.model.model.language_model.rotary_emb.rope_type == "dynamic"  # the model's own is back


def test_fixed_rotary_equals_the_dynamic_one_up_to_the_bound_and_not_past_it(vlm):
    import copy

    lm = vlm.model.model.language_model
    fixed, dynamic = fixed_rotary(lm, 32768), copy.deepcopy(lm.rotary_emb)  # the shared model stays as it is
    x = torch.zeros(1, 1, 8)
    within = torch.tensor([[0, 1, 7, 1000, 32767]])
    assert all(torch.equal(a, b) for a, b in zip(fixed(x, within), dynamic(x, within)))
    past = torch.tensor([[0, 1, 40000]])  # dynamic NTK rescales once a sequence passes 32768 positions
    assert not torch.equal(fixed(x, past)[0], dynamic(x, past)[0])
    dynamic(x, within[:, :4])  # back under the bound: transformers resets the frequencies
    assert torch.equal(dynamic.inv_freq, fixed.inv_freq)
    assert torch.equal(fixed_rotary(lm, 8).inv_freq, fixed.inv_freq)  # whatever the bound below it


def test_a_static_capacity_over_max_position_embeddings_is_refused(vlm):
    with pytest.raises(UserInputError, match="static_capacity 32769 is over the checkpoint's "
                                             "max_position_embeddings of 32768.*'dynamic' rope_scaling"):
        Engine(vlm.model, vlm.tokenizer, static_capacity=32769)
    assert Engine(vlm.model, vlm.tokenizer, static_capacity=32768)._rotary is not None


@pytest.mark.parametrize(("rope", "fixed"), [(None, False), ({"rope_type": "linear", "factor": 2.0}, False),
                                             (INTERNVL3_ROPE, True)])
def test_only_a_dynamic_rotary_embedding_gets_a_fixed_copy(rope, fixed):
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rope_scaling=rope)
    copy = fixed_rotary(Qwen2Model(config), 4096 if not fixed else 64)  # a fixed rope has no bound to check
    assert (copy is not None) == fixed


def test_static_inputs_are_staged_in_the_device_buffer_itself_on_the_cpu():
    """On the CPU there is nothing to upload: the step's inputs are written straight into its buffer."""
    inputs, staged = static_buffers((3, 4), torch.device("cpu"))
    assert staged is inputs and inputs.shape == (3, 4) and inputs.dtype == torch.long


@pytest.mark.gpu
def test_static_inputs_go_up_from_pinned_memory_without_blocking(tiny_original, monkeypatch):
    import vlaser
    from vlaser import VLM

    model, tokenizer = vlaser.load_model(tiny_original, dtype=torch.float32, device="cuda")
    vlm = VLM(model, tokenizer)
    inputs, staged = static_buffers((3, 4), model.device)
    assert inputs.is_cuda and staged.device.type == "cpu" and staged.is_pinned()
    engine = Engine(model, tokenizer, max_batch_size=4, static_capacity=4096)
    uploads, reads, decode = [], [], engine._static_decode

    class Uploads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten.copy_.default and args[0].is_cuda and args[1].device.type == "cpu":
                uploads.append((kwargs.get("non_blocking", args[2] if len(args) > 2 else False), args[1].is_pinned()))
            return func(*args, **kwargs)

    def watched(rows):
        with Uploads():
            return decode(rows)

    monkeypatch.setattr(engine, "_static_decode", watched)
    reads, _ = _watched_steps(engine, monkeypatch)
    engine.generate(*_items(vlm))
    assert uploads and set(uploads) == {(True, True)}  # every upload: non_blocking, from pinned memory
    assert reads and reads == [[]] * len(reads)  # and the step itself reads nothing back, on a real device


def _packed_batch(model, tokenizer) -> dict:
    """Two packed rows (image and text samples; one row padded) with their host-computed boundaries."""
    def sample(n: int, image: bool) -> dict:
        ids = torch.arange(n) % 300 + 10
        pixels = torch.zeros(0, 3, 56, 56)
        if image:
            ids[2:2 + model.num_image_token] = model.config.image_token_id
            pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(n))
        return {"input_ids": ids, "labels": ids.clone(), "pixel_values": pixels,
                "image_flags": torch.ones(len(pixels), dtype=torch.long)}

    rows = [pack_samples([sample(20, True), sample(15, False)], "token"), pack_samples([sample(30, True)], "token")]
    batch = PackedCollator(tokenizer.pad_token_id)(rows)
    return {k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")}


#: The host reads of one packed training step, whatever the depth. Forward: selecting the tiles with flag 1 and
#: 0 (2), checking the image-token count (1), transformers' packed-sequence check in its mask (1), its dynamic
#: RoPE update (2), and, for the chunked loss, selecting the supervised tokens (3: hidden, targets, weights).
#: Backward: the gradients of those selections (2 for the tiles, 1 for the hidden states) and of the
#: ``masked_scatter`` that writes the image features (1).
STEP_READS = {"plain": 6 + 3, "chunked": 9 + 4}


@pytest.mark.parametrize("loss_impl", ["chunked", "plain"])
def test_a_packed_training_step_reads_the_host_a_fixed_number_of_times_not_per_layer(tiny_original, tmp_path,
                                                                                      loss_impl):
    import vlaser
    from vlaser.model.packed_attention import use_packed_attention
    from vlaser.model.tiny import build_tiny_checkpoint
    from vlaser.train.trainer import checkpoint_every

    deep = build_tiny_checkpoint(tmp_path / "deep", llm={"num_hidden_layers": 5})
    counts = {}
    for checkpoint in (tiny_original, deep):
        model, tokenizer = vlaser.load_model(checkpoint, dtype=torch.float32, device="cpu")
        assert model.config.text_config.rope_parameters["rope_type"] == "dynamic"
        use_packed_attention(model)
        checkpoint_every(model, 1)  # the backward recomputes every layer: its reads would count too
        model.train()
        batch = _packed_batch(model, tokenizer)
        with HostReads() as mode:
            model(**batch, loss_impl=loss_impl).loss.backward()
        layers = model.config.text_config.num_hidden_layers
        counts[layers] = len(mode.reads)
        assert not [r for r in mode.reads if "packed_attention" in r[1] or "modeling_qwen2" in r[1]], mode.reads
    assert counts == {2: STEP_READS[loss_impl], 5: STEP_READS[loss_impl]}, mode.reads

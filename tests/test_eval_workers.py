"""Images prepared in worker processes: `eval run --workers N` and the Trainer's dataloader workers give the same
answers and losses as preparing them in the main process."""

import json
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlaser.api import VLM
from vlaser.cli import main
from vlaser.eval.backends import TransformersBackend
from vlaser.eval.runner import ImageWorkers
from vlaser.inference import Picture, Request
from vlaser.inference.prepare import tile


def _done(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


def test_prepare_takes_tiles_from_the_workers_and_makes_the_rest(loaded, tmp_path):
    backend = TransformersBackend("tiny", vlm=VLM(*loaded))
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for k, path in enumerate(paths):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(path)
    request = Request("<image>\n<image>\nWhat changed?", [Picture(p, 6) for p in paths], tagged=True)
    alone = backend.prepare(request)
    assert alone.num_patches == [tile(p, 6, backend.preparer.settings)[1].shape[0] for p in paths]
    marked = torch.full((2, 3, 56, 56), 7.0)
    given = backend.prepare(request, {(paths[0], 6): _done(((1, 2), marked))})
    assert torch.equal(given.pixel_values[:2], marked)  # from the worker, as it sent them
    assert torch.equal(given.pixel_values[2:], alone.pixel_values[-alone.num_patches[1]:])  # made here
    assert given.sizes == [(1, 2), (130, 90)]


def test_no_worker_processes_without_workers_or_for_a_backend_that_reads_images_itself(loaded):
    with ImageWorkers(0, TransformersBackend("tiny", vlm=VLM(*loaded))) as workers:
        assert workers.pool is None and workers.start([("x.png", 6)]) is None
    with ImageWorkers(2, SimpleNamespace(tiles_locally=False)) as workers:
        assert workers.pool is None and workers.start([("x.png", 6)]) is None


def _predictions(out):
    return (out / "predictions.jsonl").read_text()


@pytest.mark.slow
def test_two_workers_give_the_predictions_one_process_gives(tiny_original, tmp_path):
    from test_eval_pointing import make_dataset as point_bench_data
    from test_eval_vsi_bench import make_dataset as vsi_bench_data

    data = point_bench_data(tmp_path / "pb")
    (data / "images" / "steerable" / "lost.png").write_bytes(b"not a png")  # named in an error record either way
    run = ["eval", "run", "--model", str(tiny_original), "--benchmark", "point_bench", "--protocol", "official",
           "--data", str(data), "--max-new-tokens", "6", "--dtype", "float32", "--batch-size", "2", "--pictures", "0"]
    for n in (0, 2):
        assert main([*run, "--out", str(tmp_path / f"pb{n}"), "--workers", str(n)]) == 0
    assert _predictions(tmp_path / "pb0") == _predictions(tmp_path / "pb2")
    records = [json.loads(line) for line in _predictions(tmp_path / "pb2").splitlines()]
    assert [r["id"] for r in records if r.get("error")] and all("lost.png" in r["error"] for r in records
                                                                  if r.get("error"))
    assert sum(not r.get("error") for r in records) >= 3
    assert json.loads((tmp_path / "pb2" / "run.json").read_text())["workers"] == 2
    # the worker count is not an answer-changing setting: resuming with another one is allowed
    assert main([*run, "--out", str(tmp_path / "pb2"), "--workers", "1"]) == 0
    assert _predictions(tmp_path / "pb0") == _predictions(tmp_path / "pb2")

    data = vsi_bench_data(tmp_path / "vsi")
    run = ["eval", "run", "--model", str(tiny_original), "--benchmark", "vsi_bench", "--data", str(data),
           "--max-new-tokens", "4", "--dtype", "float32", "--limit", "3", "--frames", "4"]
    for n in (0, 2):
        assert main([*run, "--out", str(tmp_path / f"vsi{n}"), "--workers", str(n)]) == 0
    assert _predictions(tmp_path / "vsi0") == _predictions(tmp_path / "vsi2")
    assert _predictions(tmp_path / "vsi2").count("\n") == 3


@pytest.mark.slow
def test_dataloader_workers_train_on_the_same_batches(tiny_original, tmp_path):
    """The Trainer's own workers (``--dataloader_num_workers``) load vlaser's dataset: the same losses as without."""
    from test_train import colour_data, flags, losses
    from vlaser.train.sft import train

    meta = colour_data(tmp_path)
    curves = []
    for n in ("0", "2"):
        args = flags(tiny_original, meta, tmp_path / f"out{n}", "--max_steps", "3", "--grad_checkpoint", "False")
        args[args.index("--dataloader_num_workers") + 1] = n
        curves.append(losses(train(args)))
    assert len(curves[0]) == 3 and curves[0] == curves[1]

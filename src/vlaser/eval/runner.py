"""The one evaluation loop: load items, ask what is not yet answered, score, write the outputs.

``OUT/predictions.jsonl`` grows line by line as answers arrive, so a re-run resumes where it stopped;
``OUT/metrics.json`` and ``OUT/report.md`` (plus pictures for pointing benchmarks) come from scoring.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlaser.eval.backends import Request
from vlaser.eval.benchmark import Benchmark, Item, Score
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import ImageLoadError, LastClip, decode_frames
from vlaser.model.template import multi_image_prefix

log = logging.getLogger(__name__)


def read_predictions(path: Path) -> dict[str, dict]:
    """``id -> record`` from a predictions JSONL; a torn last line (a killed run) is ignored and reported."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[str(record["id"])] = record
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if number == len(lines):
                log.warning("%s:%d: incomplete last line (an interrupted run) is asked again", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a prediction record ({e})") from e
    return records


def _drop_torn_tail(path: Path) -> None:
    """A run killed mid-write leaves a partial last line; cut it so appended answers start on a new line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (an interrupted run); that item is asked again", path)
        with open(path, "r+b") as f:
            f.truncate(keep)


def _check_run_config(out: Path, config: dict) -> None:
    path = out / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        keys = ("benchmark", "prompt", "protocol", "options", "max_num", "max_new_tokens", "frames")
        changed = [k for k in keys if previous.get(k) != config.get(k)]
        if changed:
            raise ValueError(f"{out} holds a run with different {changed}; use a new --out to avoid mixing answers")
    path.write_text(json.dumps(config, indent=2) + "\n")


def _world() -> tuple[int, int]:
    """``(rank, world size)`` under torchrun (a gloo group is started for the barriers); ``(0, 1)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _merge(items: list[Item], out: Path, pred_path: Path) -> dict[str, dict]:
    """Fold the per-rank files into ``predictions.jsonl`` and write it in item order (answers may arrive in
    another order), atomically."""
    done = read_predictions(pred_path)
    parts = sorted(out.glob("predictions.rank*.jsonl"))
    for part in parts:
        done.update(read_predictions(part))
    ordered = [done[item.id] for item in items if item.id in done]
    ordered += [record for key, record in done.items() if key not in {item.id for item in items}]
    tmp = pred_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    tmp.replace(pred_path)
    for part in parts:
        part.unlink()
    return done


def run(benchmark: Benchmark, backend, data_dir: Path, out: Path, batch_size: int = 8, limit: int | None = None,
        prompt: str = "vlaser", max_num: int | None = None, max_new_tokens: int | None = None,
        pictures: int = 50, frames: int | None = None) -> dict[str, Any]:
    """Ask every item not yet answered in ``OUT`` (items that failed on unreadable media are asked again),
    then score all of them.

    Under ``torchrun`` each process takes every N-th item and appends to its own file; process 0 then
    merges them into ``predictions.jsonl`` and scores, so metrics equal a single-process run.
    """
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames}")
    items = benchmark.load(Path(data_dir))[:limit]
    out = Path(out)
    rank, world = _world()
    out.mkdir(parents=True, exist_ok=True)
    max_num = benchmark.max_num if max_num is None else max_num
    max_new_tokens = benchmark.max_new_tokens if max_new_tokens is None else max_new_tokens
    frames = (benchmark.frames if frames is None else frames) if any(item.video for item in items) else None
    if rank == 0:
        _check_run_config(out, {"benchmark": benchmark.name, "protocol": benchmark.protocol,
                                "options": benchmark.options, "prompt": prompt,
                                "max_num": max_num, "max_new_tokens": max_new_tokens, "frames": frames,
                                "data": str(data_dir), **backend.info()})
    pred_path = out / "predictions.jsonl"
    my_path = pred_path if world == 1 else out / f"predictions.rank{rank}.jsonl"
    if world > 1:
        _barrier()  # the config check has passed before anyone writes
    _drop_torn_tail(my_path)
    if world == 1 and any(out.glob("predictions.rank*.jsonl")):
        _merge(items, out, pred_path)  # answers of an interrupted sharded run
    done = read_predictions(pred_path)
    for part in out.glob("predictions.rank*.jsonl"):
        done.update(read_predictions(part))
    mine = items[rank::world]
    todo = [item for item in mine if item.id not in done or done[item.id].get("error")]
    # questions about the same clip are asked one after another, so its frames are decoded once
    todo.sort(key=lambda item: str(item.video or ""))
    if len(todo) < len(mine):
        log.info("resuming: %d of %d items already answered", len(mine) - len(todo), len(mine))
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    # With the model on a GPU (or behind an API) the next batch's images are read and tiled on a worker
    # thread while this one generates; on a CPU that thread would only compete with generation.
    loader_cls = ThreadPoolExecutor if getattr(backend, "overlap_io", False) else _InlineExecutor
    with open(my_path, "a") as stream, loader_cls(max_workers=1) as loader, \
            tqdm(total=len(mine), initial=len(mine) - len(todo), desc=benchmark.name, unit="item",
                 disable=rank != 0) as bar:
        clip = LastClip()

        def prepare(batch: list[Item]) -> list:
            return [_prepare(benchmark, backend, item, prompt, max_num, frames, clip) for item in batch]

        upcoming = loader.submit(prepare, batches[0]) if batches else None
        for number, batch in enumerate(batches):
            prepared = upcoming.result()
            if number + 1 < len(batches):
                upcoming = loader.submit(prepare, batches[number + 1])
            for record in _ask(backend, batch, prepared, max_new_tokens):
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[record["id"]] = record
            stream.flush()
            bar.update(len(batch))
    if world == 1:
        return score(benchmark, items, _merge(items, out, pred_path) if todo else done, out, pictures)
    _barrier()
    if rank == 0:
        score(benchmark, items, _merge(items, out, pred_path), out, pictures)
    _barrier()
    return json.loads((out / "metrics.json").read_text())


class _InlineExecutor:
    """The ``submit`` interface of an executor, running each call at once in this thread."""

    def __init__(self, max_workers: int = 1):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def build_request(benchmark: Benchmark, item: Item, style: str, max_num: int,
                  frames: list | None = None) -> Request:
    """The text sent for an item, with an ``<image>`` tag per picture, and its pictures.

    The benchmark's prompt places still images with its own tags; without tags one image goes first
    (``<image>\n``, as ``model.chat``) and several as ``Image-i: <image>`` lines. Video frames come first,
    one ``frame_line`` each (``Frame-i: <image>``), one tile per frame (InternVL's video path).
    """
    text = benchmark.prompt(item, style)
    tags = text.count(IMAGE_PLACEHOLDER)
    if not tags and item.images:
        text = (IMAGE_PLACEHOLDER + "\n" if len(item.images) == 1 else multi_image_prefix(len(item.images))) + text
    elif tags != len(item.images):
        raise ValueError(f"{benchmark.name} item {item.id}: the prompt has {tags} {IMAGE_PLACEHOLDER} tag(s) for "
                         f"{len(item.images)} image(s)")
    frames = frames or []
    lines = "".join(benchmark.frame_line.format(i=i + 1) for i in range(len(frames)))
    return Request(lines + text, [*frames, *item.images], [1] * len(frames) + [max_num] * len(item.images))


class MediaError(Exception):
    """An item whose media could not be read; the message names the item and the file."""


def _prepare(benchmark: Benchmark, backend, item: Item, style: str, max_num: int, n_frames: int | None,
             clip: LastClip | None = None):
    """``(prompt text, request readied by the backend)`` for an item (video frames are decoded here, ahead of
    generation), or the ``MediaError`` that names the unreadable file."""
    try:
        frames = None
        if item.video is not None:
            frames = decode_frames(item.video, lambda total: benchmark.frame_indices(item, total, n_frames), clip)
        request = build_request(benchmark, item, style, max_num, frames)
        prepare = getattr(backend, "prepare", None)
        return request.prompt, prepare(request) if prepare else request
    except ImageLoadError as e:
        return MediaError(f"item {item.id}: {e}")


def _ask(backend, batch: list[Item], prepared: list, max_new_tokens: int) -> list[dict]:
    """Records for a batch; an item whose media cannot be read gets an ``error`` record (scored as a miss,
    asked again on the next run)."""
    ok = [k for k, ready in enumerate(prepared) if not isinstance(ready, MediaError)]
    answers = backend.generate([prepared[k][1] for k in ok], max_new_tokens) if ok else []
    by_index = dict(zip(ok, answers))
    records = []
    for k, item in enumerate(batch):
        if k in by_index:
            records.append({"id": item.id, "prompt": prepared[k][0], "response": by_index[k]})
        else:
            log.warning("%s", prepared[k])
            records.append({"id": item.id, "response": "", "error": str(prepared[k])})
    return records



def score(benchmark: Benchmark, items: list[Item], predictions: dict[str, dict], out: Path, pictures: int = 50
          ) -> dict[str, Any]:
    """Score predictions (from any source); write ``metrics.json``, ``scores.jsonl``, ``report.md`` and, for
    pointing benchmarks, pictures of the first ``pictures`` items with ``index.html``."""
    from vlaser.eval.report import write_pictures, write_report

    out.mkdir(parents=True, exist_ok=True)
    known = {item.id for item in items}
    unknown = sorted(set(predictions) - known)
    missing = [item.id for item in items if item.id not in predictions]
    answered = [item for item in items if item.id in predictions]
    scores: list[Score] = []
    with open(out / "scores.jsonl", "w") as stream:
        for item in answered:
            record = predictions[item.id]
            s = Score(0.0, parsed=False, extra={"error": record["error"]}) if record.get("error") else \
                benchmark.score(item, str(record.get("response", "")))
            scores.append(s)
            stream.write(json.dumps({"id": item.id, "score": s.value, "parsed": s.parsed, "points": s.points,
                                     "group": item.group, **s.extra}) + "\n")
    metrics = benchmark.aggregate(answered, scores)
    metrics.update(benchmark=benchmark.name, protocol=benchmark.protocol, n_items=len(items),
                   n_missing_predictions=len(missing), unknown_ids=unknown[:20], n_unknown_ids=len(unknown),
                   errors=[predictions[i.id]["error"] for i in answered if predictions[i.id].get("error")],
                   n_errors=sum(bool(predictions[i.id].get("error")) for i in answered),
                   options=benchmark.options, scored_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if unknown:
        log.warning("%d prediction id(s) are not in %s, e.g. %s", len(unknown), benchmark.name, unknown[:3])
    if missing:
        log.warning("%d item(s) have no prediction and are not scored", len(missing))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    cards = write_pictures(benchmark, answered[:pictures], scores, predictions, out) \
        if benchmark.pointing and pictures else []
    write_report(metrics, out, cards)
    return metrics

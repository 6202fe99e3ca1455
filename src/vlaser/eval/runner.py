"""The one evaluation loop: load items, ask what is not yet answered, score, write the outputs.

``OUT/predictions.jsonl`` grows line by line as answers arrive, so a re-run resumes where it stopped;
``OUT/metrics.json`` and ``OUT/report.md`` (plus pictures for pointing benchmarks) come from scoring.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlaser.errors import UserInputError, VlaserError
from vlaser.eval.backends import Backend
from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, Item, Score, check_prompt_style
from vlaser.eval.provenance import check_and_write, coverage, git_commit, run_record, vlaser_version
from vlaser.inference import Completion, GenerationParams, Picture, Request
from vlaser.inference.prepare import Pending, place_tags, resolve_max_tiles
from vlaser.jsonl import JSONLError, read_jsonl
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.preprocess import ImageLoadError, LastClip, decode_frames
from vlaser.model.settings import ProcessorSettings

log = logging.getLogger(__name__)
#: batches handed to the backend per call (the engine's admission window)
WINDOW_BATCHES = 4


def read_predictions(path: Path) -> dict[str, dict]:
    """``id -> record`` from a predictions JSONL; a torn last line (a killed run) is ignored and reported."""
    if not path.is_file():
        return {}
    return {str(record["id"]): record for _, record in _prediction_records(path)}


def read_predictions_once(path: Path) -> tuple[dict[str, dict], list[str]]:
    """``eval score``'s reading of a predictions file made anywhere: ``(id -> record, ids given twice with the
    same response)``; an id given twice with different responses is an error naming the ids and lines."""
    records: dict[str, tuple[int, dict]] = {}
    repeated, conflicting = [], []
    for number, record in _prediction_records(Path(path)):
        key = str(record["id"])
        if key in records:
            first, earlier = records[key]
            if earlier.get("response") == record.get("response"):
                repeated.append(key)
            else:
                conflicting.append(f"{key} (lines {first} and {number})")
        records[key] = (number, record)
    if conflicting:
        raise UserInputError(f"{path}: {len(conflicting)} id(s) have different answers: {', '.join(conflicting[:10])}")
    if repeated:
        log.warning("%s: %d id(s) are given more than once with the same answer: %s", path, len(repeated),
                    repeated[:10])
    return {key: record for key, (_, record) in records.items()}, repeated


def _prediction_records(path: Path):
    """``(line number, record)`` of a predictions JSONL, each checked to be an object with an ``id``."""

    def torn_tail(error: JSONLError) -> None:
        if not error.last:
            raise error
        log.warning("%s:%d: incomplete last line (an interrupted run) is asked again", path, error.line)

    for number, record in read_jsonl(path, on_error=torn_tail):
        if not isinstance(record, dict) or "id" not in record:
            raise UserInputError(f"{path}:{number}: not a prediction record (an object with an 'id')")
        yield number, record


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


def effective_settings(benchmark: Benchmark, has_video: bool, processor: ProcessorSettings | None = None,
                       **overrides) -> dict[str, Any]:
    """The benchmark protocol's settings with the given (non-None) overrides, checked; ``frames`` is None for a
    benchmark without video. The tile limit is :func:`resolve_max_tiles`' (override, protocol, the checkpoint's
    ``processor`` settings when the backend has them)."""
    protocol = benchmark.settings.settings()
    settings = {**protocol, **{k: v for k, v in overrides.items() if v is not None}}
    check_prompt_style(settings["prompt"])
    for key, least in (("max_tiles", 1), ("max_new_tokens", 1), ("min_new_tokens", 0), ("frames", 1)):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            flag = "--max-num" if key == "max_tiles" else "--" + key.replace("_", "-")
            raise UserInputError(f"{flag} must be an integer of at least {least}, got {value!r}")
    if settings["min_new_tokens"] > settings["max_new_tokens"]:
        raise UserInputError(f"min_new_tokens {settings['min_new_tokens']} exceeds max_new_tokens "
                             f"{settings['max_new_tokens']}")
    if not has_video:
        settings["frames"] = None
    settings["do_sample"] = False
    settings["max_tiles"] = resolve_max_tiles(overrides.get("max_tiles"), protocol["max_tiles"], processor)
    return settings


def run(benchmark: Benchmark, backend: Backend, data_dir: Path, out: Path, batch_size: int = 8,
        limit: int | None = None, prompt: str | None = None, max_tiles: int | None = None,
        max_new_tokens: int | None = None, pictures: int = 50, frames: int | None = None,
        min_new_tokens: int | None = None, workers: int = 0) -> dict[str, Any]:
    """Ask every item not yet answered in ``OUT`` (items that failed on unreadable media are asked again),
    then score all of them.

    The benchmark's protocol gives the prompt style, tiles, frames and generation settings; the arguments
    override them. Under ``torchrun`` each process takes every N-th item and appends to its own file; process
    0 then merges them into ``predictions.jsonl`` and scores, so metrics equal a single-process run.
    ``workers``: processes that read and tile still images (see :class:`ImageWorkers`); 0 tiles in this one.
    """
    _check_counts(batch_size, workers, limit)
    available = benchmark.load(Path(data_dir))
    items = available[:limit]
    settings = effective_settings(benchmark, any(item.video for item in items),
                                  getattr(backend, "processor_settings", None), prompt=prompt, max_tiles=max_tiles,
                                  max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, frames=frames)
    params = GenerationParams(settings["max_new_tokens"], settings["min_new_tokens"])
    out = Path(out)
    rank, world = _world()
    out.mkdir(parents=True, exist_ok=True)
    # the workers are recorded but not compared on resume: tiles, and so answers, do not depend on them
    record = {**run_record(benchmark, settings, backend.info(), Path(data_dir), limit, len(available), world),
              "workers": workers}
    if rank == 0:
        check_and_write(out, record)
    pred_path = out / "predictions.jsonl"
    my_path = pred_path if world == 1 else out / f"predictions.rank{rank}.jsonl"
    if world > 1:
        _barrier()  # the config check has passed before anyone writes
    done, mine, todo = _unanswered(items, out, pred_path, my_path, rank, world)
    with open(my_path, "a") as stream, tqdm(total=len(mine), initial=len(mine) - len(todo), desc=benchmark.name,
                                            unit="item", disable=rank != 0) as bar:
        _answer(benchmark, backend, settings, params, todo, batch_size, workers, stream, done, bar)
    if world == 1:
        return score(benchmark, items, _merge(items, out, pred_path) if todo else done, out, pictures, record)
    _barrier()
    if rank == 0:
        score(benchmark, items, _merge(items, out, pred_path), out, pictures, record)
    _barrier()
    return json.loads((out / "metrics.json").read_text())


def _check_counts(batch_size: int, workers: int, limit: int | None) -> None:
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise UserInputError(f"--workers must be at least 0, got {workers}")
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be at least 1 (all items: leave it out), got {limit}")


def _unanswered(items: list[Item], out: Path, pred_path: Path, my_path: Path, rank: int, world: int
                ) -> tuple[dict[str, dict], list[Item], list[Item]]:
    """``(answers so far, this process's items, those still to ask)``: an interrupted run's answers are read
    back (a torn last line dropped, per-rank files merged), items that failed on their media are asked again."""
    _drop_torn_tail(my_path)
    if world == 1 and any(out.glob("predictions.rank*.jsonl")):
        _merge(items, out, pred_path)  # answers of an interrupted sharded run
    done = read_predictions(pred_path)
    for part in out.glob("predictions.rank*.jsonl"):
        done.update(read_predictions(part))
    mine = items[rank::world]
    askable = [item for item in mine if not item.gt_error]  # an unreadable annotation: nothing to score against
    todo = [item for item in askable if item.id not in done or done[item.id].get("error")]
    # questions about the same clip are asked one after another, so its frames are decoded once
    todo.sort(key=lambda item: str(item.video or ""))
    if len(todo) < len(askable):
        log.info("resuming: %d of %d items already answered", len(askable) - len(todo), len(askable))
    return done, mine, todo


def _answer(benchmark: Benchmark, backend: Backend, settings: dict[str, Any], params: GenerationParams,
            todo: list[Item], batch_size: int, workers: int, stream, done: dict[str, dict], bar) -> None:
    """Ask ``todo`` window by window, appending each answer to ``stream`` (and ``done``) as its window ends.

    The engine takes a window of several batches at once and keeps ``batch_size`` rows decoding, admitting them
    by tile count and prompt length. With the model on a GPU (or behind an API) the next window's images are
    read and tiled on a worker thread while this one generates; on a CPU that thread would only compete.
    """
    window = batch_size * WINDOW_BATCHES
    windows = [todo[start:start + window] for start in range(0, len(todo), window)]
    loader_cls = ThreadPoolExecutor if backend.overlap_io else _InlineExecutor
    with loader_cls(max_workers=1) as loader, ImageWorkers(workers, backend) as tiler:
        clip = LastClip()

        def prepare(group: list[Item]) -> list:
            pending = tiler.start([(image, settings["max_tiles"]) for item in group for image in item.images])
            return [_prepare(benchmark, backend, item, settings["prompt"], settings["max_tiles"], settings["frames"],
                             clip, pending) for item in group]

        upcoming = loader.submit(prepare, windows[0]) if windows else None
        for number, chunk in enumerate(windows):
            prepared = upcoming.result()
            if number + 1 < len(windows):
                upcoming = loader.submit(prepare, windows[number + 1])
            for answer in _ask(backend, chunk, prepared, params, batch_size):
                stream.write(json.dumps(answer, ensure_ascii=False) + "\n")
                done[answer["id"]] = answer
            stream.flush()
            bar.update(len(chunk))


class ImageWorkers:
    """``n`` processes that read and tile still images with the backend's own ``tiling`` call, so preprocessing
    keeps up with a GPU; none (``n`` 0, or a backend that does not tile here) leaves it to ``backend.prepare``.

    Video frames stay in this process: questions about one clip are asked together, its frames decoded once and
    their tiles reused, which a split across processes would undo (and a frame is one small tile). The tiles are
    the same whichever process makes them, so answers do not depend on ``n``. Workers are started fresh
    (``spawn``): a process forked from one whose threads hold locks (torch's, the tiling pool's) can hang.
    """

    def __init__(self, n: int, backend: Backend) -> None:
        self.backend = backend
        self.pool = None
        if n and backend.tiles_locally:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from vlaser.model.preprocess import available_cores

            self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(max(1, available_cores() // n),))
        elif n:
            log.info("--workers: this backend reads images itself; no worker processes started")

    def __enter__(self) -> ImageWorkers:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def start(self, images: list[tuple[Path, int]]) -> Pending | None:
        """``(image file, max tiles) -> future`` of its tiles, started on the workers; None without workers."""
        if self.pool is None:
            return None
        pending = {}
        for key in images:
            if key not in pending:
                call, args = self.backend.tiling(*key)
                pending[key] = self.pool.submit(call, *args)
        return pending


def _start_worker(threads: int) -> None:
    """A worker tiles with its share of the cores (several workers tile side by side)."""
    import torch

    from vlaser.model.preprocess import set_threads

    torch.set_num_threads(1)
    set_threads(threads)


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


def build_request(benchmark: Benchmark, item: Item, style: str, max_tiles: int,
                  frames: list | None = None) -> Request:
    """An item's request: the benchmark's prompt and the item's pictures, each still image with ``max_tiles``
    tiles at most, each video frame (first, one ``frame_line`` each) with one.

    A prompt with ``<image>`` tags places the pictures itself; otherwise the prepare step lays them out.
    """
    text = benchmark.prompt(item, style)
    pictures = [*(Picture(frame, 1, frame=True) for frame in frames or []),
                *(Picture(image, max_tiles) for image in item.images)]
    request = Request(text, pictures, tagged=IMAGE_PLACEHOLDER in text, frame_line=benchmark.frame_line)
    try:
        place_tags(request)
    except ValueError as e:
        raise BenchmarkDataError(f"{benchmark.name} item {item.id}: {e}") from None
    return request


class MediaError(VlaserError):
    """An item whose media could not be read; the message names the item and the file."""


def _prepare(benchmark: Benchmark, backend: Backend, item: Item, style: str, max_tiles: int, n_frames: int | None,
             clip: LastClip | None = None, pending: Pending | None = None):
    """``(prompt text, request readied by the backend)`` for an item (video frames are decoded here, ahead of
    generation), or the ``MediaError`` that names the unreadable file. ``pending``: tiles being made by
    :class:`ImageWorkers`."""
    try:
        frames = None
        if item.video is not None:
            frames = decode_frames(item.video, lambda total: benchmark.frame_indices(item, total, n_frames), clip)
        request = build_request(benchmark, item, style, max_tiles, frames)
        return place_tags(request), backend.prepare(request, pending)
    except ImageLoadError as e:
        return MediaError(f"item {item.id}: {e}")


def _ask(backend: Backend, window: list[Item], prepared: list, params: GenerationParams, batch_size: int
         ) -> list[dict]:
    """Records for a window of items; an item whose media cannot be read gets an ``error`` record (scored as a
    miss, asked again on the next run). ``truncated``: the answer stopped at ``max_new_tokens``."""
    ok = [k for k, ready in enumerate(prepared) if not isinstance(ready, MediaError)]
    answers: list[Completion] = backend.generate([prepared[k][1] for k in ok], params, batch_size) if ok else []
    by_index = dict(zip(ok, answers))
    records = []
    for k, item in enumerate(window):
        if k in by_index:
            answer = by_index[k]
            records.append({"id": item.id, "prompt": prepared[k][0], "response": answer.text,
                            "truncated": answer.truncated})
        else:
            log.warning("%s", prepared[k])
            records.append({"id": item.id, "response": "", "error": str(prepared[k])})
    return records



def score_item(benchmark: Benchmark, item: Item, prediction: dict) -> Score:
    """One item's score. An item lost to unreadable media scores a miss; an item whose ground truth cannot be read
    (at load, or now: a damaged mask, cell or annotation) is left out, with ``extra["gt_error"]`` naming the file
    (the benchmark's fault, not the model's; docs/eval_suite.md)."""
    if item.gt_error:
        return Score(None, parsed=False, extra={"gt_error": item.gt_error})
    if prediction.get("error"):
        return Score(0.0, parsed=False, extra={"error": prediction["error"]})
    try:
        return benchmark.score(item, str(prediction.get("response", "")))
    except (BenchmarkDataError, OSError) as e:  # OSError: a file read to score (an image's size) is unreadable
        log.warning("item %s left out of the score: %s", item.id, e)
        return Score(None, parsed=False, extra={"gt_error": f"item {item.id}: {e}"})


def score(benchmark: Benchmark, items: list[Item], predictions: dict[str, dict], out: Path, pictures: int = 50,
          record: dict | None = None, duplicate_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Score predictions (from any source); write ``metrics.json``, ``scores.jsonl``, ``report.md`` and, for
    pointing benchmarks, pictures of the first ``pictures`` items with ``index.html``. ``duplicate_ids``: ids
    given more than once (with the same answer) in a predictions file, listed in the outputs. Items whose ground
    truth cannot be read are left out of the aggregate and listed under ``gt_errors``."""
    from vlaser.eval.report import write_pictures, write_report

    out.mkdir(parents=True, exist_ok=True)
    known = {item.id for item in items}
    unknown = sorted(set(predictions) - known)
    missing = [item.id for item in items if item.id not in predictions and not item.gt_error]
    answered = [item for item in items if item.id in predictions or item.gt_error]
    scores = [score_item(benchmark, item, predictions.get(item.id, {})) for item in answered]
    with open(out / "scores.jsonl", "w") as stream:
        for item, s in zip(answered, scores):
            stream.write(json.dumps({"id": item.id, "score": s.value, "parsed": s.parsed, "points": s.points,
                                     "group": item.group, **s.extra}) + "\n")
    kept = [k for k, s in enumerate(scores) if "gt_error" not in s.extra]
    media = [predictions[answered[k].id]["error"] for k in kept if predictions[answered[k].id].get("error")]
    gt_errors = [s.extra["gt_error"] for s in scores if "gt_error" in s.extra]
    metrics = benchmark.aggregate([answered[k] for k in kept], [scores[k] for k in kept])
    metrics.update(benchmark=benchmark.name, protocol=benchmark.protocol, n_items=len(items),
                   # an answer not parsed is one the model gave: an item lost to unreadable media has none
                   n_unparsed=sum(not scores[k].parsed and not predictions[answered[k].id].get("error") for k in kept),
                   n_missing_predictions=len(missing), unknown_ids=unknown[:20], n_unknown_ids=len(unknown),
                   errors=media, n_errors=len(media), gt_errors=gt_errors[:20], n_gt_errors=len(gt_errors),
                   n_truncated=sum(bool(predictions.get(i.id, {}).get("truncated")) for i in answered),
                   duplicate_ids=sorted(duplicate_ids)[:20], n_duplicate_ids=len(duplicate_ids),
                   **coverage(record, len(items)),
                   protocol_version=benchmark.settings.version,
                   run=record or {"vlaser_version": vlaser_version(), "git_commit": git_commit(),
                                  "scored_only": True},
                   options=benchmark.options, scored_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if unknown:
        log.warning("%d prediction id(s) are not in %s, e.g. %s", len(unknown), benchmark.name, unknown[:3])
    if missing:
        log.warning("%d item(s) have no prediction and are not scored", len(missing))
    if gt_errors:
        log.warning("%d item(s) left out of the score: their ground truth cannot be read, e.g. %s", len(gt_errors),
                    gt_errors[0])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    shown = [(item, s) for item, s in zip(answered, scores) if item.id in predictions and not item.gt_error][:pictures]
    cards = write_pictures(benchmark, [i for i, _ in shown], [s for _, s in shown], predictions, out) \
        if benchmark.pointing and pictures else []
    write_report(metrics, out, cards)
    return metrics

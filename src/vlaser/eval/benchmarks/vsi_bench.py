"""VSI-Bench (Thinking in Space): spatial questions about indoor scan videos, scored as its ``utils.py`` does.

Options: ``config=full|debiased|pruned`` (default ``full``), ``videos=DIR`` (default: the data folder).
Sources, data layout, prompt, frames, scoring and the quirks kept: ``docs/benchmarks/vsi_bench.md``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from vlaser.errors import UserInputError
from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.eval.parquet import read_rows

log = logging.getLogger(__name__)

MCA_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
             "object_rel_distance", "route_planning", "obj_appearance_order")
NA_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
REL_DIRECTION = MCA_TYPES[:3]
#: the 8 task scores in the paper's table order: official metric name -> question type (the direction types
#: are merged into one)
TASKS = {"object_counting_MRA:.5:.95:.05": "object_counting",
         "object_abs_distance_MRA:.5:.95:.05": "object_abs_distance",
         "object_size_estimation_MRA:.5:.95:.05": "object_size_estimation",
         "room_size_estimation_MRA:.5:.95:.05": "room_size_estimation",
         "object_rel_distance_accuracy": "object_rel_distance", "object_rel_direction_accuracy": "object_rel_direction",
         "route_planning_accuracy": "route_planning", "obj_appearance_order_accuracy": "obj_appearance_order"}

PRE_PROMPT = "These are frames of a video."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
THRESHOLDS = np.linspace(0.5, 0.95, 10)

CONFIG_FILES = {"full": "test-*.parquet", "debiased": "test_debiased.parquet", "pruned": "test_pruned.parquet"}


def official_prompt(question_type: str, question: str, options: list[str] | None) -> str:
    """``vsibench_doc_to_text`` with the default kwargs (empty pre-prompt, so "These are frames of a video.")."""
    if question_type in NA_TYPES:
        return PRE_PROMPT + "\n" + question + "\n" + NA_POST_PROMPT
    return "\n".join([PRE_PROMPT, question, "Options:\n" + "\n".join(options or []), MCA_POST_PROMPT])


def fuzzy_matching(response: str) -> str:
    """The official answer token: text before the first space, trailing dots removed, then stripped."""
    return response.split(" ")[0].rstrip(".").strip()


def exact_match(token: str, target: str) -> float:
    """MCA: 1 when the token equals the ground-truth letter, ignoring case."""
    return 1.0 if token.lower() == target.lower() else 0.0


def to_float(value: Any) -> float | None:
    """``float(value)`` or ``None``, as the official ``to_float`` (which catches everything ``float`` raises)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def mean_relative_accuracy(pred: float, target: float) -> float:
    """Share of the ten thresholds at which the relative error is within ``1 - theta`` (official float order)."""
    return float(np.mean(abs(pred - target) / target <= 1 - THRESHOLDS))


def vsi_table(means: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """The official aggregation in percent from the per-type means: direction types merged, unweighted
    ``overall``; also the question types with no scored item (a partial run)."""
    table: dict[str, float] = {}
    for key, qtype in TASKS.items():
        if qtype == "object_rel_direction":
            present = [means[t] for t in REL_DIRECTION if t in means]
            if present:
                table[key] = sum(present) / len(present)
        elif qtype in means:
            table[key] = means[qtype]
    table["overall"] = sum(table.values()) / len(table) if table else 0.0
    missing = sorted(set(MCA_TYPES + NA_TYPES) - set(means))
    return {k: 100.0 * v for k, v in table.items()}, missing


def _options(value: Any, where: str) -> list[str] | None:
    """The ``options`` cell as a list of strings (``None`` for NA rows; numpy arrays from pandas exports too)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(o, str) for o in value):
        raise BenchmarkDataError(f"{where}: options must be a list of strings, got {value!r}")
    return list(value)


def _labels(options: list[str]) -> list[str]:
    """The option letters: each option's own ``"A. "`` label."""
    return [o.split(".", 1)[0].strip() for o in options]


class VSIBench(Benchmark):
    name = "vsi_bench"
    pointing = False
    #: vsibench.yaml generation_kwargs; evaluate_all_in_one.sh: max_frames_num=8 for InternVL2 (32 for most others)
    protocols = (EvalProtocol("official", max_new_tokens=16, frames=8,
                          source="thinking-in-space vsibench.yaml and evaluate_all_in_one.sh (InternVL2 setting)"),)
    #: the official InternVL2 wrapper's line: ``Frame1: <image>``, no hyphen
    frame_line = "Frame{i}: <image>\n"
    known_options = ("config", "videos")

    def __init__(self, protocol: str | None = None, **options):
        super().__init__(protocol, **options)
        self._config()  # a wrong config= fails at once, before any file is read

    def _config(self) -> str:
        config = str(self.options.get("config", "full"))
        if config not in CONFIG_FILES:
            raise UserInputError(f"vsi_bench: config must be one of {sorted(CONFIG_FILES)}, got {config!r}")
        return config

    def _rows(self, data_dir: Path) -> list[tuple[dict, str]]:
        """``(row, "FILE row N")`` of the chosen config, from its own file or the full file's ``pruned`` column."""
        config = self._config()
        full = sorted(data_dir.glob(CONFIG_FILES["full"]))
        own = full if config == "full" else sorted(data_dir.glob(CONFIG_FILES[config]))
        if own:
            return [(row, f"{path} row {k}") for path in own for k, row in enumerate(read_rows(path))]
        if config == "full" or not full:
            raise BenchmarkDataError(f"{data_dir}: no {CONFIG_FILES[config]} for VSI-Bench config {config!r}"
                                     + ("" if config == "full" else f" and no {CONFIG_FILES['full']}"))
        rows = [(row, f"{path} row {k}") for path in full for k, row in enumerate(read_rows(path))]
        if any(not isinstance(row.get("pruned"), bool) for row, _ in rows):
            raise BenchmarkDataError(f"{data_dir}: no {CONFIG_FILES[config]}, and {full[0]} has no boolean "
                                     "'pruned' column to select that subset from")
        log.info("vsi_bench: no %s; config %r is the rows of %s with pruned=%s", CONFIG_FILES[config], config,
                 full[0].name, config == "pruned")
        return [(row, where) for row, where in rows if row["pruned"] == (config == "pruned")]

    def _item(self, row: dict, where: str, videos: Path) -> Item:
        try:
            qid, qtype, question = str(row["id"]), row["question_type"], row["question"]
            dataset, scene, truth = str(row["dataset"]), str(row["scene_name"]), row["ground_truth"]
        except KeyError as e:
            raise BenchmarkDataError(f"{where}: missing column {e}") from e
        if qtype not in MCA_TYPES + NA_TYPES:
            raise BenchmarkDataError(f"{where}: unknown question_type {qtype!r}")
        if not isinstance(question, str):
            raise BenchmarkDataError(f"{where}: question must be a string, got {question!r}")
        options = _options(row.get("options"), where)
        meta: dict[str, Any] = {"question_type": qtype, "dataset": dataset, "scene_name": scene}
        if qtype in NA_TYPES:
            target = to_float(truth)
            if target is None or not math.isfinite(target) or target <= 0:
                raise BenchmarkDataError(f"{where}: numerical ground_truth must be a finite positive number, "
                                         f"got {truth!r}")
            meta["ground_truth"] = target
        else:
            if not options:
                raise BenchmarkDataError(f"{where}: multiple-choice item without options")
            if not isinstance(truth, str) or truth.upper() not in _labels(options):
                raise BenchmarkDataError(f"{where}: ground_truth {truth!r} is not one of the option letters "
                                         f"{_labels(options)}")
            meta.update(ground_truth=truth, options=options)
        if "pruned" in row:
            meta["pruned"] = row["pruned"]
        return Item(id=qid, question=question, official_prompt=official_prompt(qtype, question, options), images=[],
                    meta=meta, group=qtype, video=videos / dataset / f"{scene}.mp4")

    def load(self, data_dir: Path) -> list[Item]:
        data_dir = Path(data_dir)
        videos = Path(self.options["videos"]) if self.options.get("videos") else data_dir
        items, seen = [], {}
        for row, where in self._rows(data_dir):
            item = self._item(row, where, videos)
            if item.id in seen:
                raise BenchmarkDataError(f"{where}: id {item.id} repeats {seen[item.id]}")
            seen[item.id] = where
            items.append(item)
        return items

    def score(self, item: Item, response: str) -> Score:
        token = fuzzy_matching(response)
        truth = item.meta["ground_truth"]
        if item.meta["question_type"] in MCA_TYPES:
            parsed = token.upper() in _labels(item.meta["options"])
            return Score(exact_match(token, truth), parsed=parsed, extra={"token": token})
        pred = to_float(token)
        value = 0.0 if pred is None else mean_relative_accuracy(pred, truth)
        return Score(value, parsed=pred is not None, extra={"token": token, "pred": pred})

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        """The base counts and per-type means, with ``score`` = the official ``overall`` (0..1) and the
        official table in percent under ``vsi``."""
        metrics = super().aggregate(items, scores)  # items are grouped by question type
        table, missing = vsi_table({qtype: group["score"] for qtype, group in metrics["by_group"].items()})
        metrics.update(score=table["overall"] / 100.0, vsi=table, vsi_missing_types=missing)
        return metrics

"""EgoPlan-Bench2: the next action from egocentric video, multiple choice, scored as its ``eval.py`` does.

Data: ``EgoPlan-Bench2.json`` and the Ego4D clips under ``videos=DIR`` (default ``DATA/videos``); item id
``sample_id``. Options: ``videos=DIR``, ``fixed_prefixes=true``. Sources, quirks reproduced and differences:
``docs/benchmarks/egoplan_bench2.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from vlaser.errors import UserInputError
from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, EvalProtocol, Item, Score, mean_by
from vlaser.model.template import MULTI_IMAGE_LINE

ANNOTATION = "EgoPlan-Bench2.json"
INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
               "Respond with only the letter (A, B, C, or D) of the correct option.")
QUESTION = ("Considering the progress shown in the video and my current observation in the last frame, "
            "what action should I take next in order to {goal}?\n\nA. {a}\nB. {b}\nC. {c}\nD. {d}")
#: ``eval.py``'s ``QA_template`` with its leading and trailing newline
QA_TEMPLATE = "\n" + INSTRUCTION + "\n\n" + QUESTION + "\n"

#: the prefix list as Python builds it from ``eval.py`` (two missing commas join four strings into two)
OFFICIAL_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
#: the list as intended (``fixed_prefixes=true``), same order
FIXED_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
CHOICES = ("A", "B", "C", "D")
_FIELDS = ("sample_id", "domain", "scenario", "task_goal", "choice_a", "choice_b", "choice_c", "choice_d",
           "golden_choice_idx", "task_start_frame", "current_observation_frame")
_LETTER = re.compile(r"[ABCD]")


def extract_choice(response: str, prefixes: tuple[str, ...] = OFFICIAL_PREFIXES) -> str:
    """``extract_characters_regex``: the first capital A-D once the answer prefixes are deleted; "" for none."""
    text = response.strip()
    for prefix in prefixes:
        text = text.replace(prefix, "")
    if len(text.split()) > 10 and not _LETTER.search(text):
        return ""
    found = _LETTER.search(text)
    return found.group(0) if found else ""


def video_name(sample_id: str) -> str:
    """The Ego4D clip an item is cut from: ``eval.py``'s ``qa_id.split('_')[0] + '.mp4'``."""
    return sample_id.split("_")[0] + ".mp4"


def official_frames(start: int, end: int, n_frames: int) -> list[int]:
    """``cut_keyframes``' frame choice: ``n_frames`` evenly from ``start`` to ``end`` inclusive, truncated."""
    return [int(i) for i in np.linspace(start, end, n_frames, endpoint=True, dtype=int)]


def _frame(row: dict, key: str, where: str) -> int:
    """A frame number field: a non-negative integer (a bool or float would index frames wrongly)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BenchmarkDataError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _item(row: Any, videos: Path, where: str) -> Item:
    """One JSON entry as an item; a missing field or a bad answer letter names the entry."""
    if not isinstance(row, dict):
        raise BenchmarkDataError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [key for key in _FIELDS if key not in row]
    if missing:
        raise BenchmarkDataError(f"{where}: missing field(s) {missing}")
    sample_id = row["sample_id"]
    if not isinstance(sample_id, str) or not sample_id:
        raise BenchmarkDataError(f"{where}: sample_id must be a non-empty string, got {sample_id!r}")
    answer = row["golden_choice_idx"]
    if answer not in CHOICES:
        raise BenchmarkDataError(f"{where}: golden_choice_idx must be one of {list(CHOICES)}, got {answer!r}")
    start, end = _frame(row, "task_start_frame", where), _frame(row, "current_observation_frame", where)
    fill = {"goal": row["task_goal"], "a": row["choice_a"], "b": row["choice_b"], "c": row["choice_c"],
            "d": row["choice_d"]}
    domain, scenario = str(row["domain"]), str(row["scenario"])
    return Item(id=sample_id, question=QUESTION.format(**fill), official_prompt=QA_TEMPLATE.format(**fill),
                images=[], group=domain, video=videos / video_name(sample_id),
                meta={"answer": answer, "domain": domain, "scenario": scenario, "start_frame": start,
                      "end_frame": end})


class EgoPlanBench2(Benchmark):
    name = "egoplan_bench2"
    pointing = False
    protocols = (EvalProtocol("official", max_new_tokens=512, frames=8,
                          source="qiulu66/EgoPlan-Bench2 eval.py and models/InternVL2.py (LMDeploy defaults)"),)
    frame_line = MULTI_IMAGE_LINE
    known_options = ("videos", "fixed_prefixes")

    def load(self, data_dir: Path) -> list[Item]:
        path = Path(data_dir) / ANNOTATION
        if not path.is_file():
            raise BenchmarkDataError(f"{path} not found (EgoPlan-Bench2's annotation file from the HF dataset "
                                     "qiulu66/EgoPlan-Bench2)")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchmarkDataError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(rows, list):
            raise BenchmarkDataError(f"{path}: expected a list of items, got {type(rows).__name__}")
        videos = Path(self.options["videos"]) if self.options.get("videos") else Path(data_dir) / "videos"
        items, seen = [], {}
        for index, row in enumerate(rows):
            label = f" (sample_id {row.get('sample_id')!r})" if isinstance(row, dict) else ""
            item = _item(row, videos, f"{path} item {index}{label}")
            if item.id in seen:
                raise BenchmarkDataError(f"{path}: sample_id {item.id!r} appears at items {seen[item.id]} and "
                                         f"{index}; ids must be unique")
            seen[item.id] = index
            items.append(item)
        return items

    def frame_indices(self, item: Item, total_frames: int, n_frames: int) -> list[int]:
        """The official ``linspace`` over the item's frame range; a range past the clip's end is an error
        (the official ``imageio`` read fails there too), never clamped to other frames."""
        from vlaser.model.preprocess import ImageLoadError

        if n_frames < 1:
            raise UserInputError(f"{self.name}: frames per item must be at least 1, got {n_frames}")
        start, end = item.meta["start_frame"], item.meta["end_frame"]
        indices = official_frames(start, end, n_frames)
        if max(indices) >= total_frames:
            raise ImageLoadError(f"{item.video}: item {item.id} asks for frames {start}..{end} but the video has "
                                 f"{total_frames} frames (a different or truncated download?)")
        return indices

    def score(self, item: Item, response: str) -> Score:
        prefixes = FIXED_PREFIXES if self.options.get("fixed_prefixes") else OFFICIAL_PREFIXES
        choice = extract_choice(response, prefixes).upper()
        return Score(float(choice == item.meta["answer"]), parsed=bool(choice),
                     extra={"choice": choice, "answer": item.meta["answer"], "scenario": item.meta["scenario"]})

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        """The official accuracy plus vlaser's per-domain and per-scenario tables (not in ``eval.py``)."""
        metrics = super().aggregate(items, scores)
        metrics["by_domain"] = metrics["by_group"]
        metrics["by_scenario"] = mean_by([item.meta["scenario"] for item in items], scores)
        metrics["breakdown_note"] = "by_domain/by_scenario are vlaser's breakdown; eval.py reports only accuracy"
        return metrics


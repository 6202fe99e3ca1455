"""What a benchmark is: items read from its official files, prompts, and a per-item score.

A benchmark module declares these and registers itself; loading the model, batching, resuming,
sharding, aggregation and reporting live once, in ``runner.py``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlaser.errors import UserInputError
from vlaser.eval.items import (  # noqa: F401 (benchmarks import them from here)
    BenchmarkDataError,
    Item,
    Score,
    keep_damaged_lines,
    unreadable_item,
)
from vlaser.eval.masks import load_mask
from vlaser.eval.registry import PROMPT_STYLES, REGISTRY
from vlaser.model.template import FRAME_LINE


def check_prompt_style(style: str) -> str:
    """``style`` when it is one of ``PROMPT_STYLES``; otherwise the error that names the choices."""
    if style not in PROMPT_STYLES:
        raise UserInputError(f"--prompt must be {' or '.join(PROMPT_STYLES)}, got {style!r}")
    return style


#: where the pointing benchmarks Vlaser ran inside their official code take their settings from
VLASER_EXAMPLE = ("OpenGVLab/Vlaser internvl_chat/eval/eval_example.py, inserted into the benchmark's official code "
                  "(the Vlaser README): load_image(max_num=12), max_new_tokens=1024, do_sample=False")
#: Vlaser's own evaluators (evaluate_point_pixmo.py, evaluate_point_paco.py)
VLASER_EVALUATOR = ("OpenGVLab/Vlaser internvl_chat/eval/evaluate_point_{pixmo,paco}.py: --max-num 6, "
                    "max_new_tokens=100, min_new_tokens=1, greedy")


@dataclass(frozen=True)
class EvalProtocol:
    """One named way to ask and score a benchmark: prompt builder, tiles, frames and generation settings.

    The benchmark's ``score`` reads ``Benchmark.protocol`` (the name) where the answer parser or scorer
    differs between protocols. ``version`` is bumped whenever the protocol's prompt, parser or scorer
    changes, so recorded runs say which rules made their numbers.
    """

    name: str
    version: int = 1
    prompt: str = "official"  #: "vlaser": the seed's point prefix + the question; "official": the benchmark's own
    max_tiles: int = 6  #: tiles per still image (InternVL's and the CLI's max_num)
    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    frames: int = 8  #: frames per video item
    source: str = ""  #: where these settings come from

    def settings(self) -> dict[str, Any]:
        """The choices that change answers (name, version and source aside)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "version", "source")}


class Benchmark(abc.ABC):
    """Subclass per benchmark: ``load`` the official files, build prompts, ``score`` one response.

    ``protocols`` lists its protocols, the default first: the one Vlaser's published numbers came from.
    """

    name: ClassVar[str]
    protocols: ClassVar[tuple[EvalProtocol, ...]] = (EvalProtocol("official"),)
    pointing: ClassVar[bool] = True
    #: the prompt line of video frame ``i`` (1-based): ``Frame-{i}: <image>``, as InternVL's video path, unless
    #: a benchmark's own InternVL code says otherwise
    frame_line: ClassVar[str] = FRAME_LINE
    #: the ``--option`` keys the benchmark reads (a misspelt one is an error, not silently ignored)
    known_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, protocol: str | None = None, **options):
        unknown = sorted(set(options) - set(self.known_options))
        if unknown:
            raise UserInputError(f"{self.name}: unknown option(s) {unknown}; it takes {sorted(self.known_options)}")
        names = [p.name for p in self.protocols]
        self.protocol = protocol or names[0]
        if self.protocol not in names:
            raise UserInputError(f"{self.name}: unknown protocol {self.protocol!r}; choose from {names}")
        self.settings: EvalProtocol = self.protocols[names.index(self.protocol)]
        self.options = options

    @abc.abstractmethod
    def load(self, data_dir: Path) -> list[Item]:
        """Every item of the benchmark, read from its official on-disk layout under ``data_dir``."""

    def prompt(self, item: Item, style: str) -> str:
        """``official``: the benchmark's own prompt; ``vlaser``: for pointing benchmarks the seed's point prefix +
        the question, for question-answering ones the official prompt too."""
        from vlaser.points import point_question

        check_prompt_style(style)
        return point_question(item.question) if style == "vlaser" and self.pointing else item.official_prompt

    def frame_indices(self, item: Item, total_frames: int, n_frames: int) -> list[int]:
        """Which of the clip's ``total_frames`` frames to show: InternVL's ``get_index`` with no time bound, i.e.
        the centres of ``n_frames`` equal segments of ``[0, total_frames - 1]``."""
        segment = (total_frames - 1) / n_frames
        return [int(segment / 2 + np.round(segment * k)) for k in range(n_frames)]

    @abc.abstractmethod
    def score(self, item: Item, response: str) -> Score:
        """Score one response as the benchmark's official code does."""

    def gt_mask(self, item: Item):
        """The ground-truth mask to draw in pictures (``None`` when the benchmark has none for the item)."""
        path = Path(item.meta.get("mask", ""))
        return load_mask(path, "soft") if item.meta.get("mask") and path.is_file() else None

    def gt_points(self, item: Item) -> list[tuple[float, float]]:
        """Ground-truth points (pixels) to draw in pictures, for benchmarks scored against points."""
        return []

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        """Mean over scored items, overall and per group, plus counts."""
        values = [score.value for score in scores if score.value is not None]
        return {
            "score": sum(values) / len(values) if values else 0.0,
            "n": len(items),
            "n_scored": len(values),
            "n_unparsed": sum(not s.parsed for s in scores),
            "by_group": mean_by([item.group for item in items], scores),
        }


def mean_by(keys: list[str], scores: list[Score]) -> dict[str, dict[str, float]]:
    """``{key: {"score": mean, "n": count}}`` over the scored items, keys sorted (empty keys left out)."""
    groups: dict[str, list[float]] = {}
    for key, score in zip(keys, scores):
        if key and score.value is not None:
            groups.setdefault(key, []).append(score.value)
    return {key: {"score": sum(v) / len(v), "n": len(v)} for key, v in sorted(groups.items())}




def get_benchmark(name: str, protocol: str | None = None, **options) -> Benchmark:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserInputError(f"unknown benchmark {name!r}{hint} (registered: {sorted(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(protocol=protocol, **options)

"""VLABench, VLM track: plan a robot skill sequence from two scene pictures and an instruction.

The prompt is VLABench's ``get_ti_list`` joined as its InternVL wrapper joins it (pictures placed by the prepare
step); answers are parsed and scored as the official evaluator does (``get_final_score``, 0-100). Layout, prompt,
scoring rules, options and sources: ``docs/benchmarks/vlabench.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError
from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.inference.prepare import between
from vlaser.model.constants import IMAGE_PLACEHOLDER

#: ``SUBTASK_PATTERN`` of the official scorer, tried in this order at every position
SUBTASK_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("pick", "place"), ("pick", "insert"), ("pick", "pour", "place"), ("pick", "pour"), ("pick", "pull"),
    ("pick", "lift"), ("pick", "push", "pull"), ("pick", "push", "place"), ("pick", "push"),
    ("pick", "open_door"), ("press",),
)
#: ``configs/evaluation/seq_independent_task.json``: their sub-tasks may come in any order
SEQ_INDEPENDENT_TASKS = frozenset({"cook_dishes", "texas_holdem"})
SEQUENTIAL, SEQ_INDEPENDENT = "Sequential", "Seq-independent"
ENTITY, CONTAINER = "target_entity_name", "target_container_name"
#: declared weights of ``get_final_score``, in its key order
WEIGHTS = {"skill_match_score": 0.4, "entity_match_score": 0.4, "skill_with_entity_match_score": 0.1,
           "exact_match_score": 0.1}
METRICS = (*WEIGHTS, "total_score")
OPTIONS = {"prompt_file": None, "total": ("official", "intended"), "entity_ids": ("exact", "text"), "cot": None}

#: the message sequence of ``get_ti_list`` (English) after the pre-prompt
INPUT_PICTURE = "Input picture"
TAGGED_PICTURE = "Input picture with numbered tags"
PICTURE_LINE = f"Image: {IMAGE_PLACEHOLDER}\n"  #: how the InternVL wrapper writes each picture
INSTRUCTION = "Language instruction:"
ASK = "Please give the output skill sequence"
COT = "Please analyze the problem step by step and give the answer"

PARAPHRASE = """\
(A paraphrase by vlaser of the VLABench skill-library prompt; not the official wording.)
You control a robot arm through a small library of skills. A skill call is a JSON object holding the skill's
"name" and its "params".

Skills:
1. pick: grasp an object and pick it up. params: {"target_entity_name": <object number>}
2. place: set the held object down on or in a place. params: {"target_container_name": <object number>}
3. press: press a button or a spot. params: {"target_entity_name": <object number>}
4. open_door: open a door. params: {}
5. insert: put the held object into a target. params: {"target_container_name": <object number>}
6. pull: draw the arm back horizontally. params: {}
7. pour: pour a liquid or grains from the held object. params: {"target_container_name": <object number>}
8. push: push horizontally towards a target. params: {"target_container_name": <object number>}
9. lift: raise the arm vertically. params: {}

You get two pictures and an instruction. Both pictures show the same scene from four viewpoints; in the
second one every object carries a number. Directions in the instruction (left, right, front, ...) are seen
from the robot arm.

Answer with the skill calls that carry out the instruction, in order, with the object numbers read from the
numbered picture, as a JSON list in a ```json code block, for example:
```json
[
    {"name": "pick", "params": {"target_entity_name": 1}},
    {"name": "place", "params": {"target_container_name": 2}}
]
```
The answer is scored by cutting it into these sub-sequences, so build it from them:
["pick", "place"], ["pick", "insert"], ["pick", "pour"], ["pick", "pull"], ["pick", "lift"],
["pick", "push", "pull"], ["pick", "open_door"], ["press"].
A "pick" on its own is counted as wrong. To pick an object up and show it use ["pick", "lift"]; to pull an
object out and show it use ["pick", "pull"]; ["pick", "place"] in their stead is wrong."""

_EXAMPLE = re.compile(r"example(\d+)")
_NOT_PARSED = object()


def render_prompt(pre_prompt: str, instruction: str, cot: bool = False) -> str:
    """``get_ti_list``'s parts joined as VLABench's InternVL wrapper joins them: each text part and a newline,
    each picture an ``Image: <image>`` line (placed by the prepare step)."""
    parts = [pre_prompt + "\n", INPUT_PICTURE + "\n", None, TAGGED_PICTURE + "\n", None, INSTRUCTION + "\n",
             instruction + "\n", ASK + "\n"]
    return between(parts + ([COT + "\n"] if cot else []), PICTURE_LINE)


def parse_answer(text: str) -> Any:
    """The official parse: the text after the first ```` ```json ```` up to the next fence, as JSON;
    ``_NOT_PARSED`` where that fails (``format_error``)."""
    try:
        return json.loads(text.split("```json")[1].split("```")[0])
    except (IndexError, ValueError, RecursionError):
        return _NOT_PARSED


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def shape_error(sequence: Any) -> str | None:
    """Why the official scorer would raise on this skill sequence (then everything scores 0); None if it
    would not. An empty string or object iterates as no skills, as in the official loops."""
    if isinstance(sequence, (str, dict)):
        return f"a JSON {type(sequence).__name__} is not a list of skills" if sequence else None
    if not isinstance(sequence, list):
        return f"a JSON {type(sequence).__name__} is not a list of skills"
    for k, skill in enumerate(sequence):
        if not isinstance(skill, dict):
            return f"skill {k} is not an object"
        if "name" not in skill or "params" not in skill:
            return f"skill {k} lacks 'name' or 'params'"
        if not isinstance(skill["params"], dict):
            return f"skill {k}: 'params' is not an object"
        values = [skill["name"], skill["params"].get(ENTITY), skill["params"].get(CONTAINER)]
        if not all(_hashable(v) for v in values):
            return f"skill {k}: a list or object as name or id"
    return None


def _skills(sequence: Any) -> list[dict]:
    """A sequence that passed :func:`shape_error` as a list ("" and {} hold no skills)."""
    return sequence if isinstance(sequence, list) else []


def _id_text(value: Any) -> Any:
    """``entity_ids=text``: integers (or integral floats) and strings compared by their text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else value
    return str(value).strip()


def ids_as_text(sequence: list[dict]) -> list[dict]:
    """A copy of the sequence with its entity and container ids passed through :func:`_id_text`."""
    out = []
    for skill in sequence:
        params = {k: _id_text(v) if k in (ENTITY, CONTAINER) else v for k, v in skill["params"].items()}
        out.append({**skill, "params": params})
    return out


def split_subtasks(sequence: list[dict]) -> list[list[dict]]:
    """``find_subtasks``: at each position the first pattern that matches is taken; a skill that starts no
    pattern is skipped."""
    names = [skill["name"] for skill in sequence]
    subtasks, i = [], 0
    while i < len(names):
        for pattern in SUBTASK_PATTERNS:
            if names[i:i + len(pattern)] == list(pattern):
                subtasks.append(sequence[i:i + len(pattern)])
                i += len(pattern)
                break
        else:
            i += 1
    return subtasks


def _node(subtask: list[dict]) -> tuple[str, Any, Any]:
    """A sub-task node's attributes: joined names, last non-null entity, last non-null container."""
    entities = [s["params"].get(ENTITY) for s in subtask if s["params"].get(ENTITY) is not None]
    containers = [s["params"].get(CONTAINER) for s in subtask if s["params"].get(CONTAINER) is not None]
    return ("-".join(s["name"] for s in subtask), entities[-1] if entities else None,
            containers[-1] if containers else None)


def _graph(sequence: list[dict], dependency: str) -> tuple[list[tuple], list[list[int]], list[int]]:
    """``build_graph`` as (node attributes, predecessors, layer), START being node 0."""
    nodes = [("START", None, None)] + [_node(s) for s in split_subtasks(sequence)]
    if dependency == SEQUENTIAL:
        predecessors = [[]] + [[k - 1] for k in range(1, len(nodes))]
        layers = list(range(len(nodes)))
    else:
        predecessors = [[]] + [[0] for _ in range(1, len(nodes))]
        layers = [0] + [1] * (len(nodes) - 1)
    return nodes, predecessors, layers


def exact_match_score(gt: list[dict], predicted: list[dict], dependency: str) -> float:
    """``exact_match_percentage``: layer-by-layer greedy node matching; raises ZeroDivisionError, as the
    official code does, when the ground truth has no sub-task."""
    nodes1, preds1, layers1 = _graph(gt, dependency)
    nodes2, preds2, layers2 = _graph(predicted, dependency)
    matched = 0
    for layer in range(1, max(layers1) + 1):
        candidates = [k for k, lvl in enumerate(layers2) if lvl == layer]
        for g in (k for k, lvl in enumerate(layers1) if lvl == layer):
            for p in candidates:
                if nodes1[g] == nodes2[p] and len(preds1[g]) == len(preds2[p]) and all(
                        any(nodes2[q] == nodes1[r] for q in preds2[p]) for r in preds1[g]):
                    matched += 1
                    candidates.remove(p)
                    break
    return (matched / (len(nodes1) - 1)) * 100


def _overlap(gt: list, predicted: list) -> float:
    """Multiset overlap / GT size, x100 (0 for an empty GT), as ``Counter(a) & Counter(b)``."""
    count = sum((Counter(gt) & Counter(predicted)).values())
    return (count / len(gt)) * 100 if gt else 0


def _entities(sequence: list[dict]) -> list[tuple[str, Any]]:
    out = []
    for skill in sequence:
        if skill["params"].get(ENTITY) is not None:
            out.append(("target_entity", skill["params"].get(ENTITY)))
        if skill["params"].get(CONTAINER) is not None:
            out.append(("target_container", skill["params"].get(CONTAINER)))
    return out


def final_score(gt: list[dict], predicted: list[dict], dependency: str, total: str = "official") -> dict:
    """``get_final_score`` on two well-formed sequences; ``total`` picks the official or intended weighting."""
    triples = [[(s["name"], s["params"].get(ENTITY), s["params"].get(CONTAINER)) for s in seq]
               for seq in (gt, predicted)]
    scores = {
        "skill_match_score": _overlap([s["name"] for s in gt], [s["name"] for s in predicted]),
        "entity_match_score": _overlap(_entities(gt), _entities(predicted)),
        "skill_with_entity_match_score": _overlap(*triples),
        "exact_match_score": exact_match_score(gt, predicted, dependency),
    }
    weighted = list(WEIGHTS)[:2] if total == "official" else list(WEIGHTS)
    scores["total_score"] = sum(WEIGHTS[key] * scores[key] for key in weighted)
    return scores


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class VLABench(Benchmark):
    name = "vlabench"
    pointing = False
    protocols = (EvalProtocol("official", max_tiles=6, max_new_tokens=512,
                          source="VLABench's InternVL wrapper (LMDeploy defaults); 6 tiles for two pictures"),)

    known_options = tuple(OPTIONS)

    def __init__(self, protocol: str | None = None, **options):
        super().__init__(protocol, **options)
        for key, allowed in OPTIONS.items():
            if allowed and key in options and options[key] not in allowed:
                raise UserInputError(f"vlabench: --option {key} must be one of {list(allowed)}, got {options[key]!r}")
        if options.get("cot", False) not in (True, False):
            raise UserInputError(f"vlabench: --option cot must be true or false, got {options['cot']!r}")
        self.total = options.get("total", "official")
        self.entity_ids = options.get("entity_ids", "exact")
        self.cot = bool(options.get("cot", False))

    @functools.cached_property
    def pre_prompt(self) -> str:
        """The skill-library pre-prompt: the user's ``prompt_file`` (read whole, as the evaluator does), else
        the paraphrase."""
        if "prompt_file" not in self.options:
            return PARAPHRASE
        path = Path(str(self.options["prompt_file"]))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise BenchmarkDataError(f"vlabench prompt_file {path}: {e}") from e
        if IMAGE_PLACEHOLDER in text:
            raise BenchmarkDataError(f"vlabench prompt_file {path}: holds {IMAGE_PLACEHOLDER}, which places pictures")
        return text

    @property
    def prompt_source(self) -> str:
        if "prompt_file" not in self.options:
            return "paraphrase (vlaser's wording, not VLABench's eval_vlm_en.txt)"
        digest = hashlib.sha256(self.pre_prompt.encode()).hexdigest()[:12]
        return f"file {self.options['prompt_file']} (sha256 {digest})"

    def load(self, data_dir: Path) -> list[Item]:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise BenchmarkDataError(f"{data_dir}: not a folder of {{Dimension}}/{{task}}/example{{N}}/")
        items = []
        for dimension in _subdirs(data_dir):
            for task in _subdirs(dimension):
                if _EXAMPLE.fullmatch(dimension.name) or _EXAMPLE.fullmatch(task.name):
                    raise BenchmarkDataError(f"{task}: an example folder two levels up; pass the folder that holds "
                                             "the dimension folders (M&T, CommenSence, ...) as --data")
                items += [self._item(dimension.name, task.name, n, folder) for n, folder in self._examples(task)]
        if not items:
            raise BenchmarkDataError(f"{data_dir}: no {{Dimension}}/{{task}}/example{{N}}/ folders found")
        return items

    @staticmethod
    def _examples(task: Path) -> list[tuple[int, Path]]:
        """``(N, folder)`` of a task's ``example<N>`` folders in numeric order; any other folder is an error."""
        found = []
        for folder in _subdirs(task):
            match = _EXAMPLE.fullmatch(folder.name)
            if not match:
                raise BenchmarkDataError(f"{folder}: a task folder holds only example<N> folders")
            found.append((int(match.group(1)), folder))
        if not found:
            raise BenchmarkDataError(f"{task}: no example<N> folders")
        return sorted(found)

    def _item(self, dimension: str, task: str, number: int, folder: Path) -> Item:
        instruction_path = folder / "input" / "instruction.txt"
        gt_path = folder / "output" / "operation_sequence.json"
        try:
            instruction = instruction_path.read_text(encoding="utf-8")
            raw = gt_path.read_bytes()
        except OSError as e:
            raise BenchmarkDataError(f"{folder}: {e}") from e
        try:  # a damaged (cut, not UTF-8) file leaves this one item out, named; a wrong shape stops the load
            gt, damage = json.loads(raw.decode("utf-8")), None
        except ValueError as e:
            gt, damage = None, f"{gt_path}: not JSON ({e})"
        sequence = gt.get("skill_sequence") if isinstance(gt, dict) else None
        error = "no 'skill_sequence' list" if not isinstance(sequence, list) else shape_error(sequence)
        if error and not damage:
            raise BenchmarkDataError(f"{gt_path}: {error}")
        if IMAGE_PLACEHOLDER in instruction:
            raise BenchmarkDataError(f"{instruction_path}: holds {IMAGE_PLACEHOLDER}, which places pictures")
        return Item(id=f"{dimension}/{task}/example{number}", question=instruction,
                    official_prompt=render_prompt(self.pre_prompt, instruction, self.cot),
                    images=[folder / "input" / "input.png", folder / "input" / "input_mask.png"], group=dimension,
                    meta={"task": task, "skill_sequence": sequence,
                          "dependency": SEQ_INDEPENDENT if task in SEQ_INDEPENDENT_TASKS else SEQUENTIAL},
                    gt_error=damage)

    def score(self, item: Item, response: str) -> Score:
        zeros = dict.fromkeys(METRICS, 0)
        predicted = parse_answer(response)
        if predicted is _NOT_PARSED:
            return Score(0.0, parsed=False, extra={**zeros, "format_error": True})
        gt = item.meta["skill_sequence"]
        error = shape_error(predicted)
        if error is None and not split_subtasks(gt):
            error = "the ground truth has no sub-task pattern (official: division by zero)"
        if error:
            return Score(0.0, parsed=True, extra={**zeros, "score_error": error})
        predicted = _skills(predicted)
        if self.entity_ids == "text":
            gt, predicted = ids_as_text(gt), ids_as_text(predicted)
        scores = final_score(gt, predicted, item.meta["dependency"], self.total)
        return Score(scores["total_score"] / 100, parsed=True, extra=scores)

    def aggregate(self, items: list[Item], scores: list[Score]) -> dict[str, Any]:
        """The base keys, plus the four metrics and the total (0-100) overall, as the mean over dimensions,
        per dimension and per task (``by_*`` tables also carry ``score`` and ``n`` for the report). A record
        without metrics (an unreadable picture) counts 0."""
        metrics = super().aggregate(items, scores)
        by_dim: dict[str, list[Score]] = {}
        by_task: dict[str, list[Score]] = {}
        for item, score in zip(items, scores):
            by_dim.setdefault(item.group, []).append(score)
            by_task.setdefault(f"{item.group}/{item.meta['task']}", []).append(score)

        def table(group: list[Score]) -> dict[str, float]:
            return {key: _mean([float(s.extra.get(key, 0)) for s in group]) for key in METRICS}

        dims = {dim: table(group) for dim, group in sorted(by_dim.items())}
        for dim, values in dims.items():
            metrics["by_group"][dim].update(values)
        metrics.update(
            overall=table(scores),
            mean_over_dimensions={key: _mean([d[key] for d in dims.values()]) for key in METRICS},
            by_task={task: {"score": _mean([s.value or 0.0 for s in group]), "n": len(group), **table(group)}
                     for task, group in sorted(by_task.items())},
            n_format_error=sum(bool(s.extra.get("format_error")) for s in scores),
            n_score_error=sum(bool(s.extra.get("score_error")) for s in scores),
            total_weighting="0.4 skill + 0.4 entity (official code, max 80)" if self.total == "official"
            else "0.4 skill + 0.4 entity + 0.1 skill_with_entity + 0.1 exact (intended)",
            entity_ids=self.entity_ids, prompt_source=self.prompt_source)
        return metrics

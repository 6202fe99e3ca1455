"""EmbodiedBench (EB-ALFRED, EB-Habitat): the planner's answer format, and importing the simulator's results.

EmbodiedBench's own evaluator plays the episodes against a served model; this module reproduces how it reads a
plan (:func:`parse_plan`, for contract tests) and imports its per-episode result files (:func:`import_results`).
Sources, quirks and the whole workflow: ``docs/embodiedbench.md``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError
from vlaser.eval.benchmark import BenchmarkDataError

log = logging.getLogger(__name__)

#: ``ValidEvalSets`` of ``EBAlfEnv.py`` and ``EBHabEnv.py``, in their order
SUBSETS: dict[str, tuple[str, ...]] = {
    "eb_alfred": ("base", "common_sense", "complex_instruction", "spatial", "visual_appearance", "long_horizon"),
    "eb_habitat": ("base", "common_sense", "complex_instruction", "spatial_relationship", "visual_appearance",
                   "long_horizon"),
}
ENV_ALIASES = {"eb-alf": "eb_alfred", "eb-hab": "eb_habitat"}  #: EmbodiedBench's ``env=`` names
EPISODES_PER_SUBSET = 50
INVALID_PLAN = -1  #: what ``json_to_action`` returns for an unusable answer
EMPTY_PLAN = -2  #: ... and for an empty ``executable_plan`` (the episode stops)

#: ``planner_utils.template``: appended to the prompt for model names containing ``InternVL``
JSON_TEMPLATE = "\n".join([
    "",
    "The output json format should be {'visual_state_description':str, 'reasoning_and_reflection':str, "
    "'language_plan':str, 'executable_plan':List[{'action_id':int, 'action_name':str}...]}",
    "The fields in above JSON follows the purpose below:",
    "1. visual_state_description is for description of current state from the visual image, ",
    "2. reasoning_and_reflection is for summarizing the history of interactions and any available environmental "
    "feedback. Additionally, provide reasoning as to why the last action or plan failed and did not finish the "
    "task, ",
    "3. language_plan is for describing a list of actions to achieve the user instruction. Each action is started "
    "by the step number and the action name, ",
    "4. executable_plan is a list of actions needed to achieve the user instruction, with each action having an "
    "action ID and a name.",
    "5. keep your plan efficient and concise.",
    "!!! When generating content for JSON strings, avoid using any contractions or abbreviated forms (like 's, 're, "
    "'ve, 'll, 'd, n't) that use apostrophes. Instead, write out full forms (is, are, have, will, would, not) to "
    "prevent parsing errors in JSON. Please do not output any other thing more than the above-mentioned JSON, do "
    "not include ```json and ```!!!.",
    "",
])


def action_list(actions: list[str]) -> str:
    """``get_availabel_action_prompt``: ``"\\naction id 0: <name>, \\naction id 1: <name>"``."""
    return ", ".join(f"\naction id {i}: {name}" for i, name in enumerate(actions))


def first_step_prompt(system_prompt: str, actions: list[str], instruction: str, examples: list[str] = ()) -> str:
    """The text EmbodiedBench sends with the first image of an episode to an ``InternVL`` model.

    ``system_prompt`` is the env's template with three ``{}`` (last action id, action list, examples);
    ``examples`` are the in-context examples already cut to ``n_shots``.
    """
    shots = "\n\n".join(f"## Task Execution Example {i}: \n {x}" for i, x in enumerate(examples))
    last = len(actions) - 1
    prompt = system_prompt.format(last, action_list(actions), shots)
    prompt += f"\n\n## Now the human instruction is: {instruction.rstrip('.')}."
    prompt += (" You are supposed to output in json. You need to describe current visual state from the image, "
               f"output your reasoning steps and plan. At the end, output the action id (0 ~ {last}) from the "
               "available actions to excute.")
    return prompt + JSON_TEMPLATE


_CONTRACTIONS = ("s", "re", "ll", "t", "d", "m", "ve")
_REASONING_VALUE = re.compile(r'("reasoning_and_reflection"\s*:\s*")(?P<value>.*?)(?=",\s*"language_plan")',
                              re.DOTALL)
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)"')


def fix_json(text: str) -> str:
    """``planner_utils.fix_json``, applied to every answer of an ``OpenGVLab/InternVL`` model before parsing."""
    text = text.replace("'", '"')
    for ending in _CONTRACTIONS:
        text = text.replace(f'"{ending} ', f"'{ending} ")
    text = text.replace("```json", "").replace("```", "")
    return _REASONING_VALUE.sub(lambda m: m.group(1) + _UNESCAPED_QUOTE.sub(r'\\"', m.group("value")), text)


#: ``_parse_point_action``'s explicit ``"action"`` values
_POINT_ACTIONS = frozenset({"pickup_by_point", "pick_by_point", "pickup_at_point", "pickup_point", "put_by_point",
                            "put_at_point", "open_by_point", "close_by_point", "toggleon_by_point",
                            "toggleoff_by_point", "slice_by_point"})
#: action words -> point action, first match wins; the order differs between the two official branches
_KIND_WITH_POINT = (("pickup_by_point", ("pick",)), ("put_by_point", ("put", "place")),
                    ("toggleon_by_point", ("turn on", "toggle on")), ("toggleoff_by_point", ("turn off", "toggle off")),
                    ("open_by_point", ("open",)), ("close_by_point", ("close",)), ("slice_by_point", ("slice",)))
_KIND_IN_NAME = (("toggleon_by_point", ("turn on", "toggle on")), ("toggleoff_by_point", ("turn off", "toggle off")),
                 ("put_by_point", ("put", "place")), ("open_by_point", ("open",)), ("close_by_point", ("close",)),
                 ("slice_by_point", ("slice",)), ("pickup_by_point", ("pick",)))
_INTERACTION_WORDS = ("pick", "put", "place", "open", "close", "turn on", "turn off", "toggle on", "toggle off",
                      "slice")
_POINT_WORDS = ("point", "pixel", "coord", "coordinate", "@", " at ")
_XY_IN_NAME = re.compile(r"(-?\d+)\s*[,，]\s*(-?\d+)")


def _kind(name: str, table: tuple) -> str | None:
    return next((kind for kind, words in table if any(w in name for w in words)), None)


def _rounded(point: list) -> list[int]:
    """``[int(round(float(x))), ...]``; ``TypeError``/``ValueError`` for non-numbers (``OverflowError`` escapes)."""
    return [int(round(float(point[0]))), int(round(float(point[1])))]


def _point_action(step: Any) -> dict | None:
    """``_parse_point_action``: a step that clicks at a pixel, or ``None``."""
    if not isinstance(step, dict):
        return None
    name = str(step.get("action_name", "")).strip()
    lower = name.lower()
    point = step.get("point") or step.get("pixel") or step.get("click_point")
    is_pair = isinstance(point, (list, tuple)) and len(point) == 2
    explicit = str(step.get("action", "")).strip().lower()
    if explicit in _POINT_ACTIONS and is_pair:
        try:
            return {"action": explicit, "point": _rounded(point)}
        except (TypeError, ValueError):
            return None
    if is_pair:
        try:
            xy = _rounded(point)
        except (TypeError, ValueError):
            xy = None
        kind = _kind(lower, _KIND_WITH_POINT) if xy is not None else None
        if kind:
            return {"action": kind, "point": xy}
    if not any(w in lower for w in _INTERACTION_WORDS) or not any(w in lower for w in _POINT_WORDS):
        return None
    match = _XY_IN_NAME.search(name)
    kind = _kind(lower, _KIND_IN_NAME) if match else None
    return {"action": kind, "point": [int(match.group(1)), int(match.group(2))]} if kind else None


def _steps(plan: Any, point_actions: bool) -> list | int:
    """The actions of ``executable_plan`` up to the first step without an integer ``action_id``."""
    actions: list = []
    for i, step in enumerate(plan):
        point = _point_action(step) if point_actions else None
        if point is not None:
            actions.append(point)
            continue
        if "action_id" not in step or not isinstance(step["action_id"], int):
            return INVALID_PLAN if i == 0 else actions
        actions.append(step["action_id"])
    return actions


def parse_plan(text: str, n_actions: int, point_actions: bool = False, fix: bool = True) -> int | list:
    """The actions EmbodiedBench executes for an answer: a list (ids, or point-action dicts), or -1 / -2.

    ``fix`` applies :func:`fix_json` first, as the ``OpenGVLab/InternVL`` route does; ``point_actions`` is the
    EB-ALFRED evaluator's setting. Ids outside ``0..n_actions-1`` cut the plan before the first of them
    (-1 when it is the first action).
    """
    if fix:
        text = fix_json(text)
    try:
        actions = _steps(json.loads(text)["executable_plan"], point_actions)
    except Exception:  # the official catch-all: any failure to read the plan is an invalid action
        return INVALID_PLAN
    if actions == INVALID_PLAN:
        return INVALID_PLAN
    if not actions:
        return EMPTY_PLAN
    for i, action in enumerate(actions):
        if isinstance(action, int) and not 0 <= action < n_actions:
            return INVALID_PLAN if i == 0 else actions[:i]
    return actions


# ---- importing EmbodiedBench's per-episode results ------------------------------------------------------------

_EPISODE_FILE = re.compile(r"episode_(\d+)_final_res\.json")
_OTHER_ENVS = ("eb_nav", "eb_manipulation")  #: ``log_path`` roots of EB-Navigation and EB-Manipulation


@dataclass
class _Episode:
    """One ``episode_<i>_final_res.json``: where it is, and its two metrics (``None`` with ``error``)."""

    env: str
    run: str
    subset: str
    index: int | None
    path: Path
    success: float | None = None
    progress: float | None = None
    error: str = ""

    @property
    def id(self) -> str:
        return f"{self.subset}/{self.path.name.removesuffix('_final_res.json')}"

    def known(self, episodes_per_subset: int) -> bool:
        """Whether the file's episode number is one of the test set's ``1..episodes_per_subset``."""
        return self.index is not None and 1 <= self.index <= episodes_per_subset


def _metric(data: dict, key: str) -> float:
    """A 0..1 metric of an episode file; a one-element list is unwrapped and a boolean counts as 0/1."""
    if key not in data:
        raise ValueError(f"no {key!r}")
    value = data[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{key} is {value!r}, not a number in [0, 1]")
    return float(value)


def _read(episode: _Episode) -> None:
    """Fill in ``success``/``progress``, or ``error`` with the reason the file cannot be used."""
    try:
        data = json.loads(episode.path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        episode.success, episode.progress = _metric(data, "task_success"), _metric(data, "task_progress")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        episode.error = f"{type(e).__name__}: {e}"


def _locate(path: Path) -> tuple[str | None, str, str]:
    """``(env, run, subset)`` of a ``.../<env>/<run>/<subset>/results/episode_<i>_final_res.json`` path.

    The env is the nearest folder above the subset named ``eb_alfred``/``eb_habitat`` (``None`` when
    there is none), the run everything between it and the subset (else the folder above the subset).
    """
    parts = path.resolve().parts
    subset_at = len(parts) - 3
    found = next((k for k in range(subset_at - 1, -1, -1) if parts[k] in SUBSETS), None)
    run = "/".join(parts[found + 1:subset_at]) if found is not None else parts[subset_at - 1]
    return (parts[found] if found is not None else None), run, parts[subset_at]


def _episodes(results_dir: Path, env: str | None) -> tuple[list[_Episode], list[str]]:
    """Every episode file under ``results_dir`` (for ``env`` when given), and files left out (with why)."""
    episodes, ignored = [], []
    for path in sorted(results_dir.rglob("episode_*_final_res.json")):
        shown = str(path.relative_to(results_dir))
        if path.parent.name != "results":
            ignored.append(f"{shown} (not in a results/ folder)")
            continue
        where, run, subset = _locate(path)
        other = next((part for part in path.resolve().parts[:-3] if part.startswith(_OTHER_ENVS)), None)
        if where is None and other is not None:
            ignored.append(f"{shown} (an {other} result: only EB-ALFRED and EB-Habitat are imported)")
            continue
        where = where or env
        if where is None:
            raise BenchmarkDataError(f"{path}: no eb_alfred or eb_habitat folder above it; pass env "
                                     "('eb_alfred' or 'eb_habitat') to say which benchmark it is")
        if env is not None and where != env:
            ignored.append(f"{shown} (an {where} result; importing {env})")
            continue
        if subset not in SUBSETS[where]:
            raise BenchmarkDataError(f"{path.parent.parent}: {subset!r} is not an {where} subset "
                                     f"(expected one of {list(SUBSETS[where])})")
        match = _EPISODE_FILE.fullmatch(path.name)
        episodes.append(_Episode(where, run, subset, int(match.group(1)) if match else None, path))
    return episodes, ignored


def _official_summary(results_folders: set[Path]) -> dict[str, Any]:
    """Each subset's ``summary.json`` as EmbodiedBench wrote it (for comparison only; never scored)."""
    summaries: dict[str, Any] = {}
    for folder in sorted(results_folders):
        path = folder / "summary.json"
        if path.is_file():
            try:
                summaries[folder.parent.name] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                summaries[folder.parent.name] = {"error": f"{type(e).__name__}: {e}"}
    return summaries


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _metrics(env: str, episodes: list[_Episode], results_dir: Path, episodes_per_subset: int,
             ignored: list[str]) -> dict[str, Any]:
    """The shape of every benchmark's ``metrics.json``, plus task progress and the import's bookkeeping."""
    known = [e for e in episodes if e.known(episodes_per_subset)]
    unknown = [e for e in episodes if not e.known(episodes_per_subset)]
    good = [e for e in known if not e.error]
    by_group = {}
    for subset in SUBSETS[env]:
        rows = [e for e in good if e.subset == subset]
        if rows:
            by_group[subset] = {"score": _mean([e.success for e in rows]), "n": len(rows),
                                "task_progress": _mean([e.progress for e in rows])}
    n_items = episodes_per_subset * len(SUBSETS[env])
    return {
        "benchmark": env, "protocol": "official",
        "score": _mean([e.success for e in good]),
        "n": len(known), "n_scored": len(good), "n_unparsed": len(known) - len(good),
        "by_group": by_group,
        "task_progress": _mean([e.progress for e in good]),
        "subset_mean_score": _mean([g["score"] for g in by_group.values()]),
        "n_items": n_items, "n_missing_predictions": max(0, n_items - len(known)),
        "missing_subsets": [s for s in SUBSETS[env] if not any(e.subset == s for e in known)],
        "unknown_ids": [e.id for e in unknown][:20], "n_unknown_ids": len(unknown),
        "unreadable_files": [{"file": str(e.path.relative_to(results_dir)), "error": e.error}
                             for e in known if e.error],
        "ignored_files": ignored,
        "official_summary": _official_summary({e.path.parent for e in episodes}),
        "run": episodes[0].run, "results_dir": str(results_dir.resolve()),
        "options": {"episodes_per_subset": episodes_per_subset},
        "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _append_report(metrics: dict, path: Path) -> None:
    """What ``write_report`` does not show: task progress, and every file that was not scored."""
    lines = [f"Imported from EmbodiedBench run `{metrics['run']}` ({metrics['results_dir']}). The score is the "
             "success rate (mean `task_success`); answers not parsed are unreadable episode files, unanswered "
             f"items the episodes of the {metrics['n_items']}-episode test set without a result file.", "",
             f"Mean of the subset success rates: {metrics['subset_mean_score']:.4f}. Task progress (the metric of "
             f"EmbodiedBench's own summary.json): {metrics['task_progress']:.4f}.", ""]
    if metrics["by_group"]:
        lines += ["| subset | success | task progress | episodes |", "|---|---|---|---|"]
        lines += [f"| {s} | {g['score']:.4f} | {g['task_progress']:.4f} | {g['n']} |"
                  for s, g in metrics["by_group"].items()]
        lines.append("")
    for title, entries in (("Unreadable episode files (not scored)",
                            [f"`{u['file']}`: {u['error']}" for u in metrics["unreadable_files"]]),
                           ("Episode numbers outside the test set (not scored)", metrics["unknown_ids"]),
                           ("Subsets without any episode", metrics["missing_subsets"]),
                           ("Files left out", metrics["ignored_files"])):
        if entries:
            lines += [f"{title}:", ""] + [f"- {entry}" for entry in entries] + [""]
    with open(path, "a") as stream:
        stream.write("\n".join(lines))


def _write(env: str, metrics: dict, episodes: list[_Episode], results_dir: Path, out: Path) -> None:
    """``metrics.json``, ``scores.jsonl`` (one row per episode), ``run.json`` and ``report.md`` in ``out``."""
    from vlaser.eval.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    with open(out / "scores.jsonl", "w") as stream:
        for e in episodes:
            error = e.error if e.known(metrics["options"]["episodes_per_subset"]) else "outside the test set"
            row = {"id": e.id, "score": None if error else e.success, "parsed": not error, "group": e.subset,
                   "task_progress": None if error else e.progress, "file": str(e.path.relative_to(results_dir))}
            stream.write(json.dumps({**row, **({"error": error} if error else {})}) + "\n")
    (out / "run.json").write_text(json.dumps({"benchmark": env, "model": metrics["run"],
                                              "source": "EmbodiedBench episode results",
                                              "results_dir": metrics["results_dir"]}, indent=2) + "\n")
    write_report(metrics, out, [])
    _append_report(metrics, out / "report.md")


def import_results(results_dir: str | Path, out: str | Path, env: str | None = None,
                   episodes_per_subset: int = EPISODES_PER_SUBSET) -> dict[str, dict]:
    """Read an EmbodiedBench run's episode files; write ``OUT/<eb_alfred|eb_habitat>/`` like any benchmark.

    ``results_dir`` may be EmbodiedBench's ``running/`` folder, an env folder, one run or one subset; it
    must hold one run per env. ``env`` (``eb_alfred``/``eb_habitat``, or ``eb-alf``/``eb-hab``) selects one
    env, and names it when the folders were moved out of their ``eb_alfred``/``eb_habitat`` parent.
    Returns ``{env: metrics}``.
    """
    results_dir, out = Path(results_dir), Path(out)
    env = ENV_ALIASES.get(env, env)
    if env is not None and env not in SUBSETS:
        raise UserInputError(f"env must be one of {sorted(SUBSETS)} (or {sorted(ENV_ALIASES)}), got {env!r}")
    if not results_dir.is_dir():
        raise BenchmarkDataError(f"{results_dir}: not a folder")
    episodes, ignored = _episodes(results_dir, env)
    if not episodes:
        raise BenchmarkDataError(f"{results_dir}: no EmbodiedBench episode results "
                                 "(<subset>/results/episode_<i>_final_res.json) found")
    all_metrics = {}
    for name in sorted({e.env for e in episodes}):
        mine = [e for e in episodes if e.env == name]
        runs = sorted({e.run for e in mine})
        if len(runs) > 1:
            raise BenchmarkDataError(f"{results_dir}: {len(runs)} {name} runs ({runs}); point RESULTS_DIR at one "
                                     "of them")
        for episode in mine:
            if not episode.known(episodes_per_subset):
                log.warning("%s: episode number outside 1..%d; not scored", episode.path, episodes_per_subset)
                continue
            _read(episode)
            if episode.error:
                log.warning("%s: %s", episode.path, episode.error)
        metrics = _metrics(name, mine, results_dir, episodes_per_subset, ignored)
        _write(name, metrics, mine, results_dir, out / name)
        all_metrics[name] = metrics
    return all_metrics

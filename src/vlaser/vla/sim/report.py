"""Scores and pages of a Meta-World evaluation: success per task, per difficulty group and overall with Wilson
95% intervals, beside the scripted expert; ``report.md`` and ``index.html`` with one frame strip per recorded
rollout."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vlaser.vla.sim import metaworld as mw

Z95 = 1.959963984540054
#: The SmolVLA paper's Meta-World table (arXiv 2506.01844, Table 2): success (%) per LeRobot difficulty group on
#: MT50, 10 trials per task; "VLA pretraining" marks robot-data pretraining. Provenance: docs/vla.md.
PAPER_SOURCE = "SmolVLA (Shukor et al., arXiv 2506.01844), Table 2: Meta-World MT50, 10 trials per task"
PAPER_GROUPS = ("easy", "medium", "hard", "very_hard", "average")
PAPER = {
    "Diffusion Policy": (23.1, 10.7, 1.9, 6.1, 10.5),
    "TinyVLA": (77.6, 21.5, 11.4, 15.8, 31.6),
    "pi0 (3.5B-PaliGemma, no VLA pretraining)": (80.4, 40.9, 36.7, 44.0, 50.5),
    "pi0 (3.5B, VLA pretraining)": (71.8, 48.2, 41.7, 30.0, 47.9),
    "SmolVLA (0.24B)": (86.43, 46.36, 35.0, 60.0, 56.95),
    "SmolVLA (0.45B)": (82.5, 41.8, 45.0, 60.0, 57.3),
    "SmolVLA (2.25B)": (87.14, 51.82, 70.0, 64.0, 68.24),
}


def wilson(successes: int, n: int) -> list[float]:
    """The Wilson score 95% interval of a success rate (sound at 0 and n successes, unlike the normal one)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return [0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half]


def score(outcomes: Sequence[bool]) -> dict:
    k, n = int(sum(outcomes)), len(outcomes)
    return {"success_rate": k / n if n else float("nan"), "successes": k, "episodes": n, "ci95": wilson(k, n)}


def summarize(rows: Sequence[Mapping], expert: Mapping[str, Sequence[bool]] | None, tasks: Sequence[str]) -> dict:
    """Per task, per group (LeRobot's difficulty groups, and mt10 where the run covers all of it) and overall."""
    by_task = {t: [bool(r["success"]) for r in rows if r["task"] == t] for t in tasks}
    steps = {t: [int(r["steps"]) for r in rows if r["task"] == t] for t in tasks}
    out = {"tasks": {}, "groups": {}}
    for t in tasks:
        out["tasks"][t] = {**score(by_task[t]), "difficulty": mw.difficulty(t), "instruction": mw.INSTRUCTIONS[t],
                           "mean_steps": float(np.mean(steps[t])) if steps[t] else None}
        if expert is not None:
            out["tasks"][t]["expert"] = score(expert.get(t, []))
    groups = {g: [t for t in names if t in by_task] for g, names in mw.DIFFICULTY.items()}
    if all(t in by_task for t in mw.MT10):
        groups["mt10"] = list(mw.MT10)
    for g, names in groups.items():
        if names:
            out["groups"][g] = {**score([s for t in names for s in by_task[t]]), "tasks": len(names)}
            if expert is not None:
                out["groups"][g]["expert"] = score([s for t in names for s in expert.get(t, [])])
    out["overall"] = score([s for t in tasks for s in by_task[t]])
    out["overall"]["mean_of_tasks"] = float(np.mean([out["tasks"][t]["success_rate"] for t in tasks]))
    if expert is not None:
        out["overall"]["expert"] = score([s for t in tasks for s in expert.get(t, [])])
    return out


def _cell(entry: Mapping) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] ({entry['successes']}/{entry['episodes']})"


def markdown(results: Mapping, title: str) -> str:
    s = results["scores"]
    lines = [f"# {title}", "", f"Policy: `{results['policy']}`; {results['episodes_per_task']} episodes per task "
             f"(seeds from block {results['seed']}); render {results['render']}; step limit "
             f"{results['max_steps'] or 'the env’s (500)'}.", "",
             "| task | difficulty | success [95% CI] | scripted expert | mean steps |", "|---|---|---|---|---|"]
    for t, e in s["tasks"].items():
        expert = _cell(e["expert"]) if "expert" in e else "-"
        lines.append(f"| {t} | {e['difficulty']} | {_cell(e)} | {expert} | {e['mean_steps'] or 0:.0f} |")
    lines += ["", "| group | tasks | success [95% CI] | scripted expert |", "|---|---|---|---|"]
    for g, e in s["groups"].items():
        lines.append(f"| {g} | {e['tasks']} | {_cell(e)} | {_cell(e['expert']) if 'expert' in e else '-'} |")
    o = s["overall"]
    lines.append(f"| overall | {len(s['tasks'])} | {_cell(o)} | {_cell(o['expert']) if 'expert' in o else '-'} |")
    lines += ["", *paper_table(s["groups"]), "",
              f"Speed: {results['frames_per_second']:.1f} rendered observations per second, "
              f"{results['env_steps_per_second']:.1f} env steps per second ({results['workers']} workers).", ""]
    return "\n".join(lines)


def paper_table(groups: Mapping[str, Mapping]) -> list[str]:
    """The published rows beside this run's (per group, in %), with the caveat that the task sets differ unless
    the run covers a whole group."""
    ours = [f"{100 * groups[g]['success_rate']:.1f}" if g in groups else "-" for g in PAPER_GROUPS[:-1]]
    lines = [f"Published numbers ({PAPER_SOURCE}); a group here covers only the tasks this run evaluated "
             "(see the task counts above), and the seeding and rendering differ (docs/vla.md).", "",
             "| policy | " + " | ".join(PAPER_GROUPS) + " |", "|---" * (len(PAPER_GROUPS) + 1) + "|",
             "| this run | " + " | ".join(ours) + " | - |"]
    lines += [f"| {name} | " + " | ".join(f"{v:g}" for v in row) + " |" for name, row in PAPER.items()]
    return lines


def page(results: Mapping, title: str, strips: Mapping[str, Sequence[Mapping]]) -> str:
    """``index.html``: the tables (as preformatted markdown) and every recorded rollout's frame strip."""
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;max-width:100%}"
             ".ok{color:#070}.bad{color:#a00}pre{background:#f4f4f4;padding:1em}</style>",
             f"<h1>{html.escape(title)}</h1><pre>{html.escape(markdown(results, title))}</pre>"]
    for task, items in strips.items():
        parts.append(f"<h2>{html.escape(task)}: {html.escape(mw.INSTRUCTIONS[task])}</h2>")
        for item in items:
            cls, word = ("ok", "success") if item["success"] else ("bad", "failure")
            parts.append(f"<p class={cls}>seed {item['seed']}: {word} after {item['steps']} steps</p>"
                         f"<img src=\"{html.escape(item['strip'])}\" alt=\"{task} seed {item['seed']}\">")
    return "\n".join(parts) + "\n"


def frame_strip(frames: Sequence[np.ndarray], success: bool, path: Path, count: int) -> None:
    """Up to ``count`` evenly spaced frames (the last included) side by side in a green or red frame."""
    from PIL import Image

    picks = np.unique(np.round(np.linspace(0, len(frames) - 1, min(count, len(frames)))).astype(int))
    row = np.concatenate([frames[i] for i in picks], axis=1)
    border = 3
    sheet = np.empty((row.shape[0] + 2 * border, row.shape[1] + 2 * border, 3), np.uint8)
    sheet[:] = (0, 150, 0) if success else (190, 0, 0)
    sheet[border:-border, border:-border] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)

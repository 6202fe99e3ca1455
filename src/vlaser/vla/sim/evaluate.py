"""``vlaser vla eval metaworld``: a policy (a folder, or a server through ``PolicyClient``) rolled out closed-loop on
Meta-World tasks, scored by the env's own success, beside the scripted expert on the same seeds.

Outputs in ``out``: ``episodes.jsonl`` (one line per finished episode: a killed run resumes from it),
``expert.json``, ``results.json``, ``report.md``, ``index.html`` and ``rollouts/*.png`` frame strips: the first
``record`` episodes of every task, and its first success and first failure when those come later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vlaser.errors import UserInputError
from vlaser.vla.sim import metaworld as mw
from vlaser.vla.sim import report
from vlaser.vla.sim.collect import SIM_FILE, Progress, episode_seeds
from vlaser.vla.sim.rollout import (
    EPISODES_FILE,
    STRIP_FRAMES,
    LocalPolicy,
    ServerPolicy,
    expert_results,
    read_episodes,
    rollouts,
)

POLICY_SIM_FILE = "sim.json"  #: the training dataset's meta/sim.json, copied into the policy by train_vla
EVAL_SEED = 1  #: held-out seeds: collection uses block 0 by default


def render_settings(policy: str | None, dataset: str | None, image_size: int | None,
                    cheap: bool | None) -> mw.RenderSettings:
    """The render settings the policy was trained with (its ``sim.json``, or ``dataset``'s), overridden by flags."""
    record, where = None, None
    for candidate in ([Path(dataset) / SIM_FILE] if dataset else []) + (
            [Path(policy) / POLICY_SIM_FILE] if policy else []):
        if candidate.is_file():
            record, where = json.loads(candidate.read_text()), str(candidate)
            break
    if record is None and (image_size is None or cheap is None):
        raise UserInputError("cannot tell how the policy's images were rendered: give --dataset (the "
                             "demonstrations it was trained on), or --image-size and --render")
    base = mw.RenderSettings.from_json(record["render"], where) if record else mw.RenderSettings()
    return mw.RenderSettings(image_size=image_size or base.image_size, camera=base.camera,
                             cheap=base.cheap if cheap is None else cheap)


def _load_policy(policy: str | None, server: str | None, device: str, dtype: str, noise_seed: int, batch: int):
    if (policy is None) == (server is None):
        raise UserInputError("give one of --policy DIR or --server URL")
    if server is not None:
        return ServerPolicy(server), server
    from vlaser.vla.policy import VLAPolicy

    return LocalPolicy(VLAPolicy.from_pretrained(policy, dtype=dtype, device=device), noise_seed, batch), policy


def _settings(out: Path, settings: dict) -> None:
    """Write the run's settings, or check a resumed run's match (results of two settings never mix)."""
    path = out / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise UserInputError(f"{path}: this folder holds a run with other settings ({', '.join(changed)}); "
                                 f"use a new --out")
    path.write_text(json.dumps(settings, indent=2) + "\n")


class _Recorder:
    """Appends finished episodes and draws the strips worth keeping."""

    def __init__(self, out: Path, rows: list[dict], record: int, bar: Progress) -> None:
        self.out, self.rows, self.record, self.bar = out, rows, record, bar
        self.file = (out / EPISODES_FILE).open("a")

    def wanted(self, task: str, success: bool) -> bool:
        mine = [r for r in self.rows if r["task"] == task]
        drawn = [r for r in mine if r.get("strip")]
        return len(mine) < self.record or not any(r["success"] == success for r in drawn)

    def needs_frames(self, task: str) -> bool:
        """Whether an episode of ``task`` starting now may be drawn (frames are kept only then)."""
        return self.wanted(task, True) or self.wanted(task, False)

    def __call__(self, episode, success: bool, steps: int) -> None:
        row = {"task": episode.task, "seed": episode.seed, "success": bool(success), "steps": int(steps)}
        if episode.film and self.wanted(episode.task, success):
            row["strip"] = f"rollouts/{mw.task_slug(episode.task)}_{episode.seed}.png"
            report.frame_strip(episode.film, success, self.out / row["strip"], STRIP_FRAMES)
        self.rows.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.bar.update(episode.seen, success=f"{sum(r['success'] for r in self.rows)}/{len(self.rows)}")


def evaluate_metaworld(out: str | Path, tasks: str | list[str], episodes: int, *, policy: str | None = None,
                       server: str | None = None, dataset: str | None = None, image_size: int | None = None,
                       cheap: bool | None = None, workers: int = 1, slots: int = 4, seed: int = EVAL_SEED,
                       max_steps: int | None = None, instruction: str | None = None, record: int = 2,
                       noise_seed: int = 0, device: str = "cpu", dtype: str = "float32", batch_size: int = 64,
                       expert: bool = True, progress: bool = True) -> dict:
    """Evaluate and write the outputs (see the module docstring); returns ``results.json``'s contents."""
    out, tasks = Path(out), mw.resolve_tasks(tasks)
    render = render_settings(policy, dataset, image_size, cheap)
    runner, name = _load_policy(policy, server, device, dtype, noise_seed, batch_size)
    out.mkdir(parents=True, exist_ok=True)
    _settings(out, {"policy": name, "tasks": tasks, "episodes_per_task": episodes, "seed": seed,
                    "render": render.to_json(), "max_steps": max_steps, "instruction": instruction,
                    "noise_seed": noise_seed, "act_steps": runner.act_steps})
    rows = read_episodes(out / EPISODES_FILE)
    done = {(r["task"], r["seed"]) for r in rows}
    jobs = [(t, s) for t in tasks for s in episode_seeds(seed, episodes) if (t, s) not in done]
    bar = Progress(len(jobs), "eval", progress)
    recorder = _Recorder(out, rows, record, bar)
    start = time.perf_counter()
    try:
        rollouts(runner, jobs, render, workers, slots, recorder, max_steps, instruction, noise_seed,
                 recorder.needs_frames)
    finally:
        recorder.file.close()
        bar.close()
    seconds = time.perf_counter() - start
    ran = set(jobs)
    expert_scores = _expert(out, tasks, episodes, seed, workers, max_steps) if expert else None
    results = {"policy": name, "tasks": tasks, "episodes_per_task": episodes, "seed": seed,
               "render": render.to_json(), "max_steps": max_steps, "instruction": instruction,
               "act_steps": runner.act_steps, "workers": workers, "seconds": round(seconds, 1),
               "frames_per_second": bar.frames_per_second if jobs else 0.0,
               "env_steps_per_second": sum(r["steps"] for r in rows if (r["task"], r["seed"]) in ran)
               / max(seconds, 1e-9),
               "scores": report.summarize(rows, expert_scores, tasks), "versions": mw.versions(),
               "published": {"source": report.PAPER_SOURCE, "groups": list(report.PAPER_GROUPS),
                             "rows": {name: list(row) for name, row in report.PAPER.items()}}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    title = f"Meta-World closed-loop evaluation: {Path(name).name}"
    (out / "report.md").write_text(report.markdown(results, title))
    strips: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("strip"):
            strips.setdefault(r["task"], []).append(r)
    (out / "index.html").write_text(report.page(results, title, strips))
    return results


def _expert(out: Path, tasks: list[str], episodes: int, seed: int, workers: int,
            max_steps: int | None) -> dict[str, list[bool]]:
    """The scripted expert's outcomes on the same seeds (cached in ``expert.json`` for a resumed run)."""
    path = out / "expert.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    missing = [(t, s) for t in tasks for s in episode_seeds(seed, episodes) if t not in cached]
    if missing:
        cached.update(expert_results(missing, workers, max_steps))
        path.write_text(json.dumps(cached, indent=2) + "\n")
    return {t: cached[t] for t in tasks}

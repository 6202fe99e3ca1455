"""``vlaser vla collect metaworld``: Meta-World's scripted experts, rendered headless in worker processes, written
as a LeRobot v3.0 dataset with vlaser's writer.

Each (task, episode seed) is one job; the jobs run in ``workers`` processes and come back in job order, so the
same command writes the same dataset whatever the number of workers. An episode the expert does not finish
within the env's step limit is dropped and counted. ``meta/sim.json`` records the simulator, its versions, the
render settings, the seeds kept and dropped, and the collection speed; evaluation reads the render settings
back from it.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlaser.errors import UserInputError
from vlaser.vla.sim import metaworld as mw

#: episode seeds of one --seed: seed * SEED_BLOCK + 0 .. episodes - 1 (evaluation draws from another block)
SEED_BLOCK = 100_000
SIM_FILE = "meta/sim.json"

_ENVS: dict[tuple, mw.MetaWorldEnv] = {}  # a process's envs, one per task and settings, built on first use
_RENDER: mw.RenderSettings | None = None
_MAX_STEPS: int | None = None


def episode_seeds(seed: int, episodes: int) -> list[int]:
    if not 1 <= episodes <= SEED_BLOCK:
        raise UserInputError(f"episodes per task must be in 1..{SEED_BLOCK}, got {episodes}")
    return [seed * SEED_BLOCK + i for i in range(episodes)]


def _init_worker(render: mw.RenderSettings | None, max_steps: int | None = None) -> None:
    global _RENDER, _MAX_STEPS
    _RENDER, _MAX_STEPS = render, max_steps
    mw.setup_gl()


def worker_env(task: str) -> mw.MetaWorldEnv:
    """This process's env for ``task`` (rendering with the settings the worker was started with)."""
    key = (task, _RENDER, _MAX_STEPS)
    if key not in _ENVS:
        _ENVS[key] = mw.MetaWorldEnv(task, _RENDER, _MAX_STEPS)
    return _ENVS[key]


def demonstration(job: tuple[str, int]) -> tuple[str, int, dict[str, np.ndarray] | None, int]:
    """The expert's episode ``(task, seed)``: ``(task, seed, arrays or None if it failed, frames rendered)``."""
    task, seed = job
    env = worker_env(task)
    env.reset(seed)
    images, states, actions, success = [], [], [], []
    while not env.done:
        images.append(env.image())
        states.append(env.state)
        actions.append(env.expert_action())
        success.append(env.step(actions[-1]))  # the action as stored, so a replay retraces the episode
    if not env.success:
        return task, seed, None, len(images)
    return task, seed, {mw.CAMERA: np.stack(images), mw.STATE: np.stack(states), mw.ACTION: np.stack(actions),
                        mw.SUCCESS: np.asarray(success, dtype=bool)}, len(images)


def run_jobs(function, jobs: list, workers: int, render: mw.RenderSettings | None,
             max_steps: int | None = None) -> Iterator:
    """``function(job)`` for every job, in job order, in ``workers`` processes. They are forked (no re-import of
    torch), so the parent never renders: a GL context (llvmpipe's threads and locks) does not survive a fork, and
    a child forked after the parent rendered can hang. Jobs without rendering may run in this process."""
    if workers < 1:
        raise UserInputError(f"workers must be at least 1, got {workers}")
    mw.setup_gl()
    if workers == 1 and render is None:
        _init_worker(render, max_steps)
        yield from map(function, jobs)
        return
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(render, max_steps)) as pool:
        yield from pool.imap(function, jobs, chunksize=1)


class Progress:
    """A tqdm bar over jobs with the frames rendered per second."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=what, unit="ep", disable=not enabled, file=sys.stderr)
        self.frames, self.start = 0, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def update(self, frames: int, **postfix) -> None:
        self.frames += frames
        self.bar.set_postfix(frames_per_s=f"{self.frames_per_second:.1f}", **postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def collect_metaworld(out: str | Path, tasks: str | list[str], episodes: int, render: mw.RenderSettings,
                      workers: int = 1, seed: int = 0, video: bool = False, max_steps: int | None = None,
                      progress: bool = True) -> dict:
    """Write ``episodes`` expert episodes per task to ``out`` (a new folder); returns what ``meta/sim.json``
    records plus the collection's speed. An episode the expert has not finished in ``max_steps`` (default: the
    env's 500) is dropped."""
    from vlaser.vla.data import Episode, write_dataset

    out, tasks = Path(out), mw.resolve_tasks(tasks)
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out}: not empty (collect into a new folder)")
    seeds = episode_seeds(seed, episodes)
    jobs = [(task, s) for task in tasks for s in seeds]
    kept = {task: [] for task in tasks}
    dropped = {task: [] for task in tasks}
    bar = Progress(len(jobs), "collect", progress)

    def successful() -> Iterator[Episode]:
        for task, s, arrays, frames in run_jobs(demonstration, jobs, workers, render, max_steps):
            (kept if arrays is not None else dropped)[task].append(s)
            bar.update(frames, dropped=sum(map(len, dropped.values())))
            if arrays is not None:
                yield Episode(task=mw.INSTRUCTIONS[task], features=arrays)

    try:
        write_dataset(out, successful(), mw.FPS, mw.features(render.image_size, "video" if video else "image"),
                      robot_type="sawyer")
    finally:
        bar.close()
    record = {"simulator": "metaworld", **mw.versions(), "render": render.to_json(), "tasks": tasks,
              "episodes_per_task": episodes, "seed": seed, "max_steps": max_steps, "seeds": kept, "dropped": dropped,
              "episodes": sum(map(len, kept.values())), "dropped_episodes": sum(map(len, dropped.values()))}
    (out / SIM_FILE).write_text(json.dumps(record, indent=2) + "\n")  # no timings: the same command, the same bytes
    return {**record, "frames_rendered": bar.frames, "seconds": round(bar.seconds, 1),
            "frames_per_second": round(bar.frames_per_second, 2), "workers": workers}


def read_sim(dataset: str | Path) -> dict:
    """A collected dataset's ``meta/sim.json``."""
    path = Path(dataset) / SIM_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path}: cannot read the simulator record ({e}); was the dataset written by "
                             f"'vlaser vla collect'?") from e

"""Closed-loop rollouts on Meta-World: the envs step and render in worker processes, the policy answers every
live episode's observation in one batched call (or one request each through ``PolicyClient``), and
``act_steps`` of each chunk are executed before the next observation. An episode ends at the env's success or
at the step limit (the env's 500, LeRobot's; ``max_steps`` lowers it).

Each finished episode is appended to ``episodes.jsonl`` at once, so a killed evaluation resumes where it
stopped. The scripted expert runs on the same seeds without rendering (its actions read the simulator's state).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaser.errors import UserInputError
from vlaser.vla.sim import metaworld as mw
from vlaser.vla.sim.collect import _init_worker, run_jobs, worker_env

EPISODES_FILE = "episodes.jsonl"
STRIP_FRAMES = 10  #: frames drawn per recorded episode
FILM_FRAMES = 4 * STRIP_FRAMES  #: at most this many frames held per running episode


@dataclass
class Live:
    """One running episode: its latest observation, how many it has rendered, and a thinned film of them (every
    ``stride``-th, the stride doubling whenever ``FILM_FRAMES`` are held: bounded memory, evenly spaced)."""

    task: str
    seed: int
    observation: dict
    keep: bool = True
    seen: int = 0
    stride: int = 1
    frames: list[np.ndarray] = field(default_factory=list)
    last: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        self.seen += 1
        if not self.keep:
            return
        self.last = image
        if (self.seen - 1) % self.stride == 0:
            self.frames.append(image)
            if len(self.frames) >= FILM_FRAMES:
                self.frames, self.stride = self.frames[::2], self.stride * 2

    @property
    def film(self) -> list[np.ndarray]:
        """The kept frames, ending with the latest observation."""
        if self.last is None:
            return []
        return self.frames if self.frames[-1] is self.last else [*self.frames, self.last]


# ------------------------------------------------------------------------------------------------ worker side


def _worker(conn, render: mw.RenderSettings, max_steps: int | None) -> None:
    """A worker's loop: ``("start", slot, task, seed)`` -> observation; ``("act", [(slot, actions), ...])`` ->
    ``[(slot, observation or None, success, steps), ...]``; ``None`` stops it."""
    _init_worker(render, max_steps)
    envs: dict[int, mw.MetaWorldEnv] = {}
    spare: dict[str, list[mw.MetaWorldEnv]] = {}
    while (message := conn.recv()) is not None:
        if message[0] == "start":
            _, slot, task, seed = message
            if slot in envs:
                spare.setdefault(envs[slot].task, []).append(envs.pop(slot))
            envs[slot] = spare.get(task, []).pop() if spare.get(task) else mw.MetaWorldEnv(task, render, max_steps)
            envs[slot].reset(seed)
            conn.send(_observe(envs[slot]))
        else:
            conn.send([_act(slot, envs[slot], actions) for slot, actions in message[1]])


def _observe(env: mw.MetaWorldEnv) -> dict:
    return {"image": env.image(), "state": env.state}


def _act(slot: int, env: mw.MetaWorldEnv, actions: np.ndarray) -> tuple:
    for action in actions:
        env.step(action)
        if env.done:
            break
    return slot, None if env.done else _observe(env), env.success, env.steps


class Workers:
    """``workers`` processes of ``slots`` episodes each, stepped in lockstep by the caller."""

    def __init__(self, workers: int, slots: int, render: mw.RenderSettings, max_steps: int | None) -> None:
        mw.setup_gl()
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.conns, self.procs = [], []
        for _ in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, args=(child, render, max_steps), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.slots = [(w, s) for s in range(slots) for w in range(workers)]

    def start(self, where: tuple[int, int], task: str, seed: int) -> dict:
        w, s = where
        self.conns[w].send(("start", s, task, seed))
        return self.conns[w].recv()

    def act(self, actions: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], tuple]:
        """Execute each slot's actions in parallel; ``{slot: (observation or None, success, steps)}``."""
        by_worker: dict[int, list] = {}
        for (w, s), a in actions.items():
            by_worker.setdefault(w, []).append((s, a))
        for w, items in by_worker.items():
            self.conns[w].send(("act", items))
        return {(w, slot): rest for w in by_worker for slot, *rest in self.conns[w].recv()}

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


# ------------------------------------------------------------------------------------------------ policies


def noise_for(noise_seed: int, task: str, seed: int, step: int, shape: tuple[int, int]) -> np.ndarray:
    """The flow's starting noise of one chunk: fixed by the episode and step, whatever runs beside it."""
    return np.random.default_rng([noise_seed, zlib.crc32(task.encode()), seed, step]).standard_normal(shape).astype(
        np.float32)


class LocalPolicy:
    """A ``VLAPolicy`` answering a batch of observations in one ``sample_actions`` call."""

    def __init__(self, policy, noise_seed: int = 0, batch_size: int = 64) -> None:
        if policy.normalizer is None:
            raise UserInputError("the policy has no normaliser (norm_stats.json)")
        self.policy, self.noise_seed, self.batch_size = policy, noise_seed, batch_size
        cfg = policy.config
        self.chunk_size, self.act_steps, self.action_dim = cfg.chunk_size, cfg.act_steps, cfg.action_dim

    def act(self, observations: Sequence[dict]) -> np.ndarray:
        return np.concatenate([self._act(observations[i:i + self.batch_size])
                               for i in range(0, len(observations), self.batch_size)])

    def _act(self, observations: Sequence[dict]) -> np.ndarray:
        import torch
        from PIL import Image

        from vlaser.vla.policy import ACTION_KEY, STATE_KEY

        pol = self.policy
        batch = pol.collator.prefix([[Image.fromarray(o["image"])] for o in observations],
                                    [o["instruction"] for o in observations])
        states = pol.normalizer.normalize(STATE_KEY, np.stack([o["state"] for o in observations]).astype(np.float64))
        noise = np.stack([o["noise"] for o in observations])
        device = pol.model.vlm.device
        pol.model.eval()
        with torch.no_grad():
            out = pol.model.sample_actions(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                           batch["pixel_values"].to(device, pol.model.vlm.dtype),
                                           torch.as_tensor(np.asarray(states, np.float32), device=device),
                                           noise=torch.as_tensor(noise, device=device))
        actions = pol.normalizer.unnormalize(ACTION_KEY, out.float().cpu().numpy().astype(np.float64))
        return np.asarray(actions, np.float32)


class ServerPolicy:
    """A policy served by ``vlaser vla serve``, asked through ``PolicyClient`` one observation at a time."""

    def __init__(self, url: str) -> None:
        from vlaser.vla.client import PolicyClient

        self.client = PolicyClient(url)
        info = self.client.health()
        self.chunk_size, self.act_steps = int(info["chunk_size"]), int(info["act_steps"])
        self.action_dim = int(info["action_dim"])

    def act(self, observations: Sequence[dict]) -> np.ndarray:
        return np.asarray([self.client.act([o["image"]], o["state"], o["instruction"], noise=o["noise"])
                           for o in observations], np.float32)


# ------------------------------------------------------------------------------------------------ the loop


def rollouts(policy, jobs: list[tuple[str, int]], render: mw.RenderSettings, workers: int, slots: int,
             on_done: Callable[[Live, bool, int], None], max_steps: int | None = None,
             instruction: str | None = None, noise_seed: int = 0,
             keep_frames: Callable[[str], bool] = lambda task: True) -> None:
    """Run ``policy`` on every ``(task, seed)`` job; ``on_done(episode, success, steps)`` as each one ends;
    frames are kept for the episodes whose task ``keep_frames(task)`` says (when they start)."""
    if not jobs:
        return
    pool = Workers(workers, slots, render, max_steps)
    queue, live = list(reversed(jobs)), {}
    try:
        def start(where):
            task, seed = queue.pop()
            text = mw.INSTRUCTIONS[task] if instruction is None else instruction
            obs = pool.start(where, task, seed)
            live[where] = Live(task, seed, {**obs, "instruction": text, "steps": 0}, keep=keep_frames(task))
            live[where].add(obs["image"])

        for where in pool.slots[:len(queue)]:
            start(where)
        while live:
            order = list(live)
            observations = []
            for where in order:
                ep = live[where]
                noise = noise_for(noise_seed, ep.task, ep.seed, ep.observation["steps"],
                                  (policy.chunk_size, policy.action_dim))
                observations.append({**ep.observation, "noise": noise})
            chunks = policy.act(observations)
            actions = {where: chunk[:policy.act_steps] for where, chunk in zip(order, chunks)}
            for where, (obs, success, steps) in pool.act(actions).items():
                ep = live[where]
                if obs is None:
                    on_done(live.pop(where), success, steps)
                    if queue:
                        start(where)
                    continue
                ep.observation.update(obs, steps=steps)
                ep.add(obs["image"])
    finally:
        pool.close()


def expert_episode(job: tuple[str, int]) -> tuple[str, int, bool, int]:
    """The scripted expert on ``(task, seed)`` without rendering: ``(task, seed, success, steps)``."""
    task, seed = job
    env = worker_env(task)
    env.reset(seed)
    while not env.done:
        env.step(env.expert_action())
    return task, seed, env.success, env.steps


def expert_results(jobs: list[tuple[str, int]], workers: int, max_steps: int | None = None) -> dict[str, list[bool]]:
    """Per task, the expert's success on each job's seed (within ``max_steps`` when given)."""
    out: dict[str, list[bool]] = {}
    for task, _, success, _ in run_jobs(expert_episode, jobs, workers, None, max_steps):
        out.setdefault(task, []).append(bool(success))
    return out


def read_episodes(path: Path) -> list[dict]:
    """The finished episodes of an earlier (killed) run, the file rewritten without a line torn by the kill."""
    if not path.is_file():
        return []
    rows, torn = [], 0
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn += 1
    if torn:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


"""Closed-loop evaluation on the numpy reach task (``vlaser.vla.env``): every episode of a held-out set run at
once, each policy call answering a batch of observations with one action chunk per episode, of which
``act_steps`` are executed before the next observation.

Policies: ``VLARollout`` (a ``VLAPolicy``, with seeded sampling noise per episode and chunk), ``ScriptedPolicy``
(the demonstrator, reading the named disc from the scene) and ``BlindPolicy`` (the same controller heading for
a disc picked at random, so it ignores the instruction: the best any instruction-blind policy can do is
about 1 / ``N_DISCS``; a VLA given ``env.NEUTRAL``, which names no colour, is the other blind check).
``colour_swap`` names the other disc's colour and counts the episodes that end there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vlaser.errors import UserInputError
from vlaser.vla import env as reach
from vlaser.vla.env import ReachEnv, expert_action, sample_scene
from vlaser.vla.policy import ACTION_KEY, STATE_KEY, VLAPolicy


class ScriptedPolicy:
    """The demonstrator: straight at the disc the instruction names (it reads the colour, then the scene)."""

    def __init__(self, chunk_size: int = 4, act_steps: int = 4) -> None:
        self.chunk_size, self.act_steps = chunk_size, act_steps

    def goal(self, env: ReachEnv) -> np.ndarray:
        return env.scene.centres[env.scene.colours.index(reach.colour_of(env.instruction))]

    def act(self, envs: Sequence[ReachEnv]) -> np.ndarray:
        """``(B, chunk, 2)``: the expert's actions along the path it would take."""
        chunks = []
        for env in envs:
            goal, agent, chunk = self.goal(env), env.agent.copy(), []
            for _ in range(self.chunk_size):
                chunk.append(expert_action(agent, goal))
                agent = agent + chunk[-1]
            chunks.append(chunk)
        return np.asarray(chunks, np.float32)


class BlindPolicy(ScriptedPolicy):
    """The demonstrator's controller heading for a disc picked at random per episode, not the named one."""

    def goal(self, env: ReachEnv) -> np.ndarray:
        return env.scene.centres[np.random.default_rng([env.seed, 1]).integers(reach.N_DISCS)]


class VLARollout:
    """A ``VLAPolicy`` on a batch of episodes; the noise of episode ``s``'s ``k``-th chunk is drawn from
    ``default_rng([noise_seed, s, k])``, so a rollout is the same whatever else runs beside it."""

    def __init__(self, policy: VLAPolicy, noise_seed: int = 0) -> None:
        if policy.normalizer is None:
            raise UserInputError("the policy has no normaliser (norm_stats.json); pass one to VLAPolicy")
        self.policy, self.noise_seed = policy, noise_seed
        self.chunk_size, self.act_steps = policy.config.chunk_size, policy.config.act_steps

    def noise(self, envs: Sequence[ReachEnv]) -> np.ndarray:
        cfg = self.policy.config
        return np.stack([np.random.default_rng([self.noise_seed, env.seed, env.steps]).standard_normal(
            (cfg.chunk_size, cfg.action_dim)) for env in envs]).astype(np.float32)

    @torch.no_grad()
    def act(self, envs: Sequence[ReachEnv]) -> np.ndarray:
        """``(B, chunk, 2)`` robot actions, one chunk per episode, in one batched sample."""
        pol = self.policy
        obs = [env.observation() for env in envs]
        batch = pol.collator.prefix([[Image.fromarray(o["image"])] for o in obs], [o["instruction"] for o in obs])
        states = pol.normalizer.normalize(STATE_KEY, np.stack([o["state"] for o in obs]).astype(np.float64))
        device = pol.model.vlm.device
        was_training = pol.model.training
        pol.model.eval()
        out = pol.model.sample_actions(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                       batch["pixel_values"].to(device),
                                       torch.as_tensor(np.asarray(states, np.float32), device=device),
                                       noise=torch.as_tensor(self.noise(envs)))
        pol.model.train(was_training)
        actions = pol.normalizer.unnormalize(ACTION_KEY, out.float().cpu().numpy().astype(np.float64))
        return np.asarray(actions, np.float32)


@dataclass
class Rollouts:
    """Per-episode outcomes of one evaluation, and the frames of the first ``record`` episodes."""

    seeds: list[int]
    targets: list[int]  #: the disc each episode's instruction named
    reached: list[int | None]  #: the disc each episode ended at (None: none within MAX_STEPS)
    steps: list[int]
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(np.mean([r == t for r, t in zip(self.reached, self.targets)]))

    def as_dict(self) -> dict:
        return {"success_rate": self.success_rate, "episodes": len(self.seeds),
                "mean_steps": float(np.mean(self.steps)),
                "none_reached": sum(r is None for r in self.reached)}


def _named(env: ReachEnv) -> int:
    """The disc the episode's instruction names; the scene's own target for a colourless one."""
    if env.instruction == reach.NEUTRAL:
        return env.scene.target
    return env.scene.colours.index(reach.colour_of(env.instruction))


def _swap(scene: reach.Scene) -> str:
    """The instruction naming the other disc."""
    return reach.instruction(scene.colours[1 - scene.target])


def rollout(policy, seeds: Sequence[int], instruction: Callable[[reach.Scene], str] | None = None,
            record: int = 0, batch_size: int = 128) -> Rollouts:
    """Run ``policy`` on the episodes ``seeds`` (``instruction(scene)`` replaces the named one) to the end."""
    envs = [ReachEnv(scene, None if instruction is None else instruction(scene), seed=s)
            for s, scene in ((s, sample_scene(s)) for s in seeds)]
    frames = {s: [envs[i].observation()["image"]] for i, s in enumerate(seeds[:record])}
    while True:
        live = [env for env in envs if not env.done]
        if not live:
            break
        for start in range(0, len(live), batch_size):
            part = live[start:start + batch_size]
            for env, chunk in zip(part, policy.act(part)):
                for action in chunk[:policy.act_steps]:
                    done = env.step(action)
                    if env.seed in frames:
                        frames[env.seed].append(env.observation()["image"])
                    if done:
                        break
    targets = [_named(env) for env in envs]
    return Rollouts(list(seeds), targets, [env.reached for env in envs], [env.steps for env in envs], frames)


def colour_swap(policy, seeds: Sequence[int]) -> dict:
    """The episodes with the other disc's colour in the instruction: the share that ends at that disc."""
    result = rollout(policy, seeds, instruction=_swap)
    return {"to_other_object": result.success_rate, "episodes": len(seeds),
            "to_original_object": float(np.mean([r == 1 - t for r, t in zip(result.reached, result.targets)]))}

"""The numpy reach task and its closed-loop evaluation: seeded scenes, rendering, stepping, the scripted and
blind baselines, the colour swap, demonstrations as a LeRobot dataset, and batched VLA rollouts equal to
one-at-a-time ``predict``."""

from __future__ import annotations

import numpy as np
import pytest

from vlaser.errors import UserInputError
from vlaser.quickstart.scenes import COLOURS
from vlaser.vla import env as reach
from vlaser.vla.config import preset
from vlaser.vla.data import LeRobotDataset, Normalizer, inspect_dataset
from vlaser.vla.evaluate import BlindPolicy, ScriptedPolicy, VLARollout, colour_swap, rollout
from vlaser.vla.policy import VLAPolicy

SEEDS = reach.heldout_seeds(200, 0)


def test_scenes_are_seeded_and_keep_their_gaps():
    for s in SEEDS[:50]:
        a, b = reach.sample_scene(s), reach.sample_scene(s)
        assert a.colours == b.colours and np.array_equal(a.centres, b.centres) and np.array_equal(a.start, b.start)
        assert len(set(a.colours)) == reach.N_DISCS and set(a.colours) <= set(COLOURS)
        assert np.linalg.norm(a.centres[0] - a.centres[1]) >= reach.MIN_DISC_GAP
        assert np.linalg.norm(a.centres - a.start, axis=1).min() >= reach.MIN_START_GAP
        assert a.instruction == f"move to the {a.colours[a.target]} disc"
    layouts = {tuple(reach.sample_scene(s).centres.round(6).ravel()) for s in SEEDS}
    assert len(layouts) == len(SEEDS)
    assert {reach.sample_scene(s).target for s in SEEDS} == {0, 1}
    assert not set(reach.demonstration_seeds(1000, 0)) & set(reach.heldout_seeds(1000, 0))


def test_render_draws_discs_and_agent():
    scene = reach.sample_scene(SEEDS[0])
    image = reach.render(scene, scene.start)
    assert image.shape == (reach.SIZE, reach.SIZE, 3) and image.dtype == np.uint8
    for colour, (x, y) in zip(scene.colours, scene.centres):
        assert tuple(image[int(y * reach.SIZE), int(x * reach.SIZE)]) == COLOURS[colour]
    x, y = scene.start
    assert tuple(image[int(y * reach.SIZE), int(x * reach.SIZE)]) == reach.AGENT
    disc_area = reach.N_DISCS * np.pi * (reach.DISC_RADIUS * reach.SIZE) ** 2
    assert abs((image != reach.BACKGROUND).any(-1).sum() - disc_area) < 0.25 * disc_area  # discs + a small agent


def test_step_clips_and_ends():
    scene = reach.sample_scene(SEEDS[1])
    env = reach.ReachEnv(scene)
    start = env.agent.copy()
    env.step(np.array([5.0, -5.0]))
    assert np.allclose(env.agent, np.clip(start + [reach.MAX_STEP, -reach.MAX_STEP], 0, 1))
    env = reach.ReachEnv(scene)
    while not env.done:
        env.step(np.zeros(2))
    assert env.steps == reach.MAX_STEPS and env.reached is None and not env.success
    with pytest.raises(UserInputError, match="finished episode"):
        env.step(np.zeros(2))
    env = reach.ReachEnv(scene)
    env.step(scene.centres[1 - scene.target] - env.agent)  # one jump onto the other disc (beyond MAX_STEP: clipped)
    while not env.done:
        env.step(reach.expert_action(env.agent, scene.centres[1 - scene.target]))
    assert env.reached == 1 - scene.target and not env.success


def test_scripted_blind_and_swap_baselines():
    scripted = rollout(ScriptedPolicy(), SEEDS)
    assert scripted.success_rate == 1.0 and max(scripted.steps) <= reach.MAX_STEPS
    blind = rollout(BlindPolicy(), SEEDS)
    assert 0.35 <= blind.success_rate <= 0.65  # a coin flip between the two discs
    assert all(r is not None for r in blind.reached)  # it always ends at some disc
    swap = colour_swap(ScriptedPolicy(), SEEDS)
    assert swap["to_other_object"] == 1.0 and swap["to_original_object"] == 0.0


def test_rollout_records_frames():
    result = rollout(ScriptedPolicy(), SEEDS[:5], record=2)
    assert sorted(result.frames) == SEEDS[:2]
    for seed, frames in result.frames.items():
        assert len(frames) == result.steps[result.seeds.index(seed)] + 1  # the first frame and one per step


def test_colour_of():
    assert reach.colour_of("move to the yellow disc") == "yellow"
    with pytest.raises(UserInputError, match="names 0 colours"):
        reach.colour_of("move to the disc")
    with pytest.raises(UserInputError, match="names 2 colours"):
        reach.colour_of("move to the red or blue disc")


def test_demonstrations_are_a_lerobot_dataset(tmp_path):
    root = reach.write_demonstrations(tmp_path / "demos", 6, seed=1)
    summary = inspect_dataset(root)
    assert summary.episodes == 6 and summary.frames == summary.expected_frames and not summary.truncated
    assert summary.features[reach.CAMERA] == {"dtype": "image", "shape": [reach.SIZE, reach.SIZE, 3]}
    data = LeRobotDataset(root)
    for info, seed in zip(data.episodes, reach.demonstration_seeds(6, 1)):
        episode = data.episode(info.index)
        env = reach.ReachEnv.from_seed(seed)
        assert info.task == env.instruction
        for t, action in enumerate(episode[reach.ACTION]):
            obs = env.observation()
            assert np.array_equal(episode[reach.STATE][t], obs["state"])
            assert np.array_equal(data.camera_frame(info.index, t, reach.CAMERA), obs["image"])  # lossless
            assert np.abs(action).max() <= reach.MAX_STEP + 1e-6
            env.step(action)
        assert env.success and env.steps == info.length
    with pytest.raises(UserInputError, match="number of episodes"):
        reach.write_demonstrations(tmp_path / "none", 0)


def test_batched_vla_rollout_equals_predict_one_at_a_time(tiny_original, tmp_path):
    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=2, action_dim=2), seed=0)
    data = LeRobotDataset(reach.write_demonstrations(tmp_path / "demos", 4, seed=2))
    policy.normalizer = Normalizer(data.stats, gripper_dims={})
    runner = VLARollout(policy, noise_seed=5)
    envs = [reach.ReachEnv.from_seed(s) for s in SEEDS[:3]]
    envs[1].step(np.array([0.05, 0.05]))  # a later chunk: other noise
    batched = runner.act(envs)
    noise = runner.noise(envs)
    for i, env in enumerate(envs):
        obs = env.observation()
        one = policy.predict(obs["image"], obs["state"], obs["instruction"], noise=noise[i])
        assert np.allclose(batched[i], one, atol=1e-5)
    assert np.array_equal(runner.noise(envs[:1])[0], noise[0])  # an episode's noise does not depend on the batch
    assert not np.allclose(VLARollout(policy, 6).noise(envs[:1])[0], noise[0])
    untrained = rollout(runner, SEEDS[:40])
    assert untrained.success_rate <= 0.3  # an untrained expert does not find the named disc
    with pytest.raises(UserInputError, match="no normaliser"):
        VLARollout(VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=2, action_dim=2)))


def test_a_neutral_instruction_keeps_the_scene_target():
    result = rollout(BlindPolicy(), SEEDS[:20], instruction=lambda scene: reach.NEUTRAL)
    assert result.targets == [reach.sample_scene(s).target for s in SEEDS[:20]]
    assert result.success_rate == rollout(BlindPolicy(), SEEDS[:20]).success_rate  # the blind policy cannot tell

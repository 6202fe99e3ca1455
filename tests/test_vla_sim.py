"""Meta-World (the ``sim`` extra): LeRobot's conventions, scripted demonstrations as a LeRobot v3.0 dataset, and
closed-loop evaluation (local policy, a served one, resuming), at tiny sizes."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from vlaser.errors import UserInputError
from vlaser.vla.sim import metaworld as mw
from vlaser.vla.sim.report import wilson


def test_task_names_and_groups_resolve_as_lerobot_names_them():
    assert mw.resolve_tasks("reach,push-v3, reach-v3") == ["reach-v3", "push-v3"]
    assert mw.resolve_tasks("very_hard")[0] == "shelf-place-v3" and len(mw.resolve_tasks("mt50")) == 50
    assert mw.resolve_tasks(["mt10", "easy"])[:10] == mw.MT10 and len(mw.resolve_tasks("mt10,easy")) == 31  # 7 shared
    difficulty = [t for names in mw.DIFFICULTY.values() for t in names]
    assert sorted(difficulty) == sorted(mw.INSTRUCTIONS) and len(set(difficulty)) == 50  # each task in one group
    assert set(mw.MT10) <= set(mw.INSTRUCTIONS) and mw.difficulty("pick-place-v3") == "hard"
    with pytest.raises(UserInputError, match="unknown Meta-World task or group 'reech'"):
        mw.resolve_tasks("reach,reech")
    with pytest.raises(UserInputError, match="no Meta-World tasks"):
        mw.resolve_tasks(" , ")


def test_wilson_interval():
    assert np.allclose(wilson(5, 10), [0.2366, 0.7634], atol=1e-4)
    assert wilson(0, 10)[0] == 0.0 and np.isclose(wilson(0, 10)[1], 0.2775, atol=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) == [0.0, 1.0]


def test_published_table_is_transcribed_consistently_and_printed_beside_the_run():
    from vlaser.vla.sim import report

    for name, row in report.PAPER.items():  # the paper's average is the mean of its four groups
        assert round(sum(row[:4]) / 4, 2) == pytest.approx(row[4], abs=0.051), name
    rows = [{"task": "reach-v3", "success": s, "steps": 9} for s in (True, False, True, True)]
    scores = report.summarize(rows, None, ["reach-v3"])
    lines = report.paper_table(scores["groups"])
    assert "| this run | 75.0 | - | - | - | - |" in lines
    assert "| SmolVLA (0.45B) | 82.5 | 41.8 | 45 | 60 | 57.3 |" in lines and report.PAPER_SOURCE in lines[0]


def test_eval_refuses_unclear_settings(tmp_path):
    from vlaser.vla.sim.evaluate import evaluate_metaworld, render_settings

    with pytest.raises(UserInputError, match="--dataset"):
        render_settings(str(tmp_path), None, None, None)  # no sim.json anywhere, no flags
    assert render_settings(None, None, 64, True) == mw.RenderSettings(64, cheap=True)
    (tmp_path / "sim.json").write_text(json.dumps({"render": {"image_size": 96, "camera": "corner2", "cheap": True}}))
    assert render_settings(str(tmp_path), None, None, None) == mw.RenderSettings(96, cheap=True)
    assert render_settings(str(tmp_path), None, 48, False) == mw.RenderSettings(48, cheap=False)
    with pytest.raises(UserInputError, match="one of --policy DIR or --server URL"):
        evaluate_metaworld(tmp_path / "e", "reach", 1, image_size=32, cheap=True)


def test_cli_parses_the_sim_verbs():
    from vlaser.cli import build_parser

    args = build_parser().parse_args(["vla", "collect", "metaworld", "--tasks", "mt10", "--episodes", "50",
                                      "--out", "d", "--render", "cheap", "--workers", "2"])
    assert (args.tasks, args.episodes, args.image_size, args.render, args.workers, args.seed) == (
        "mt10", 50, 224, "cheap", 2, 0)
    args = build_parser().parse_args(["vla", "eval", "metaworld", "--server", "http://h:1", "--tasks", "easy",
                                      "--episodes", "3", "--out", "e"])
    assert (args.server, args.policy, args.image_size, args.render, args.seed, args.max_steps) == (
        "http://h:1", None, None, None, 1, None)
    args = build_parser().parse_args(["vla", "quickstart", "--env", "metaworld", "--max-steps", "100"])
    assert (args.env, args.max_steps) == ("metaworld", 100)
    from vlaser.cli.vla import run

    for flags in (["--minutes", "5"], ["--episodes", "5"], ["--eval-episodes", "2"]):
        with pytest.raises(UserInputError, match="reach2d quickstart's"):
            run(build_parser().parse_args(["vla", "quickstart", "--env", "metaworld", *flags]))


# ------------------------------------------------------------------------------------------- with the simulator


def _raw_env(task: str):
    """Meta-World built as LeRobot's env builds it, without vlaser."""
    mw.setup_gl()
    import metaworld

    benchmark = metaworld.MT1(task, seed=42)
    env = benchmark.train_classes[task]()
    env.set_task(benchmark.train_tasks[0])
    env._freeze_rand_vec, env.seeded_rand_vec = False, True
    return env


def _raw_reset(env, seed: int):
    env.seed(seed)
    return env.reset()[0]


def _conventions(seed: int) -> dict:
    """Run in a forked child: this process never renders (a GL context does not survive a fork)."""
    import mujoco

    env = mw.MetaWorldEnv("reach-v3", mw.RenderSettings(32, cheap=True))
    env.reset(seed)
    model = env.env.model
    camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
    env.renderer.update_scene(env.env.data, camera="corner2")
    return {"image": env.image(), "raw": env.renderer.render(), "state": env.state, "max_steps": env.max_steps,
            "instruction": env.instruction, "cam_pos": model.cam_pos[camera].copy(),
            "quality": (model.vis.quality.shadowsize, model.vis.quality.offsamples)}


@pytest.mark.slow
def test_env_follows_lerobots_conventions():
    import multiprocessing

    pytest.importorskip("metaworld")
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_conventions, (7,))
    obs = _raw_reset(_raw_env("reach-v3"), 7)
    assert np.array_equal(got["state"], obs[:4].astype(np.float32)) and got["max_steps"] == 500
    assert got["instruction"] == "Reach a goal position"
    assert np.allclose(got["cam_pos"], mw.CORNER2_POSITION) and got["quality"] == (0, 0)
    assert np.array_equal(got["image"], got["raw"][::-1, ::-1])  # turned 180 degrees, as LeRobot does
    assert got["image"].shape == (32, 32, 3) and got["image"].std() > 5  # a picture, not a blank
    for task in mw.INSTRUCTIONS:  # every task has a scripted expert
        assert mw.expert_class(task).__name__.endswith("V3Policy")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    pytest.importorskip("metaworld")
    from vlaser.vla.sim.collect import collect_metaworld

    out = tmp_path_factory.mktemp("mw") / "demos"
    record = collect_metaworld(out, "reach", 4, mw.RenderSettings(32, cheap=True), max_steps=45, progress=False)
    return out, record


def _expert_steps(task: str, seed: int, limit: int) -> tuple[bool, int]:
    env, policy = _raw_env(task), mw.expert_class(task)()
    obs = _raw_reset(env, seed)
    for step in range(1, limit + 1):
        obs, _, _, _, info = env.step(np.clip(policy.get_action(obs), -1, 1).astype(np.float32))
        if info["success"]:
            return True, step
    return False, limit


@pytest.mark.slow
def test_collect_writes_a_dataset_that_replays_in_the_simulator(demos):
    from vlaser.vla.data import LeRobotDataset

    root, record = demos
    outcome = {s: _expert_steps("reach-v3", s, 45) for s in range(4)}
    assert record["seeds"]["reach-v3"] == [s for s, (ok, _) in outcome.items() if ok]
    assert record["dropped"]["reach-v3"] == [s for s, (ok, _) in outcome.items() if not ok]
    assert record["dropped_episodes"] >= 1 and record["episodes"] >= 1  # the limit of 45 steps fails some seeds
    sim = json.loads((root / "meta" / "sim.json").read_text())
    assert sim["render"] == {"image_size": 32, "camera": "corner2", "cheap": True} and "seconds" not in sim
    data = LeRobotDataset(root)
    assert data.tasks == ["Reach a goal position"] and data.info["fps"] == mw.FPS
    assert data.features[mw.CAMERA]["shape"] == [32, 32, 3] and data.features[mw.STATE]["shape"] == [4]
    env = _raw_env("reach-v3")
    for e, seed in enumerate(record["seeds"]["reach-v3"]):
        episode = data.episode(e)
        assert len(episode[mw.ACTION]) == outcome[seed][1]
        obs = _raw_reset(env, seed)
        for t, action in enumerate(episode[mw.ACTION]):  # the stored actions retrace the episode
            assert np.array_equal(episode[mw.STATE][t], obs[:4].astype(np.float32))
            obs, _, _, _, info = env.step(action)
            assert bool(info["success"]) == bool(episode[mw.SUCCESS][t])
        assert episode[mw.SUCCESS][-1] and not episode[mw.SUCCESS][:-1].any()


@pytest.mark.slow
def test_collect_is_the_same_with_any_number_of_workers(demos, tmp_path):
    from vlaser.vla.sim.collect import collect_metaworld

    root, record = demos
    again = collect_metaworld(tmp_path / "again", "reach", 4, mw.RenderSettings(32, cheap=True), workers=2,
                              max_steps=45, progress=False)
    assert again["seeds"] == record["seeds"]
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for name in files:
        assert (root / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.fixture(scope="module")
def tiny_policy(demos, tiny_original, tmp_path_factory):
    from vlaser.vla.train import train_vla

    root, _ = demos
    return train_vla({"vlm": str(tiny_original), "output_dir": str(tmp_path_factory.mktemp("mw") / "policy"),
                      "dataset": str(root), "preset": "tiny", "config": {"proprio_dim": 4, "action_dim": 4},
                      "gripper_dims": {}, "max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no",
                      "warmup_steps": 0, "disable_tqdm": True})


@pytest.mark.slow
def test_eval_scores_resumes_and_serves(tiny_policy, tmp_path):
    from vlaser.vla.sim.evaluate import evaluate_metaworld

    assert (tiny_policy / "sim.json").is_file()  # train_vla kept the render settings
    kwargs = {"max_steps": 12, "record": 1, "slots": 1, "progress": False}
    first = evaluate_metaworld(tmp_path / "a", "reach", 3, policy=str(tiny_policy), workers=2, **kwargs)
    rows = [json.loads(line) for line in (tmp_path / "a" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in rows) == [100000, 100001, 100002] and all(r["steps"] <= 12 for r in rows)
    task = first["scores"]["tasks"]["reach-v3"]
    assert task["episodes"] == 3 and task["successes"] == sum(r["success"] for r in rows)
    assert first["scores"]["groups"]["easy"]["episodes"] == 3 and "expert" in task
    assert first["published"]["rows"]["SmolVLA (0.45B)"][-1] == 57.3
    assert "| SmolVLA (0.45B) |" in (tmp_path / "a" / "report.md").read_text()
    assert first["render"] == {"image_size": 32, "camera": "corner2", "cheap": True}
    assert (tmp_path / "a" / rows[0]["strip"]).is_file()
    assert rows[0]["strip"] in (tmp_path / "a" / "index.html").read_text()
    # a run killed after one episode, mid-line, resumes to the same outcomes
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "settings.json").write_text((tmp_path / "a" / "settings.json").read_text())
    (tmp_path / "b" / "episodes.jsonl").write_text(json.dumps(rows[0]) + "\n{\"task\": \"rea")
    resumed = evaluate_metaworld(tmp_path / "b", "reach", 3, policy=str(tiny_policy), workers=1, **kwargs)
    assert resumed["scores"]["tasks"] == first["scores"]["tasks"]
    with pytest.raises(UserInputError, match="other settings"):
        evaluate_metaworld(tmp_path / "b", "reach", 3, policy=str(tiny_policy), max_steps=13, progress=False)
    # the same policy served: the same episodes, through PolicyClient
    with _Served(tiny_policy) as url:
        served = evaluate_metaworld(tmp_path / "c", "reach", 3, server=url, dataset=None, image_size=32, cheap=True,
                                    workers=1, expert=False, **kwargs)
    local = evaluate_metaworld(tmp_path / "d", "reach", 3, policy=str(tiny_policy), workers=1, expert=False, **kwargs)
    assert served["scores"]["tasks"] == local["scores"]["tasks"]

    def outcomes(name):
        lines = (tmp_path / name / "episodes.jsonl").read_text().splitlines()
        return sorted((r["seed"], r["success"], r["steps"]) for r in map(json.loads, lines))

    assert outcomes("c") == outcomes("d")


class _Served:
    """``vlaser vla serve``'s app on a loopback port, in a thread."""

    def __init__(self, path) -> None:
        import uvicorn

        from fakes import free_port
        from vlaser.vla.policy import VLAPolicy
        from vlaser.vla.serve import create_app

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(VLAPolicy.from_pretrained(path)), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the policy server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_metaworld_recipe_is_the_release_expert_on_metaworld_shapes(tmp_path):
    from pathlib import Path

    from vlaser.vla.config import preset
    from vlaser.vla.train import parse_args

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "vla" / "vlaser_2b_metaworld.yaml"
    train = parse_args([str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "True"])  # no bf16 device in CI
    assert train.vla_config() == preset("vlaser_2b_bridge", proprio_dim=4, action_dim=4, time_max_period=100.0)
    assert train.augment_images and train.padded_actions == "repeat" and train.freeze_text_embeddings
    assert (train.learning_rate, train.expert_learning_rate, train.normalization) == (5e-5, 5e-5, "quantile")
    header = recipe.read_text()
    assert "vla collect metaworld --tasks mt50 --episodes 50" in header and "vla eval metaworld" in header


def test_a_running_episode_keeps_a_bounded_evenly_spaced_film():
    from vlaser.vla.sim.rollout import FILM_FRAMES, Live

    episode = Live("reach-v3", 0, {})
    for i in range(500):  # a failed episode at LeRobot's limit, one observation per step
        episode.add(np.full((2, 2, 3), i % 256, np.uint8))
    kept = [int(f[0, 0, 0]) for f in episode.film]
    assert episode.seen == 500 and len(episode.frames) < FILM_FRAMES
    assert kept[-1] == 499 % 256 and np.all(np.diff(kept[:-2]) % 256 == episode.stride % 256)
    blind = Live("reach-v3", 0, {}, keep=False)
    blind.add(np.zeros((2, 2, 3), np.uint8))
    assert blind.film == [] and blind.seen == 1


@pytest.mark.slow
def test_metaworld_quickstart_runs_every_stage_at_tiny_sizes(tmp_path, monkeypatch):
    from vlaser.vla.sim import quickstart as qs

    monkeypatch.setattr(qs, "TASKS", ["faucet-open-v3", "button-press-topdown-v3"])
    monkeypatch.setattr(qs, "MAX_STEPS", 6)
    report = qs.run_metaworld_quickstart(tmp_path / "qs", train_steps=2, episodes=2, demos_per_task=1)
    assert set(report["per_task"]) == set(qs.TASKS) and report["episodes_per_task"] == 2
    assert report["gap"] == pytest.approx(report["mean"]["vla"] - report["mean"]["blind"])
    assert report["collect"]["episodes"] == 2 and report["max_steps"] == 6
    blind = json.loads((tmp_path / "qs" / "eval_blind" / "settings.json").read_text())
    assert blind["instruction"] == qs.BLIND_INSTRUCTION
    text = (tmp_path / "qs" / "report.md").read_text()
    assert f"{report['gap']:+.2f} over the instruction-blind twin" in text and "| faucet-open-v3 |" in text
    assert (tmp_path / "qs" / "loss.png").is_file() and (tmp_path / "qs" / "eval_vla" / "index.html").is_file()

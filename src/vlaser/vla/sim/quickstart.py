"""``vlaser vla quickstart --env metaworld``: a VLA trained and evaluated in a simulator nobody here wrote, on a
2-core CPU in under an hour.

Five Meta-World tasks of different skills, fixed: faucet-open and faucet-close (turn one way or the other),
door-lock and door-unlock (turn a lock knob down or up), button-press-topdown. Faucet-open and faucet-close start
from the same faucet, so only the instruction says which way to turn. Door-lock and door-unlock share a door;
the knob starts up for one and down for the other, a few pixels apart, so a policy that ignores the instruction
can learn to read it. Button-press-topdown's scene gives its task away. How this set was chosen, and what each
candidate scored: docs/vla.md.

Stages: scripted demonstrations (``collect``) -> a tiny InternVL3 backbone -> the VLA (``train_vla``) and an
instruction-blind twin trained the same way on the same data with every instruction replaced by one constant
-> closed-loop evaluation of both on held-out seeds beside the scripted expert -> ``report.json``,
``report.md``, ``loss.png``, and each evaluation's own folder (``eval_vla/``, ``eval_blind/``) with strips.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from vlaser.errors import UserInputError, require
from vlaser.vla.sim import metaworld as mw

TASKS = ["faucet-open-v3", "faucet-close-v3", "door-lock-v3", "door-unlock-v3", "button-press-topdown-v3"]
DEMOS_PER_TASK = 20
EVAL_EPISODES = 20  #: held-out episodes per task and policy
IMAGE_SIZE = 112  #: 16 image tokens on the tiny backbone
MAX_STEPS = 200  #: the experts finish these tasks in under 100 steps; LeRobot's limit (500) costs more renders
WORKERS = 2
#: 1,500 steps took about 5 min per policy on the 2-core machine; the whole run 17 min (docs/vla.md)
DEFAULT_STEPS = 1500
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
BLIND_INSTRUCTION = "Do the task"  #: the blind twin's only instruction, in training and evaluation
VLA = {"proprio_dim": 4, "action_dim": 4, "image_size": IMAGE_SIZE, "prefix_len": 96, "chunk_size": 4,
       "act_steps": 4, "expert_hidden_size": 64, "expert_intermediate_size": 128}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Blind:
    """A chunk dataset whose every item carries ``BLIND_INSTRUCTION`` instead of its task."""

    def __init__(self, chunks) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        return {**self.chunks[i], "task": BLIND_INSTRUCTION}


class _Loss(TrainerCallback):
    """The training loss as logged."""

    def __init__(self) -> None:
        self.loss: list[list[float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss.append([state.global_step, float(logs["loss"])])


def _train(out: Path, backbone: Path, demos: Path, steps: int, seed: int, blind: bool):
    """Train one policy; returns ``(folder, loss curve, seconds)``."""
    from vlaser.vla.train import train_vla

    curve = _Loss()
    args = {"vlm": str(backbone), "output_dir": str(out), "dataset": str(demos), "preset": "tiny", "config": VLA,
            "gripper_dims": {}, "learning_rate": LEARNING_RATE, "expert_learning_rate": LEARNING_RATE,
            "warmup_steps": min(100, steps // 10), "lr_scheduler_type": "cosine", "max_steps": steps,
            "per_device_train_batch_size": BATCH_SIZE, "logging_steps": max(1, steps // 100), "save_strategy": "no",
            "seed": seed}
    dataset = norm_stats = None
    if blind:
        from vlaser.vla.config import preset
        from vlaser.vla.data import ActionChunkDataset, LeRobotDataset, Normalizer

        data = LeRobotDataset(demos)
        normalizer = Normalizer(data.stats, gripper_dims={})
        dataset = _Blind(ActionChunkDataset(data, preset("tiny", **VLA).chunk_size, normalizer))
        norm_stats = normalizer.to_json()
    start = time.perf_counter()
    folder = train_vla(args, dataset=dataset, norm_stats=norm_stats, callbacks=[curve])
    return folder, curve.loss, time.perf_counter() - start


def run_metaworld_quickstart(out: str | Path, seed: int = 0, train_steps: int | None = None,
                             episodes: int | None = None, demos_per_task: int | None = None,
                             workers: int = WORKERS) -> dict:
    """Run every stage into ``out`` (new or empty); returns ``report.json``'s contents."""
    from vlaser.model.tiny import build_tiny_checkpoint
    from vlaser.vla.quickstart import LLM, VISION
    from vlaser.vla.sim.collect import collect_metaworld
    from vlaser.vla.sim.evaluate import evaluate_metaworld

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out}: not empty (the quickstart writes into a new folder)")
    steps, episodes = train_steps or DEFAULT_STEPS, episodes or EVAL_EPISODES
    demos_per_task = demos_per_task or DEMOS_PER_TASK
    render = mw.RenderSettings(IMAGE_SIZE, cheap=True)
    minutes, start = {}, time.perf_counter()

    _say(f"== 1/4 {demos_per_task} scripted demonstrations per task of {', '.join(TASKS)}")
    collected = collect_metaworld(out / "demos", TASKS, demos_per_task, render, workers=workers, seed=seed)
    minutes["collect"] = collected["seconds"] / 60
    _say("== 2/4 a tiny InternVL3 backbone (trainable init)")
    backbone = build_tiny_checkpoint(out / "backbone", "original", seed=seed, image_size=IMAGE_SIZE, vision=VISION,
                                     llm=LLM, init="trainable")
    trained = {}
    for name, blind in (("vla", False), ("blind", True)):
        _say(f"== 3/4 training the {'instruction-blind twin' if blind else 'VLA'} for {steps} steps")
        trained[name] = _train(out / f"policy_{name}", backbone, out / "demos", steps, seed, blind)
        minutes[f"train_{name}"] = trained[name][2] / 60
    evals = {}
    for name in ("vla", "blind"):
        _say(f"== 4/4 closed-loop evaluation of the {name} policy, {episodes} held-out episodes per task")
        t0 = time.perf_counter()
        evals[name] = evaluate_metaworld(out / f"eval_{name}", TASKS, episodes, policy=str(trained[name][0]),
                                         workers=workers, seed=seed + 1, max_steps=MAX_STEPS,
                                         instruction=BLIND_INSTRUCTION if name == "blind" else None,
                                         expert=name == "vla")
        minutes[f"eval_{name}"] = (time.perf_counter() - t0) / 60
    minutes["total"] = (time.perf_counter() - start) / 60
    report = _report(out, collected, trained, evals, minutes, steps, seed)
    _say(_markdown(report))
    return report


def _report(out: Path, collected: dict, trained: dict, evals: dict, minutes: dict, steps: int, seed: int) -> dict:
    vla, blind = evals["vla"]["scores"], evals["blind"]["scores"]
    report = {
        "seed": seed, "tasks": TASKS, "steps": steps, "batch_size": BATCH_SIZE, "minutes": minutes,
        "collect": {k: collected[k] for k in ("episodes", "dropped_episodes", "frames_rendered",
                                              "frames_per_second", "seconds")},
        "eval_frames_per_second": {k: e["frames_per_second"] for k, e in evals.items()},
        "per_task": {t: {"vla": vla["tasks"][t]["success_rate"], "blind": blind["tasks"][t]["success_rate"],
                         "expert": vla["tasks"][t]["expert"]["success_rate"]} for t in TASKS},
        "mean": {"vla": vla["overall"]["success_rate"], "blind": blind["overall"]["success_rate"],
                 "expert": vla["overall"]["expert"]["success_rate"]},
        "ci95": {"vla": vla["overall"]["ci95"], "blind": blind["overall"]["ci95"]},
        "gap": vla["overall"]["success_rate"] - blind["overall"]["success_rate"],
        "loss": {k: v[1] for k, v in trained.items()}, "episodes_per_task": evals["vla"]["episodes_per_task"],
        "max_steps": MAX_STEPS, "render": collected["render"],
    }
    report["files"] = _plot(out, report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _plot(out: Path, report: dict) -> list[str]:
    matplotlib = require("matplotlib", "quickstart", "the quickstart's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for name, loss in report["loss"].items():
        if loss:
            ax.plot(*zip(*loss), label=name)
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title="training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)
    return ["loss.png"]


def _markdown(report: dict) -> str:
    m = report["minutes"]
    lines = [f"# vlaser vla quickstart --env metaworld (seed {report['seed']})", "",
             f"{report['collect']['episodes']} demonstrations ({report['collect']['dropped_episodes']} failed and "
             f"dropped), {report['collect']['frames_rendered']} frames at "
             f"{report['collect']['frames_per_second']:.1f} frames/s; {report['steps']} training steps "
             f"(batch {report['batch_size']}) per policy; {report['episodes_per_task']} held-out episodes per task, "
             f"step limit {report['max_steps']}.", "",
             "| task | VLA | instruction-blind | scripted expert |", "|---|---|---|---|"]
    for t, r in report["per_task"].items():
        lines.append(f"| {t} | {r['vla']:.2f} | {r['blind']:.2f} | {r['expert']:.2f} |")
    mean, ci = report["mean"], report["ci95"]
    lines += [f"| mean | {mean['vla']:.2f} [{ci['vla'][0]:.2f}, {ci['vla'][1]:.2f}] | {mean['blind']:.2f} "
              f"[{ci['blind'][0]:.2f}, {ci['blind'][1]:.2f}] | {mean['expert']:.2f} |", "",
              f"The VLA's mean success is {report['gap']:+.2f} over the instruction-blind twin's.", "",
              "Minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()) + ".", "",
              "Evaluation speed (rendered observations/s): " + ", ".join(
                  f"{k} {v:.1f}" for k, v in report["eval_frames_per_second"].items()) + ".", "",
              "![loss](loss.png)", "", "Rollouts: eval_vla/index.html, eval_blind/index.html.", ""]
    return "\n".join(lines)

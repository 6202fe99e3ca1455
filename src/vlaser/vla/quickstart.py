"""``vlaser vla quickstart``: the whole VLA loop offline on a CPU in minutes.

Scripted demonstrations of the numpy reach task (``vla.env``) written as a LeRobot v3.0 dataset -> a tiny
InternVL3 backbone (``model.tiny``, trainable init) -> ``train_vla`` (the Trainer path, a step budget) ->
closed-loop success on held-out episodes of the trained policy, the untrained one, an instruction-blind
baseline and the scripted expert, and the colour-swap test -> ``report.json``, ``report.md``, the loss and
success curves and rollout frame strips.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from vlaser.drawing import plot_loss
from vlaser.errors import UserInputError, require
from vlaser.vla import env as reach
from vlaser.vla.config import preset
from vlaser.vla.evaluate import BlindPolicy, Rollouts, ScriptedPolicy, VLARollout, colour_swap, rollout
from vlaser.vla.policy import VLAPolicy

#: Training samples: 4,000 scripted episodes (~12k frames); the step budget reuses them many times.
DEMOS = 4000
#: Steps of batch ``BATCH_SIZE``: 2,500 took 174-206 s of training (0.070-0.082 s/step) on the 2-core machine
#: while other jobs shared it, inside the issue's five minutes; seed 0 then reaches 0.91 held-out success.
#: ``report.json`` records each run's own seconds per step.
DEFAULT_STEPS = 2500
BATCH_SIZE = 32
LEARNING_RATE = 1e-3  #: backbone (trained from scratch with the expert; freezing it does not work, as OPZ found)
EXPERT_LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
CURVE_POINTS = 10  #: held-out evaluations during training (the success curve)
STRIPS = 4  #: episodes drawn as frame strips per policy
#: The backbone: model.tiny's InternVL3 at twice its default widths (the defaults learn the task too slowly:
#: 0.65 held-out success after 3,000 steps, against 0.94 after 1,800 at these widths)
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
LLM = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}
#: The VLA: the tiny preset with this task's shapes and an expert at half the LLM's width (the tile size is the
#: backbone's, ``reach.SIZE``); the prompt of the longest colour is 65 tokens.
VLA = {"proprio_dim": 2, "action_dim": 2, "prefix_len": 72, "chunk_size": 4,
       "expert_hidden_size": 64, "expert_intermediate_size": 128,
       "act_steps": 4}


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


class CurveCallback(TrainerCallback):
    """The training loss as logged, and held-out success every ``every`` steps; the time spent evaluating is
    kept out of ``train_seconds``, and training stops once it passes ``minutes`` (if given)."""

    def __init__(self, evaluate, every: int, progress: bool, minutes: float | None = None) -> None:
        self.evaluate, self.every, self.progress, self.minutes = evaluate, every, progress, minutes
        self.loss: list[list[float]] = []
        self.curve: list[dict] = []
        self.steps = 0  #: steps done
        self._start, self._paused = 0.0, 0.0

    @property
    def train_seconds(self) -> float:
        return time.perf_counter() - self._start - self._paused

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss.append([state.global_step, float(logs["loss"])])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps = state.global_step
        if self.minutes is not None and self.train_seconds >= 60 * self.minutes:
            control.should_training_stop = True
        if state.global_step % self.every and state.global_step < state.max_steps and not control.should_training_stop:
            return control
        paused = time.perf_counter()
        success = self.evaluate(model)
        self._paused += time.perf_counter() - paused
        self.curve.append({"step": state.global_step, "train_seconds": round(self.train_seconds, 1),
                           "success_rate": success})
        _say(self.progress, f"   step {state.global_step}: held-out success {success:.2f} "
                            f"({self.train_seconds:.0f} s of training)")
        return control


def chunks_per_second(policy: VLAPolicy, seeds: list[int], repeats: int = 20) -> float:
    """Single-observation action chunks per second (``predict``: prefix cached, ``num_inference_steps``)."""
    envs = [reach.ReachEnv.from_seed(s) for s in seeds[:repeats]]
    obs = [e.observation() for e in envs]
    policy.predict(obs[0]["image"], obs[0]["state"], obs[0]["instruction"])  # warm-up
    start = time.perf_counter()
    for o in obs:
        policy.predict(o["image"], o["state"], o["instruction"])
    return len(obs) / (time.perf_counter() - start)


def frame_strip(result: Rollouts, path: Path, title: str) -> None:
    """One row per recorded episode: its frames left to right (x2), green or red border for success."""
    from PIL import Image, ImageDraw

    size, pad = reach.SIZE * 2, 4
    rows = list(result.frames.items())
    width = max(len(f) for _, f in rows) * (size + pad) + pad
    sheet = Image.new("RGB", (width, 18 + len(rows) * (size + 18 + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 3), title, fill=(0, 0, 0))
    for r, (seed, frames) in enumerate(rows):
        i = result.seeds.index(seed)
        ok = result.reached[i] == result.targets[i]
        top = 18 + r * (size + 18 + pad)
        text = f"{reach.sample_scene(seed).instruction}: {'success' if ok else 'failure'}"
        draw.text((pad, top), text, fill=(0, 120, 0) if ok else (180, 0, 0))
        for k, frame in enumerate(frames):
            x = pad + k * (size + pad)
            sheet.paste(Image.fromarray(frame).resize((size, size), Image.NEAREST), (x, top + 14))
    sheet.save(path)


def _plots(out: Path, report: dict) -> list[str]:
    """``loss.png`` (the shared loss plot) and ``success.png`` (held-out success by training step)."""
    files = ["loss.png"] if plot_loss(out / "loss.png", {"": report["training"]["loss"]}, "flow-matching loss",
                                      "train_vla") else []
    matplotlib = require("matplotlib", "quickstart", "the quickstart's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    curve = report["curve"]
    ax.plot([0] + [p["step"] for p in curve], [report["untrained"]["success_rate"]] +
            [p["success_rate"] for p in curve], marker="o", label="trained VLA")
    ax.axhline(report["blind"]["success_rate"], ls="--", color="grey", label="instruction-blind baseline")
    ax.axhline(report["scripted"]["success_rate"], ls=":", color="green", label="scripted expert")
    ax.set(xlabel="training step", ylabel="held-out success", ylim=(0, 1.05), title="closed-loop success")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "success.png")
    plt.close(fig)
    return files + ["success.png"]


def warnings(training: dict) -> list[str]:
    """What makes a run's numbers not the tested ones: fewer steps or demonstrations than the tested budget."""
    found = []
    if training["steps"] < DEFAULT_STEPS:
        found.append(f"Trained {training['steps']} steps, below the tested budget of {DEFAULT_STEPS:,}: the success "
                     "rates are not comparable to the tested ones.")
    if training["demonstrations"] < DEMOS:
        found.append(f"{training['demonstrations']} demonstrations, below the tested {DEMOS:,}.")
    return found


def _markdown(report: dict) -> str:
    t, s = report["training"], report["seed"]
    rows = [("trained VLA", report["trained"]), ("untrained VLA", report["untrained"]),
            ("instruction-blind baseline (a random disc)", report["blind"]),
            (f"trained VLA told \"{reach.NEUTRAL}\" (no colour)", report["trained_neutral"]),
            ("scripted expert", report["scripted"])]
    lines = [f"# vlaser vla quickstart (seed {s})", "", *[f"**Warning:** {w}" for w in report["warnings"]],
             *([""] if report["warnings"] else []),
             f"Trained {t['steps']} steps (batch {t['batch_size']}) in {t['train_seconds']:.0f} s of training "
             f"on {t['demonstrations']} demonstrations ({t['frames']} frames); evaluated closed-loop on "
             f"{report['episodes']} held-out episodes.", "",
             "| policy | success | mean steps |", "|---|---|---|"]
    lines += [f"| {name} | {r['success_rate']:.2f} | {r['mean_steps']:.1f} |" for name, r in rows]
    swap = report["colour_swap"]
    lines += ["", f"Colour swap (the other disc's colour named): {swap['to_other_object']:.2f} of the episodes end at "
              f"the other disc, {swap['to_original_object']:.2f} at the originally named one.", "",
              f"Inference: {report['chunks_per_second']:.1f} action chunks per second on this CPU (one observation "
              f"per call, prefix cached, {report['config']['num_inference_steps']} Euler steps).", ""]
    lines += [f"![{name}]({name})" for name in report["files"]]
    return "\n".join(lines) + "\n"


def _prepare(out: Path, train_steps: int | None, episodes: int, demos: int, minutes: float | None,
             overwrite: bool) -> int:
    steps = DEFAULT_STEPS if train_steps is None else train_steps
    for name, value in (("train_steps", steps), ("episodes", episodes), ("demos", demos)):
        if value < 1:
            raise UserInputError(f"{name} must be at least 1, got {value}")
    if minutes is not None and minutes <= 0:
        raise UserInputError(f"minutes must be positive, got {minutes}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"{out} is not empty; pass --overwrite to replace it, or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return steps


def _train(out: Path, demos: Path, backbone: Path, normalizer, seeds: list[int], steps: int,
           minutes: float | None, seed: int, progress: bool) -> tuple[Path, CurveCallback]:
    """``train_vla`` on the demonstrations for ``steps`` (or until ``minutes`` of training are spent), the
    held-out success curve recorded on the way."""
    from vlaser.model.loading import load_tokenizer
    from vlaser.vla.train import train_vla

    tokenizer = load_tokenizer(backbone)

    def success_now(model) -> float:
        was_training = model.training
        rate = rollout(VLARollout(VLAPolicy(model, tokenizer, normalizer), seed), seeds).success_rate
        model.train(was_training)
        return rate

    _say(progress, f"== 3/5 training the VLA for {steps} steps (batch {BATCH_SIZE})"
                   + (f" or {minutes:g} minutes" if minutes else ""))
    callback = CurveCallback(success_now, max(1, steps // CURVE_POINTS), progress, minutes)
    trained_dir = train_vla({
        "vlm": str(backbone), "output_dir": str(out / "policy"), "dataset": str(demos), "preset": "tiny",
        "config": VLA, "gripper_dims": {}, "learning_rate": LEARNING_RATE,
        "expert_learning_rate": EXPERT_LEARNING_RATE, "warmup_steps": min(WARMUP_STEPS, steps // 10),
        "lr_scheduler_type": "cosine", "max_steps": steps, "per_device_train_batch_size": BATCH_SIZE,
        "logging_steps": max(1, steps // 100), "save_strategy": "no", "seed": seed,
        "disable_tqdm": not progress}, callbacks=[callback])
    return trained_dir, callback


def _evaluate(trained_dir: Path, backbone: Path, normalizer, seeds: list[int], seed: int) -> dict:
    """Closed-loop results of the trained, untrained, blind and scripted policies, the colour swap and speed."""
    trained = VLAPolicy.from_pretrained(trained_dir)
    untrained = VLAPolicy.from_vlm(backbone, preset("tiny", **VLA), seed=seed)
    untrained.normalizer = normalizer
    config = trained.config
    results = {"trained": rollout(VLARollout(trained, seed), seeds, record=STRIPS),
               "untrained": rollout(VLARollout(untrained, seed), seeds, record=STRIPS),
               "blind": rollout(BlindPolicy(config.chunk_size, config.act_steps), seeds, record=STRIPS),
               "scripted": rollout(ScriptedPolicy(config.chunk_size, config.act_steps), seeds)}
    results["trained_neutral"] = rollout(VLARollout(trained, seed), seeds, instruction=lambda scene: reach.NEUTRAL)
    return {"results": results, "colour_swap": colour_swap(VLARollout(trained, seed), seeds),
            "chunks_per_second": chunks_per_second(trained, seeds), "config": trained.config}


def _write(out: Path, report: dict, results: dict, progress: bool) -> None:
    report["files"] = _plots(out, report)
    for name in ("trained", "untrained", "blind"):
        frame_strip(results[name], out / f"rollouts_{name}.png", f"{name}: held-out episodes")
        report["files"].append(f"rollouts_{name}.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _say(progress, _markdown(report))


def run_quickstart(out: Path, seed: int = 0, train_steps: int | None = None, episodes: int = 100,
                   progress: bool = True, demos: int = DEMOS, minutes: float | None = None,
                   overwrite: bool = False) -> dict:
    """The whole loop in ``out`` (a new or empty folder, or any with ``overwrite``); returns what
    ``out/report.json`` holds.

    ``train_steps`` (default ``DEFAULT_STEPS``) is a step budget, so the result does not depend on the machine's
    speed; ``minutes`` stops training earlier when that much training time is spent; ``demos`` scripted
    demonstrations are written; ``episodes`` is the number of held-out episodes each policy is evaluated on.
    """
    from vlaser.model.tiny import build_tiny_checkpoint
    from vlaser.vla.data import LeRobotDataset, Normalizer

    out = Path(out)
    steps = _prepare(out, train_steps, episodes, demos, minutes, overwrite)
    torch.manual_seed(seed)
    seeds = reach.heldout_seeds(episodes, seed)
    _say(progress, f"== 1/5 writing {demos} scripted demonstrations (LeRobot v3.0) to {out / 'demos'}")
    demos_dir = reach.write_demonstrations(out / "demos", demos, seed)
    normalizer = Normalizer(LeRobotDataset(demos_dir).stats, gripper_dims={})
    _say(progress, "== 2/5 building a tiny InternVL3 backbone (trainable init)")
    backbone = build_tiny_checkpoint(out / "backbone", "original", seed=seed, image_size=reach.SIZE,
                                     vision=VISION, llm=LLM, init="trainable")
    trained_dir, callback = _train(out, demos_dir, backbone, normalizer, seeds, steps, minutes, seed, progress)
    _say(progress, f"== 4/5 closed-loop evaluation on {episodes} held-out episodes")
    evaluated = _evaluate(trained_dir, backbone, normalizer, seeds, seed)
    _say(progress, "== 5/5 writing the report")
    done = callback.steps or steps
    training = {"steps": done, "step_budget": steps, "minutes": minutes, "batch_size": BATCH_SIZE,
                "train_seconds": round(callback.train_seconds, 1),
                "seconds_per_step": round(callback.train_seconds / done, 4), "demonstrations": demos,
                "frames": len(LeRobotDataset(demos_dir)), "learning_rate": LEARNING_RATE,
                "expert_learning_rate": EXPERT_LEARNING_RATE, "loss": callback.loss}
    report = {"seed": seed, "episodes": episodes, "config": evaluated["config"].to_json(), "training": training,
              "warnings": warnings(training), **{name: r.as_dict() for name, r in evaluated["results"].items()},
              "colour_swap": evaluated["colour_swap"], "curve": callback.curve,
              "chunks_per_second": round(evaluated["chunks_per_second"], 2),
              "paths": {"demos": str(demos_dir), "backbone": str(backbone), "policy": str(trained_dir)}}
    _write(out, report, evaluated["results"], progress)
    return report

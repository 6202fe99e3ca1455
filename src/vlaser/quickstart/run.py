"""``vlaser quickstart``: the whole Vlaser loop, offline, on a CPU, in minutes.

Synthetic embodied data in InternVL's format -> a tiny InternVL3-architecture model saved in the original
layout -> ``vlaser train`` (the real SFT path) within a time budget -> ``vlaser eval`` on held-out sets in
Where2Place's and MMSI-Bench's official layouts, before and after training, beside blind baselines ->
``summary.json``, ``report.md`` and ``index.html`` with the loss and learning curves and held-out pictures.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from vlaser.errors import UserInputError
from vlaser.quickstart import scenes


@dataclass(frozen=True)
class Stage:
    """One ``vlaser train`` run of the curriculum, starting from the previous stage's checkpoint."""

    name: str
    budget_share: float  #: fraction of the time budget
    easy_fraction: float  #: share of easy scenes (one large object on a grey table) in its data
    scenes: str | None = None  #: whose standard scenes fill the rest: "basic" or "hard" (default: the preset's)


@dataclass(frozen=True)
class Preset:
    """What one quickstart run trains on and how (the model is the same tiny InternVL3 for both presets)."""

    name: str
    minutes: float  #: default training budget
    n_train: int  #: training samples generated per stage (the trainer draws from them for the stage's budget)
    n_eval: int  #: held-out items per benchmark
    learning_rate: float
    projector_lr: float  #: 0.3x the LLM's keeps the image features from collapsing (the ViT stays frozen)
    curve_points: int  #: held-out evaluations during training (the learning curve)
    stages: tuple[Stage, ...] = ()


#: From scratch, the model first learns the answer format and stays blind to where things are; pointing at
#: a large object on a plain table is what breaks that, so every curriculum starts there.
PRESETS = {
    "basic": Preset("basic", minutes=10, n_train=16000, n_eval=200, learning_rate=2e-3, projector_lr=6e-4,
                    curve_points=6, stages=(Stage("large objects on a grey table", 0.4, 1.0),
                                            Stage("standard scenes", 0.6, 0.3))),
    "hard": Preset("hard", minutes=30, n_train=32000, n_eval=200, learning_rate=2e-3, projector_lr=6e-4,
                   curve_points=12, stages=(Stage("large objects on a grey table", 0.15, 1.0),
                                            Stage("one object on a tinted table", 0.25, 0.3, "basic"),
                                            Stage("2-4 objects on a textured table", 0.6, 0.2))),
}
#: the tiny model: InternVL3's architecture (InternViT + pixel-shuffle MLP + Qwen2) at toy width and depth
IMAGE_SIZE = 112
VISION = {"hidden_size": 96, "intermediate_size": 384, "num_attention_heads": 4, "num_hidden_layers": 2}
LLM = {"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
       "num_hidden_layers": 2}
BATCH_SIZE = 16
PICTURES = 24  #: held-out pointing pictures drawn per evaluated model
MAX_NEW_TOKENS = 32  #: a point answer is ~15 tokens and a letter 2; this bounds an untrained model's babble


def _stage(text: str) -> None:
    print(f"\n== {text}", flush=True)


def generate_data(out: Path, preset: Preset, seed: int) -> dict[str, Path]:
    """A training set (meta JSON + JSONL) per stage and the two held-out sets in their official layouts."""
    stages = {f"stage{k + 1}": scenes.write_training_set(out / f"stage{k + 1}", preset.n_train, seed=seed + 10 * k,
                                                         size=IMAGE_SIZE, preset=stage.scenes or preset.name,
                                                         easy_fraction=stage.easy_fraction)
              for k, stage in enumerate(preset.stages)}
    return {
        **stages,
        "where2place": scenes.write_where2place(out / "where2place", preset.n_eval, seed=seed + 1, size=IMAGE_SIZE,
                                                preset=preset.name),
        "mmsi_bench": scenes.write_mmsi(out / "mmsi_bench", preset.n_eval, seed=seed + 2, size=IMAGE_SIZE,
                                        preset=preset.name),
    }


def train_flags(model_dir: Path, meta: Path, out: Path, preset: Preset, max_steps: int, seed: int) -> list[str]:
    """The ``vlaser train`` command line (InternVL's flags) the quickstart runs."""
    flags = {
        "model_name_or_path": model_dir, "meta_path": meta, "output_dir": out, "conv_style": "internvl2_5",
        "force_image_size": IMAGE_SIZE, "max_dynamic_patch": 1, "down_sample_ratio": 0.5,
        "per_device_train_batch_size": BATCH_SIZE, "learning_rate": preset.learning_rate,
        "freeze_backbone": True, "mlp_lr": preset.projector_lr, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "max_steps": max_steps, "lr_scheduler_type": "cosine", "warmup_steps": min(50, max_steps // 10),
        "logging_steps": 20, "save_strategy": "no", "report_to": "none", "seed": seed, "data_seed": seed,
        "dataloader_num_workers": 1, "use_cpu": True, "max_seq_length": 512, "disable_tqdm": False,
        "grad_checkpoint": False,  # InternVL's default recomputes layers to save memory a tiny model never needs
    }
    return [part for key, value in flags.items() for part in (f"--{key}", str(value))]


def step_seconds(model_dir: Path, meta: Path, steps: int = 3) -> float:
    """Seconds per training step (batch build + forward + backward + AdamW) measured on this machine."""
    from vlaser.data.collator import SFTCollator
    from vlaser.data.dataset import DataConfig, SFTDataset
    from vlaser.model.loading import load_model

    model, tokenizer = load_model(model_dir, dtype=torch.float32, device="cpu")
    dataset = SFTDataset(meta, tokenizer, DataConfig(num_image_token=model.num_image_token,
                                                     force_image_size=IMAGE_SIZE, max_dynamic_patch=1))
    collate = SFTCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        batch = collate([dataset[step * BATCH_SIZE + k] for k in range(BATCH_SIZE)])
        batch.pop("skipped", None)
        batch.pop("n_tokens", None)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))  # the first step warms up allocators and threads


class BudgetCallback(TrainerCallback):
    """Stops training at the time budget and evaluates the held-out sets during training (the learning curve).

    Evaluation time is not counted against the budget, so the curve does not change what is trained.
    """

    def __init__(self, seconds: float, evaluate=None, every: float | None = None, offset_seconds: float = 0.0,
                 offset_steps: int = 0):
        self.seconds, self.evaluate, self.every = seconds, evaluate, every
        self.offset_seconds, self.offset_steps = offset_seconds, offset_steps  # earlier stages' training
        self.curve: list[dict] = []
        self.stopped_by_budget = False
        self._start, self._paused = 0.0, 0.0
        self._next = every if every else math.inf

    def train_seconds(self) -> float:
        """Seconds of training in this stage (evaluation pauses excluded)."""
        return time.perf_counter() - self._start - self._paused

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        elapsed = self.train_seconds()
        if elapsed >= self.seconds and state.global_step < state.max_steps:
            control.should_training_stop = self.stopped_by_budget = True
        if self.evaluate is not None and (elapsed >= self._next or control.should_training_stop
                                          or state.global_step >= state.max_steps):
            paused = time.perf_counter()
            model.eval()
            step = self.offset_steps + state.global_step
            self.curve.append({"step": step, "train_seconds": round(self.offset_seconds + elapsed, 1),
                               **self.evaluate(model, processing_class, step)})
            model.train()
            self._paused += time.perf_counter() - paused
            self._next = elapsed + self.every
        return control


def evaluate(backend, data: dict[str, Path], out: Path, pictures: int = 0) -> dict[str, float]:
    """Held-out pointing (Where2Place metric) and multiple-choice accuracy (MMSI-Bench metric)."""
    from vlaser.eval.benchmark import get_benchmark
    from vlaser.eval.runner import run

    scores = {}
    for name in ("where2place", "mmsi_bench"):
        metrics = run(get_benchmark(name), backend, data[name], out / name, batch_size=BATCH_SIZE, max_tiles=1,
                      max_new_tokens=MAX_NEW_TOKENS, pictures=pictures)
        scores[name] = metrics["score"]
    return scores


def blind_baselines(data: dict[str, Path]) -> dict:
    """The best constant point (chosen on the held-out masks themselves) and the majority answer."""
    from vlaser.eval.benchmark import get_benchmark

    pointing = get_benchmark("where2place")
    masks = np.stack([pointing.gt_mask(item) for item in pointing.load(data["where2place"])])
    mean = masks.mean(axis=0)
    y, x = np.unravel_index(int(mean.argmax()), mean.shape)
    answers = Counter(item.meta["answer"] for item in get_benchmark("mmsi_bench").load(data["mmsi_bench"]))
    letter, count = answers.most_common(1)[0]
    return {"best_constant_point": {"score": float(mean.max()), "pixel": [int(x), int(y)]},
            "majority_answer": {"score": count / sum(answers.values()), "answer": letter}}


def run_quickstart(out: Path, minutes: float | None = None, preset: str = "basic", seed: int = 0,
                   n_train: int | None = None, n_eval: int | None = None, overwrite: bool = False,
                   max_steps: int | None = None) -> dict:
    """The whole loop; returns (and writes to ``out/summary.json``) the before/after/baseline summary.

    ``max_steps`` replaces the time budget with a step budget, shared between the stages as the time is:
    the same training on any machine, however fast (tests use it). ``n_train`` / ``n_eval`` override the
    preset's dataset sizes (a short run needs fewer scenes). A non-empty ``out`` is an error unless
    ``overwrite`` (the eval runner would otherwise resume from the old run's answers).
    """
    from vlaser.eval.backends import TransformersBackend
    from vlaser.model.tiny import build_tiny_checkpoint
    from vlaser.quickstart.report import write_outputs

    config, budget = _checked(preset, minutes, n_train, n_eval, max_steps)
    out = _empty_folder(Path(out), overwrite)
    torch.manual_seed(seed)

    _stage(f"1/5 generating the {preset} dataset (seed {seed}) in {out / 'data'}")
    data = generate_data(out / "data", config, seed)

    _stage("2/5 building a tiny InternVL3-architecture model (original layout, random init)")
    untrained = build_tiny_checkpoint(out / "untrained", "original", seed=seed, image_size=IMAGE_SIZE,
                                      vision=VISION, llm=LLM, init="trainable")

    _stage("3/5 evaluating the untrained model")
    before = evaluate(TransformersBackend(str(untrained), dtype="float32", device="cpu"), data,
                      out / "eval" / "untrained", pictures=PICTURES)

    training = _train_stages(untrained, data, out, config, budget, max_steps, seed)
    checkpoint = training.pop("checkpoint")

    _stage("5/5 evaluating the trained checkpoint")
    after = evaluate(TransformersBackend(str(checkpoint), dtype="float32", device="cpu"), data,
                     out / "eval" / "trained", pictures=PICTURES)
    curve, budget, stages = training.pop("curve"), training.pop("budget"), training.pop("stages")
    summary = {
        "preset": preset, "seed": seed, "budget_minutes": budget / 60, "max_steps": max_steps,
        "model": {"image_size": IMAGE_SIZE, "vision": VISION, "llm": LLM},
        "training": {**training, "batch_size": BATCH_SIZE, "preset": asdict(config), "stages": stages},
        "untrained": before, "trained": after, "baselines": blind_baselines(data), "curve": curve,
        "paths": {"data": str(out / "data"), "untrained": str(untrained), "trained": str(checkpoint),
                  "eval": str(out / "eval")},
    }
    write_outputs(out, summary)
    return summary


def _checked(preset: str, minutes: float | None, n_train: int | None, n_eval: int | None, max_steps: int | None
             ) -> tuple[Preset, float]:
    """The preset with its dataset sizes overridden, and the time budget in seconds; bad values are errors."""
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    config = replace(PRESETS[preset], **{k: v for k, v in (("n_train", n_train), ("n_eval", n_eval)) if v})
    budget = 60 * (config.minutes if minutes is None else minutes)
    if budget <= 0:
        raise UserInputError(f"--minutes must be positive, got {minutes}")
    if max_steps is not None and max_steps < 10 * len(config.stages):
        raise UserInputError(f"--max-steps must be at least {10 * len(config.stages)}, got {max_steps}")
    return config, budget


def _empty_folder(out: Path, overwrite: bool) -> Path:
    """``out``, made empty (a non-empty one only with ``overwrite``)."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"{out} is not empty; pass --overwrite to replace it, or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _train_stages(untrained: Path, data: dict[str, Path], out: Path, config: Preset, budget: float,
                  max_steps: int | None, seed: int) -> dict:
    """Stage 4: ``vlaser train`` stage after stage within the budget, the curve evaluated as it goes. Returns the
    training summary (steps, seconds, per-stage records, the curve and the budget it planned with)."""
    from vlaser.train.sft import train

    per_step = step_seconds(untrained, data["stage1"])
    if max_steps is not None:  # a step budget: time plays no part in what is trained
        budget = per_step * max_steps
    plan = f"{max_steps} steps (~{budget / 60:.1f} min)" if max_steps else f"{budget / 60:g} min"
    _stage(f"4/5 training with vlaser train for {plan} in {len(config.stages)} stages "
           f"(~{per_step:.2f} s/step on this machine)")
    checkpoint, stages, curve, offset_seconds, offset_steps = untrained, [], [], 0.0, 0
    evaluate_now = _curve_evaluator(data, out / "eval" / "curve")
    started = time.perf_counter()
    for number, stage in enumerate(config.stages, start=1):
        seconds = budget * stage.budget_share
        stage_steps = max(10, round(max_steps * stage.budget_share) if max_steps else int(seconds / per_step))
        print(f"-- stage {number}: {stage.name}, {seconds / 60:.1f} min, up to {stage_steps} steps", flush=True)
        callback = BudgetCallback(math.inf if max_steps else seconds, evaluate_now,
                                  every=budget / config.curve_points, offset_seconds=offset_seconds,
                                  offset_steps=offset_steps)
        final = number == len(config.stages)
        checkpoint = train(train_flags(checkpoint, data[f"stage{number}"], out / ("trained" if final else
                                                                                 f"stage{number}"),
                                       config, stage_steps, seed), callbacks=[callback])
        steps, loss = _trainer_state(checkpoint)
        stages.append({"name": stage.name, "checkpoint": str(checkpoint), "steps": steps,
                       "train_seconds": round(callback.train_seconds(), 1), "planned_steps": stage_steps,
                       "stopped_by_budget": callback.stopped_by_budget, "loss": loss})
        curve += callback.curve
        offset_seconds += callback.train_seconds()
        offset_steps += steps
        per_step = callback.train_seconds() / max(1, steps)  # the next stage plans with this stage's real pace
    return {"steps": offset_steps, "train_seconds": round(offset_seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1), "last_stage_seconds_per_step": round(per_step, 4),
            "stages": stages, "curve": curve, "budget": budget, "checkpoint": checkpoint}


def _curve_evaluator(data: dict[str, Path], out: Path):
    def evaluate_now(model, tokenizer, step: int) -> dict[str, float]:
        from vlaser.api import VLM
        from vlaser.eval.backends import TransformersBackend

        backend = TransformersBackend(f"in training, step {step}", vlm=VLM(model, tokenizer))
        return evaluate(backend, data, out / f"step-{step:06d}")

    return evaluate_now


def _trainer_state(checkpoint: Path) -> tuple[int, list[list[float]]]:
    """Steps trained and the ``[step, loss]`` pairs the Trainer logged, from ``trainer_state.json``."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state["global_step"]), [[e["step"], e["loss"]] for e in state["log_history"] if "loss" in e]

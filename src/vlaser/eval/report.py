"""Human-readable outputs: ``report.md`` per run, pictures of pointing answers, and the cross-run table."""

from __future__ import annotations

import html
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from vlaser.eval.benchmark import BenchmarkDataError
from vlaser.eval.provenance import partial_note

log = logging.getLogger(__name__)

#: Vlaser paper (arXiv 2510.11027v2) Table 1, percent: every row and column, in the paper's order.
PAPER_COLUMNS = ("erqa", "egoplan_bench2", "where2place", "point_bench", "paco_lvis", "pixmo_points", "vsi_bench",
                 "refspatial", "mmsi_bench", "vlabench", "eb_alfred", "eb_habitat")
PAPER_TABLE_1: dict[str, dict[str, float]] = {
    model: dict(zip(PAPER_COLUMNS, values))
    for model, values in {
        "GPT-4o-20241120": (47.0, 41.8, 29.1, 29.5, 16.2, 10.8, 42.5, 8.8, 30.3, 39.3, 56.3, 59.0),
        "Claude-3.7-Sonnet": (35.5, 41.3, 25.6, 22.2, 12.4, 7.2, 47.0, 7.7, 30.2, 41.7, 67.0, 65.7),
        "Gemini-2.5-Pro": (55.0, 42.9, 39.9, 62.8, 45.5, 25.8, 43.4, 30.3, 36.9, 34.8, 62.7, 53.0),
        "ChatVLA-2B": (34.3, 25.3, 3.7, 10.1, 10.2, 2.1, 2.4, 0.9, 20.1, 0.0, 0.0, 0.0),
        "InternVL3-2B": (31.5, 30.9, 5.2, 7.1, 15.4, 1.4, 31.5, 1.8, 25.3, 19.4, 1.3, 12.0),
        "Qwen2.5VL-3B": (35.3, 30.3, 31.0, 41.7, 67.4, 36.6, 27.9, 24.9, 26.5, 31.3, 6.7, 19.7),
        "Embodied-R1-3B": (36.0, 36.0, 35.1, 45.3, 68.3, 36.6, 28.0, 28.5, 26.0, 24.6, 7.0, 19.3),
        "RoboBrain2.0-3B": (37.3, 41.8, 64.2, 46.0, 67.6, 36.9, 28.8, 46.5, 26.8, 18.1, 0.0, 10.0),
        "Vlaser-2B": (35.8, 38.3, 74.0, 57.8, 72.5, 44.6, 57.5, 43.0, 23.6, 23.1, 42.3, 30.7),
        "Magma-8B": (29.3, 27.9, 10.9, 29.6, 15.3, 10.1, 12.7, 4.5, 26.2, 8.5, 0.0, 0.0),
        "Cosmos-Reason1-7B": (39.3, 26.9, 11.4, 40.8, 61.8, 23.6, 33.9, 5.4, 26.4, 35.5, 4.0, 5.3),
        "VeBrain-7B": (38.3, 27.3, 33.1, 38.9, 55.1, 20.1, 39.9, 20.6, 28.3, 25.9, 5.7, 12.3),
        "InternVL3-8B": (35.3, 40.0, 10.0, 14.2, 21.1, 5.7, 42.1, 5.6, 25.7, 24.7, 19.0, 23.7),
        "Qwen2.5VL-7B": (39.3, 29.7, 31.1, 56.3, 68.0, 43.5, 38.2, 32.1, 25.9, 36.4, 10.0, 18.3),
        "Embodied-R1-7B": (38.3, 37.1, 69.5, 51.2, 69.9, 39.2, 38.6, 31.1, 28.1, 35.5, 10.0, 19.0),
        "RoboBrain2.0-7B": (42.0, 33.2, 63.6, 49.5, 73.1, 37.8, 36.1, 32.5, 26.5, 6.6, 14.0, 29.3),
        "Vlaser-8B": (41.0, 53.4, 69.5, 60.3, 68.3, 40.5, 60.3, 59.2, 27.2, 45.6, 50.0, 40.0),
    }.items()
}
#: the rows shown beside a run by default: the models Vlaser is built from and compared with first
PAPER_ROWS = ("InternVL3-2B", "Vlaser-2B", "InternVL3-8B", "Vlaser-8B")
PICTURE_WIDTH = 480  #: pictures are shown at 320 px; 480 keeps detail for zooming, and keeps writing them cheap
PICTURE_MIN_SIDE = 320  #: a smaller image is enlarged (an integer factor, nearest-neighbour) to at least this
OUTLINE_WIDTH = 2  #: pixels of each tone of the mask's outline
GT_COLOR, PREDICTED_COLOR = (40, 220, 90), (255, 64, 64)
LEGEND = ("white-and-black outline: the ground-truth mask; green dots: ground-truth points; red dots (in a white and "
          "a black ring): predicted points")


def picture_scale(width: int, height: int) -> float:
    """How much an image is resized for its picture: a wide one down to ``PICTURE_WIDTH``; a small one up by the
    least integer factor that gives its short side ``PICTURE_MIN_SIDE`` (a whole factor keeps every pixel a
    sharp square, so a 112 px benchmark image is still readable in the report)."""
    if width > PICTURE_WIDTH:
        return PICTURE_WIDTH / width
    return float(max(1, math.ceil(PICTURE_MIN_SIDE / min(width, height))))


def _outline(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the ground-truth mask (above one half, for soft masks) drawn as a two-tone outline, white
    inside its edge and black outside, so it shows on any object's colour and leaves the object's own colours."""
    image = image.convert("RGB")
    inside = Image.fromarray(((np.asarray(mask) > 0.5) * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)
    edge = 2 * OUTLINE_WIDTH + 1
    white = ImageChops.subtract(inside, inside.filter(ImageFilter.MinFilter(edge)))
    black = ImageChops.subtract(inside.filter(ImageFilter.MaxFilter(edge)), inside)
    image.paste((255, 255, 255), mask=white)
    image.paste((0, 0, 0), mask=black)
    return image


def _markers(image: Image.Image, points, color: tuple[int, int, int]) -> Image.Image:
    """Filled dots in ``color``, each in a white and then a black ring, so a dot shows on any colour (a red
    dot on a red object keeps its rings)."""
    draw = ImageDraw.Draw(image)
    r = max(3, round(min(image.size) / 80))
    ring = max(1, r // 2)
    for x, y in points:
        for radius, fill in ((r + 2 * ring, (0, 0, 0)), (r + ring, (255, 255, 255)), (r, color)):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    return image


def _picture(image_path: Path, mask: np.ndarray | None, points, gt_points) -> Image.Image:
    """The image resized by ``picture_scale``, the mask outlined, GT points green, predictions red (points
    and markers scaled with the image)."""
    with Image.open(image_path) as image:
        scale = picture_scale(image.width, image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        picture = image.convert("RGB").resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    if mask is not None:
        picture = _outline(picture, mask)
    if gt_points:
        picture = _markers(picture, [(x * scale, y * scale) for x, y in gt_points], GT_COLOR)
    return _markers(picture, [(x * scale, y * scale) for x, y in points], PREDICTED_COLOR)


def write_pictures(benchmark, items, scores, predictions, out: Path) -> list[dict]:
    """A PNG per item given (ground truth in green, predicted points in red) and ``index.html`` showing them.

    An item whose image (or mask) cannot be read gets a card with its ``error`` and no picture, as the runner
    treats unreadable media: named, counted, never fatal."""
    folder = out / "pictures"
    folder.mkdir(exist_ok=True)
    cards = []
    for item, score in zip(items, scores):
        card = {"id": item.id, "score": score.value, "prompt": predictions[item.id].get("prompt", ""),
                "response": predictions[item.id].get("response", "")}
        try:
            picture = _picture(item.images[0], benchmark.gt_mask(item), score.points, benchmark.gt_points(item))
        except (OSError, BenchmarkDataError, Image.DecompressionBombError) as e:
            reason = str(e) if isinstance(e, BenchmarkDataError) else f"cannot read {item.images[0]}: {e}"
            log.warning("item %s: no picture, %s", item.id, reason)
            cards.append({**card, "error": reason})
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", item.id) + ".png"
        picture.save(folder / name)
        cards.append({**card, "file": f"pictures/{name}"})
    page = ["<!doctype html><meta charset='utf-8'><title>vlaser eval</title>",
            "<style>body{font-family:sans-serif}div.c{display:inline-block;width:330px;margin:6px;"
            "vertical-align:top}img{width:320px}pre{white-space:pre-wrap;font-size:11px}</style>",
            f"<h1>{html.escape(benchmark.name)}</h1><p>{html.escape(LEGEND)}</p>"]
    for card in cards:
        score = "skipped" if card["score"] is None else f"{card['score']:.3f}"
        shown = f"<img src='{card['file']}'>" if "file" in card else \
            f"<p><b>no picture</b>: {html.escape(card['error'])}</p>"
        page.append(f"<div class='c'>{shown}<b>{html.escape(card['id'])}</b> score {score}"
                    f"<pre>{html.escape(card['prompt'])}</pre><pre>{html.escape(card['response'])}</pre></div>")
    (out / "index.html").write_text("\n".join(page))
    return cards


def _coverage_lines(metrics: dict) -> list[str]:
    """Warnings that the score covers part of the benchmark, or came with ids it does not know or repeats."""
    lines = []
    if metrics.get("partial"):
        lines += [f"**Partial run: the first {metrics['n_items']} of {metrics['n_available']} items** (--limit "
                  f"{metrics.get('limit')}); not comparable with scores over the whole benchmark.", ""]
    if (metrics.get("shards") or 1) > 1:
        lines += [f"Items were asked over {metrics['shards']} processes and scored together.", ""]
    if metrics.get("n_unknown_ids"):
        lines += [f"**{metrics['n_unknown_ids']} prediction id(s) are not in the benchmark** (not scored): "
                  + ", ".join(f"`{i}`" for i in metrics["unknown_ids"]) + ("..." if metrics["n_unknown_ids"] > 20
                                                                          else ""), ""]
    if metrics.get("n_duplicate_ids"):
        lines += [f"**{metrics['n_duplicate_ids']} id(s) are given more than once** in the predictions (with the "
                  "same answer; scored once): " + ", ".join(f"`{i}`" for i in metrics["duplicate_ids"]), ""]
    return lines


def write_report(metrics: dict, out: Path, pictures: list[dict]) -> None:
    left_out = f", {metrics['n_gt_errors']} left out: ground truth unreadable" if metrics.get("n_gt_errors") else ""
    lines = [f"# {metrics['benchmark']} ({metrics['protocol']})", "",
             f"**score {metrics['score']:.4f}** over {metrics['n_scored']} scored of {metrics['n_items']} items "
             f"({metrics['n_unparsed']} answers not parsed, {metrics['n_missing_predictions']} unanswered{left_out})",
             ""]
    lines += _coverage_lines(metrics)
    if metrics.get("n_gt_errors"):
        lines += [f"**{metrics['n_gt_errors']} item(s) left out of the score: their ground truth (mask, annotation "
                  "row or file) cannot be read** -- damaged benchmark files, not the model's answers; the score is "
                  "over the other items:", ""] + [f"- {e}" for e in metrics["gt_errors"]] + [""]
    if metrics.get("n_truncated"):
        budget = metrics.get("run", {}).get("settings", {}).get("max_new_tokens", "the token budget")
        lines += [f"**Warning: {metrics['n_truncated']} answer(s) were cut off at max_new_tokens ({budget})** without "
                  "an end token; a cut-off point list has no `</point>` and parses to nothing. They are marked "
                  "`truncated` in predictions.jsonl.", ""]
    if metrics.get("n_errors"):
        lines += [f"**{metrics['n_errors']} item(s) failed on unreadable media** (scored as misses; asked again "
                  "when the run is repeated):", ""] + [f"- {e}" for e in metrics["errors"][:20]] + [""]
    shown: list[dict] = []
    for key, table in metrics.items():  # by_group, and any other breakdown a benchmark adds (by_scenario, ...)
        if key.startswith("by_") and isinstance(table, dict) and table and table not in shown:
            shown.append(table)
            lines += [f"| {key[3:]} | score | n |", "|---|---|---|"]
            lines += [f"| {g} | {v['score']:.4f} | {v['n']} |" for g, v in table.items()]
            lines.append("")
    if pictures:
        unreadable = [card for card in pictures if "error" in card]
        lines += [f"Pictures of {len(pictures) - len(unreadable)} items: [index.html](index.html)", ""]
        if unreadable:
            lines += [f"**{len(unreadable)} item(s) have no picture (unreadable image or mask):**", ""]
            lines += [f"- item {card['id']}: {card['error']}" for card in unreadable[:20]] + [""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run_label(out: Path) -> str:
    """A run's row name: ``MODEL (OUT)``, the model as ``run.json`` records it (an imported run) or its backend;
    ``OUT`` alone when it records none (a run scored from a predictions file)."""
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    backend = record.get("backend") if isinstance(record.get("backend"), dict) else {}
    model = record.get("model") or backend.get("model")
    return f"{model} ({out})" if model and str(model) != str(out) else str(out)


def cross_run_table(outs: list[Path]) -> str:
    """One markdown table (percent) over run directories, one row per run, beside the paper's Table 1 rows; a
    partial run's cell says how many items it covers, e.g. ``84.9 (20 of 100 items)``."""
    runs = {}
    for out in outs:
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        note = partial_note(metrics)
        cell = f"{100 * metrics['score']:.1f}" + (f" {note}" if note else "")
        runs.setdefault(run_label(Path(out)), {})[metrics["benchmark"]] = cell
    present = {b for scores in runs.values() for b in scores}
    benchmarks = [b for b in PAPER_COLUMNS if b in present] + sorted(present - set(PAPER_COLUMNS))
    rows = ["| model | " + " | ".join(benchmarks) + " |", "|---" * (len(benchmarks) + 1) + "|"]
    paper = [(f"paper: {k}", {b: f"{v:.1f}" for b, v in PAPER_TABLE_1[k].items()}) for k in PAPER_ROWS]
    for name, scores in list(runs.items()) + paper:
        rows.append(f"| {name} | " + " | ".join(scores.get(b, "-") for b in benchmarks) + " |")
    return "\n".join(rows) + "\n"

"""Human-readable outputs: ``report.md`` per run, pictures of pointing answers, and the cross-run table."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from vlaser.points import draw_points

#: Vlaser paper (arXiv 2510.11027v2) Table 1, percent, for the benchmarks vlaser scores.
_PAPER_COLUMNS = ("where2place", "point_bench", "paco_lvis", "pixmo_points", "refspatial")
PAPER_TABLE_1: dict[str, dict[str, float]] = {
    model: dict(zip(_PAPER_COLUMNS, values))
    for model, values in {
        "InternVL3-2B": (5.2, 7.1, 15.4, 1.4, 1.8),
        "Vlaser-2B": (74.0, 57.8, 72.5, 44.6, 43.0),
        "InternVL3-8B": (10.0, 14.2, 21.1, 5.7, 5.6),
        "Vlaser-8B": (69.5, 60.3, 68.3, 40.5, 59.2),
    }.items()
}
PICTURE_WIDTH = 480  #: pictures are shown at 320 px; 480 keeps detail for zooming, and keeps writing them cheap


def _overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the ground-truth mask tinted green (soft masks tint in proportion)."""
    image = image.convert("RGB")
    alpha = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8)).resize(image.size)
    tinted = Image.blend(image, Image.new("RGB", image.size, (40, 220, 90)), 0.45)
    return Image.composite(tinted, image, alpha)


def _picture(image_path: Path, mask: np.ndarray | None, points, gt_points) -> Image.Image:
    """The image (at most ``PICTURE_WIDTH`` wide), the mask tinted green, GT points green, predictions red."""
    with Image.open(image_path) as image:
        scale = min(1.0, PICTURE_WIDTH / image.width)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        picture = image.convert("RGB").resize(size, Image.BILINEAR)
    if mask is not None:
        picture = _overlay(picture, mask)
    if gt_points:
        picture = draw_points(picture, [(x * scale, y * scale) for x, y in gt_points], color=(40, 220, 90))
    return draw_points(picture, [(x * scale, y * scale) for x, y in points])


def write_pictures(benchmark, items, scores, predictions, out: Path) -> list[dict]:
    """A PNG per item given (ground truth in green, predicted points in red) and ``index.html`` showing them."""
    folder = out / "pictures"
    folder.mkdir(exist_ok=True)
    cards = []
    for item, score in zip(items, scores):
        if not item.images[0].is_file():
            continue
        picture = _picture(item.images[0], benchmark.gt_mask(item), score.points, benchmark.gt_points(item))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", item.id) + ".png"
        picture.save(folder / name)
        cards.append({"id": item.id, "file": f"pictures/{name}", "score": score.value,
                      "prompt": predictions[item.id].get("prompt", ""),
                      "response": predictions[item.id].get("response", "")})
    page = ["<!doctype html><meta charset='utf-8'><title>vlaser eval</title>",
            "<style>body{font-family:sans-serif}div.c{display:inline-block;width:330px;margin:6px;"
            "vertical-align:top}img{width:320px}pre{white-space:pre-wrap;font-size:11px}</style>",
            f"<h1>{html.escape(benchmark.name)}</h1><p>green: ground truth (mask or points); red: predicted points</p>"]
    for card in cards:
        score = "skipped" if card["score"] is None else f"{card['score']:.3f}"
        page.append(f"<div class='c'><img src='{card['file']}'><b>{html.escape(card['id'])}</b> score {score}"
                    f"<pre>{html.escape(card['prompt'])}</pre><pre>{html.escape(card['response'])}</pre></div>")
    (out / "index.html").write_text("\n".join(page))
    return cards


def write_report(metrics: dict, out: Path, pictures: list[dict]) -> None:
    lines = [f"# {metrics['benchmark']} ({metrics['protocol']})", "",
             f"**score {metrics['score']:.4f}** over {metrics['n_scored']} scored of {metrics['n_items']} items "
             f"({metrics['n_unparsed']} answers without points, {metrics['n_missing_predictions']} unanswered)", ""]
    if metrics["by_group"]:
        lines += ["| group | score | n |", "|---|---|---|"]
        lines += [f"| {g} | {v['score']:.4f} | {v['n']} |" for g, v in metrics["by_group"].items()]
        lines.append("")
    if pictures:
        lines += [f"Pictures of {len(pictures)} items: [index.html](index.html)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def cross_run_table(outs: list[Path]) -> str:
    """One markdown table (percent) over run directories, one row per run, beside the paper's Table 1 rows."""
    runs = {}
    for out in outs:
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        model = json.loads((Path(out) / "run.json").read_text()).get("model", str(out)) \
            if (Path(out) / "run.json").is_file() else str(out)
        runs.setdefault(f"{model} ({out})", {})[metrics["benchmark"]] = 100 * metrics["score"]
    benchmarks = sorted({b for scores in runs.values() for b in scores})
    rows = ["| model | " + " | ".join(benchmarks) + " |", "|---" * (len(benchmarks) + 1) + "|"]
    for name, scores in list(runs.items()) + [(f"paper: {k}", v) for k, v in PAPER_TABLE_1.items()]:
        cells = [f"{scores[b]:.1f}" if b in scores else "-" for b in benchmarks]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"

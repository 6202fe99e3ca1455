"""Human-readable outputs: ``report.md`` per run, pictures of pointing answers, and the cross-run table."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from vlaser.eval.masks import load_mask
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
MAX_PICTURES = 50


def _overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the ground-truth mask tinted green."""
    if mask.shape[::-1] != image.size:
        mask = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(image.size))
        mask = mask / 255.0
    base = np.asarray(image.convert("RGB")).astype(np.float64)
    alpha = 0.45 * np.clip(mask, 0, 1)[..., None]
    tinted = base * (1 - alpha) + np.array([40, 220, 90]) * alpha
    return Image.fromarray(tinted.astype(np.uint8))


def write_pictures(benchmark, items, scores, predictions, out: Path) -> list[dict]:
    """A PNG per item (the first ``MAX_PICTURES``): mask overlaid, predicted points drawn; and ``index.html``."""
    folder = out / "pictures"
    folder.mkdir(exist_ok=True)
    cards = []
    for item, score in list(zip(items, scores))[:MAX_PICTURES]:
        if not item.images[0].is_file() or "mask" not in item.meta or not Path(item.meta["mask"]).is_file():
            continue
        with Image.open(item.images[0]) as image:
            picture = draw_points(_overlay(image, load_mask(Path(item.meta["mask"]), "soft")), score.points)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", item.id) + ".png"
        picture.save(folder / name)
        cards.append({"id": item.id, "file": f"pictures/{name}", "score": score.value,
                      "prompt": predictions[item.id].get("prompt", ""),
                      "response": predictions[item.id].get("response", "")})
    page = ["<!doctype html><meta charset='utf-8'><title>vlaser eval</title>",
            "<style>body{font-family:sans-serif}div.c{display:inline-block;width:330px;margin:6px;"
            "vertical-align:top}img{width:320px}pre{white-space:pre-wrap;font-size:11px}</style>",
            f"<h1>{html.escape(benchmark.name)}</h1><p>green: ground-truth mask; red: predicted points</p>"]
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

"""The quickstart's outputs: ``summary.json``, ``report.md``, ``index.html``, ``loss.png`` and ``curve.png``."""

from __future__ import annotations

import html
import json
from pathlib import Path

from vlaser.drawing import plot_loss
from vlaser.errors import require

ROWS = (("where2place", "held-out pointing (Where2Place metric)", "best_constant_point", "best constant point"),
        ("mmsi_bench", "held-out multiple choice (MMSI-Bench metric)", "majority_answer", "majority answer"))


def _plots(out: Path, summary: dict) -> list[str]:
    """``loss.png`` (training loss by step) and ``curve.png`` (held-out scores by training minute)."""
    files, series, offset = [], {}, 0
    for stage in summary["training"]["stages"]:  # one step axis across the stages
        series[stage["name"]] = [(offset + step, loss) for step, loss in stage["loss"]]
        offset += stage["steps"]
    if plot_loss(out / "loss.png", series, "training loss (per token)", "vlaser train"):
        files.append("loss.png")
    if summary["curve"]:
        matplotlib = require("matplotlib", "quickstart", "the quickstart's plots")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
        minutes = [0.0] + [p["train_seconds"] / 60 for p in summary["curve"]]
        for key, label, baseline, _ in ROWS:
            line = ax.plot(minutes, [summary["untrained"][key]] + [p[key] for p in summary["curve"]], marker="o",
                           label=label)[0]
            ax.axhline(summary["baselines"][baseline]["score"], ls="--", color=line.get_color(), alpha=0.6)
        ax.set(xlabel="training minutes", ylabel="held-out score", ylim=(0, 1), title="learning curve "
               "(dashed: blind baselines)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "curve.png")
        plt.close(fig)
        files.append("curve.png")
    return files


HEADER = ("held-out set", "untrained", "trained", "blind baseline")


def _rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """The before/after/baseline table's cells, shared by ``report.md``, ``index.html`` and the console."""
    return [(label, f"{summary['untrained'][key]:.3f}", f"{summary['trained'][key]:.3f}",
             f"{summary['baselines'][baseline]['score']:.3f} ({name})") for key, label, baseline, name in ROWS]


def _table(summary: dict) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---|---|"]
    return lines + [f"| {label} | {before} | **{after}** | {base} |" for label, before, after, base in _rows(summary)]


def write_outputs(out: Path, summary: dict) -> None:
    """Write every output file and print the table."""
    summary["files"] = _plots(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    train = summary["training"]
    pointing_pass = next((p for p in summary["curve"] if p["where2place"] >= 0.5), None)
    every = summary["budget_minutes"] / train["preset"]["curve_points"]
    title = f"vlaser quickstart ({summary['preset']} preset, seed {summary['seed']})"
    budget = (f"a {summary['max_steps']}-step budget" if summary.get("max_steps") else
              f"a {summary['budget_minutes']:g}-minute budget")
    trained = (f"Trained {train['steps']} steps (batch {train['batch_size']}) in {train['train_seconds'] / 60:.1f} "
               f"training minutes of {budget}.")
    pointing = (f"Held-out pointing was first above 0.5 at the evaluation after "
              f"{pointing_pass['train_seconds'] / 60:.1f} training minutes (step {pointing_pass['step']}; the "
              f"curve is evaluated every {every:.1f} minutes)." if pointing_pass else
              "Held-out pointing did not reach 0.5 within this budget (best during training: "
              f"{max([p['where2place'] for p in summary['curve']] or [0.0]):.3f}).")
    lines = [f"# {title}", "", trained, "", *_table(summary), "", pointing, ""]
    lines += [f"![{name}]({name})" for name in summary["files"]]
    lines += ["", "Held-out pictures (mask outlined in white and black, predicted points red in a ring): "
              "[eval/trained/where2place/index.html](eval/trained/where2place/index.html)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _html(out, summary, title, [trained, pointing])
    print("\n".join(_table(summary)))
    print(f"\nwrote {out / 'summary.json'}, {out / 'report.md'} and {out / 'index.html'}")


def _html(out: Path, summary: dict, title: str, paragraphs: list[str]) -> None:
    rows = [f"<tr><td>{label}</td><td>{before}</td><td><b>{after}</b></td><td>{base}</td></tr>"
            for label, before, after, base in _rows(summary)]

    def pictures(run: str) -> list[Path]:  # numeric order of the item ids
        found = (out / "eval" / run / "where2place" / "pictures").glob("*.png")
        return sorted(found, key=lambda p: (len(p.stem), p.stem))[:12]

    page = ["<!doctype html><meta charset='utf-8'><title>vlaser quickstart</title>",
            "<style>body{font-family:sans-serif;max-width:980px;margin:auto}td,th{padding:4px 10px}"
            "img.p{width:150px;margin:3px;image-rendering:pixelated}</style>",
            f"<h1>{html.escape(title)}</h1>", *[f"<p>{html.escape(p)}</p>" for p in paragraphs],
            "<table border=1 cellspacing=0><tr>" + "".join(f"<th>{h}</th>" for h in HEADER) + "</tr>", *rows,
            "</table>",
            *[f"<p><img src='{name}'></p>" for name in summary["files"]],
            "<h2>Held-out pointing</h2><p>white-and-black outline: object mask; red dot in a ring: predicted point. "
            "All pictures with prompts "
            "and answers: <a href='eval/untrained/where2place/index.html'>untrained</a>, "
            "<a href='eval/trained/where2place/index.html'>trained</a></p>"]
    for run in ("untrained", "trained"):
        page += [f"<h3>{run}</h3><div>", *[f"<img class='p' src='{p.relative_to(out)}'>" for p in pictures(run)],
                 "</div>"]
    (out / "index.html").write_text("\n".join(page) + "\n")

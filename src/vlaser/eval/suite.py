"""``vlaser eval suite``: every benchmark whose data is present, in one table beside the Vlaser paper's Table 1.

Data root ``DIR``: one folder per benchmark, ``DIR/where2place/``, ``DIR/point_bench/``, ``DIR/refspatial/``,
``DIR/pixmo_points/``, ``DIR/paco_lvis/``, ``DIR/mmsi_bench/``, ``DIR/erqa/``, ``DIR/egoplan_bench2/``,
``DIR/vsi_bench/``, ``DIR/vlabench/`` (what each holds: :data:`~vlaser.eval.registry.LAYOUTS`); EmbodiedBench
results are imported into ``OUT`` first. Layouts, resuming, failures and the outputs: ``docs/eval_suite.md``.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlaser.errors import UserInputError, VlaserError
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.provenance import partial_note
from vlaser.eval.registry import IMPORTED, LAYOUTS, REGISTRY
from vlaser.eval.report import PAPER_COLUMNS, PAPER_TABLE_1

log = logging.getLogger(__name__)

#: settings a suite may override for every benchmark it runs (the runner's keyword arguments)
OVERRIDES = ("prompt", "max_tiles", "max_new_tokens", "min_new_tokens", "frames")
PAPER = "Vlaser (arXiv 2510.11027v2) Table 1"


def select(names: list[str] | None) -> list[str]:
    """The benchmarks to take, in the paper's column order: the given names (checked), else all of them."""
    known = [*REGISTRY, *IMPORTED]
    if names is None:
        names = known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserInputError(f"unknown benchmark(s) {unknown}; registered: {sorted(REGISTRY)}, imported from "
                             f"EmbodiedBench: {sorted(IMPORTED)}")
    order = {name: k for k, name in enumerate(PAPER_COLUMNS)}
    return sorted(dict.fromkeys(names), key=lambda n: (order.get(n, len(order)), n))


def scoped(pairs: list[str], flag: str) -> dict[str, Any]:
    """``NAME=VALUE`` (``--protocol``) or ``NAME.KEY=VALUE`` (``--option``) pairs, by benchmark name; option
    values ``true``/``false`` become booleans, as ``eval run --option`` does."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if flag == "--protocol":
            if not sep or not key or not value:
                raise UserInputError(f"{flag} expects BENCHMARK=PROTOCOL, got {pair!r}")
            out[key] = value
            continue
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise UserInputError(f"{flag} expects BENCHMARK.KEY=VALUE, got {pair!r}")
        out.setdefault(name, {})[option] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def check(names: list[str], overrides: dict[str, Any], protocols: dict[str, str] | None = None,
          options: dict[str, dict] | None = None) -> None:
    """Refuse bad names, protocols and settings before any model is loaded or any benchmark is run."""
    from vlaser.eval.runner import effective_settings

    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UserInputError(f"unknown setting(s) {unknown}; a suite may override {list(OVERRIDES)}")
    for scope, given in (("--protocol", protocols or {}), ("--option", options or {})):
        stray = sorted(set(given) - (set(names) & set(REGISTRY)))
        if stray:
            raise UserInputError(f"{scope} names benchmark(s) {stray} that this suite does not run "
                                 f"(it runs {[n for n in names if n in REGISTRY]})")
    for name in names:
        if name in REGISTRY:
            bench = get_benchmark(name, (protocols or {}).get(name), **(options or {}).get(name, {}))
            effective_settings(bench, True, **overrides)


def run_suite(backend, data_root: str | Path, out: str | Path, benchmarks: list[str] | None = None,
              batch_size: int = 8, limit: int | None = None, *, protocols: dict[str, str] | None = None,
              options: dict[str, dict] | None = None, pictures: int = 50, average_partial: bool = False,
              echo: Callable[[str], None] = print, **overrides) -> dict[str, Any]:
    """Run every selected benchmark found under ``data_root`` into ``out/<name>/`` (resuming what is there), then
    write ``table.md``, ``table.json`` and ``index.html``; returns the table's data (``table.json``).

    ``overrides`` (``max_new_tokens=...``, see :data:`OVERRIDES`) apply to every benchmark and are marked in the
    column labels; ``protocols``/``options`` are per benchmark name. ``echo`` gets one line per benchmark as it
    starts and as it ends. A partial column (``limit`` left items out) is marked with its count and left out of
    the averages unless ``average_partial``.
    """
    data_root, out = Path(data_root), Path(out)
    names = select(benchmarks)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check(names, overrides, protocols, options)
    out.mkdir(parents=True, exist_ok=True)
    columns, absent, failed = [], [], []
    for number, name in enumerate(names, start=1):
        tag = f"[{number}/{len(names)}] {name}"
        if name in IMPORTED:
            entry = _imported(name, out)
        elif not (data_root / name).is_dir():
            entry = {"status": "absent", "name": name, "looked_for": f"{data_root / name}/",
                     "reason": f"no such folder; it should hold {LAYOUTS[name]}"}
        else:
            echo(f"{tag}: running on {data_root / name} -> {out / name}")
            entry = _run_one(name, backend, data_root / name, out, batch_size, limit, pictures,
                             (protocols or {}).get(name), (options or {}).get(name, {}), overrides)
        if entry["status"] == "absent":
            absent.append(_without_status(entry))
            echo(f"{tag}: absent -- looked for {entry['looked_for']} ({entry['reason']})")
        elif entry["status"] == "failed":
            failed.append(_without_status(entry))
            echo(f"{tag}: FAILED -- {entry['error']}")
        else:
            columns.append(_without_status(entry))
            echo(f"{tag}: {_cell(entry['score'], entry)} ({entry['label']}) over {entry['n_scored']} of "
                 f"{entry['n_items']} items -> {out / name / 'report.md'}")
    table = build_table(_model_name(backend), backend.info(), columns, absent, failed, data_root, average_partial)
    write_table(table, out)
    echo(f"table: {out / 'table.md'} ({len(columns)} benchmark(s), {len(absent)} absent, {len(failed)} failed)")
    return table


def _without_status(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "status"}


def _model_name(backend) -> str:
    info = backend.info()
    return str(info.get("model") or info.get("backend") or "model")


def _run_one(name: str, backend, data_dir: Path, out: Path, batch_size: int, limit: int | None, pictures: int,
             protocol: str | None, options: dict, overrides: dict) -> dict:
    """One benchmark through the runner; a data or resume error becomes a ``failed`` entry (the suite goes on)."""
    from vlaser.eval.runner import run

    bench = get_benchmark(name, protocol, **options)
    try:
        metrics = run(bench, backend, data_dir, out / name, batch_size=batch_size, limit=limit, pictures=pictures,
                      **overrides)
    except (VlaserError, OSError) as e:  # bad or missing data, a run made differently in OUT/<name>, unreadable file
        log.info("%s failed", name, exc_info=True)
        return {"status": "failed", "name": name, "data": str(data_dir), "error": f"{type(e).__name__}: {e}"}
    recorded = (metrics.get("run") or {}).get("settings") or {}
    return _column(name, metrics, out, departures=_departures(bench.settings.settings(), recorded), limit=limit)


def _departures(protocol: dict, recorded: dict) -> dict:
    """The recorded settings that differ from the protocol's (frames of a benchmark without video: not used)."""
    return {k: recorded[k] for k in OVERRIDES if recorded.get(k) is not None and recorded[k] != protocol.get(k)}


def _imported(name: str, out: Path) -> dict:
    """EB-ALFRED / EB-Habitat: the column ``vlaser eval import embodiedbench`` wrote into ``OUT/<env>/``."""
    path = out / name / "metrics.json"
    if not path.is_file():
        return {"status": "absent", "name": name, "looked_for": str(path),
                "reason": f"{IMPORTED[name]} runs in EmbodiedBench's simulator; import its results first with "
                          f"`vlaser eval import embodiedbench RESULTS --out {out}`"}
    try:
        metrics = json.loads(path.read_text())
        if metrics.get("benchmark") != name or not isinstance(metrics.get("score"), (int, float)):
            raise ValueError(f"not an imported {name} result (benchmark {metrics.get('benchmark')!r})")
    except (ValueError, AttributeError) as e:
        return {"status": "failed", "name": name, "data": str(path), "error": f"{path}: {type(e).__name__}: {e}"}
    return _column(name, metrics, out, departures={}, limit=None, imported_from=metrics.get("run"))


def _column(name: str, metrics: dict, out: Path, departures: dict, limit: int | None, **extra) -> dict:
    """A table column: percent score, the protocol label, counts, and links relative to ``OUT``."""
    protocol, version = metrics.get("protocol", "?"), metrics.get("protocol_version")
    label = protocol + (f" v{version}" if version is not None else "")
    label += "".join(f"; {k}={v}" for k, v in departures.items())
    folder = out / name
    links = {kind: f"{name}/{file}" for kind, file in (("report", "report.md"), ("pictures", "index.html"))
             if (folder / file).is_file()}
    return {"status": "done", "name": name, "score": 100 * metrics["score"], "protocol": protocol,
            "protocol_version": version, "label": label, "departures": departures, "limit": limit,
            "n_items": metrics.get("n_items", metrics.get("n")), "n_scored": metrics.get("n_scored"),
            "n_unparsed": metrics.get("n_unparsed", 0), "n_errors": metrics.get("n_errors", 0),
            "n_gt_errors": metrics.get("n_gt_errors", 0),
            "n_missing_predictions": metrics.get("n_missing_predictions", 0),
            "partial": bool(metrics.get("partial")), "n_available": metrics.get("n_available"),
            "metrics": f"{name}/metrics.json", **links, **{k: v for k, v in extra.items() if v is not None}}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_table(model: str, backend_info: dict, columns: list[dict], absent: list[dict], failed: list[dict],
                data_root: Path, average_partial: bool = False) -> dict[str, Any]:
    """The table's data: this model's row and every paper row over the same columns, with their averages.

    The average leaves out a column the paper does not report (none of the registered benchmarks today), and a
    partial one (part of the benchmark's items) unless ``average_partial``, so every row averages the same
    columns and a number over a few items does not move an average set beside the paper's.
    """
    averaged = [c["name"] for c in columns if c["name"] in PAPER_COLUMNS and (average_partial or not c.get("partial"))]
    scores = {c["name"]: c["score"] for c in columns}
    paper_rows = [{"name": row, "scores": {c["name"]: values.get(c["name"]) for c in columns},
                   "average": _mean([values[n] for n in averaged])} for row, values in PAPER_TABLE_1.items()]
    return {"model": model, "backend": backend_info, "data_root": str(data_root), "paper": PAPER,
            "columns": columns, "average_over": averaged, "average_partial": average_partial,
            "partial": [c["name"] for c in columns if c.get("partial")],
            "model_row": {"name": model, "scores": scores, "average": _mean([scores[n] for n in averaged])},
            "paper_rows": paper_rows, "absent": absent, "failed": failed}


def _cell(value: float | None, column: dict | None = None) -> str:
    """A percent; this model's partial column adds its count, ``84.9 (20 of 100 items)``."""
    if value is None:
        return "-"
    note = partial_note(column) if column else None
    return f"{value:.1f}" + (f" {note}" if note else "")


def _average_note(table: dict) -> str:
    """What the average covers, and the partial columns it leaves out (or, when asked, includes)."""
    averaged = table["average_over"]
    note = f"the mean over the {len(averaged)} column(s) this model has ({', '.join(averaged)}"
    if table.get("partial"):
        names = ", ".join(table["partial"])
        note += (f"; partial columns included, as asked: {names}" if table.get("average_partial") else
                 f"; partial columns left out: {names}; --average-partial includes them")
    return note + ")"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _count_line(column: dict) -> str:
    """``2 of 3 items scored (...)`` for the notes under the table."""
    extra = [f"{column[k]} {what}" for k, what in (("n_unparsed", "not parsed"), ("n_errors", "media errors"),
                                                    ("n_gt_errors", "left out: ground truth unreadable"),
                                                    ("n_missing_predictions", "unanswered")) if column.get(k)]
    line = f"{column['n_scored']} of {column['n_items']} items scored" + (f" ({', '.join(extra)})" if extra else "")
    if column.get("partial"):
        line += f"; partial: only the first {column['n_items']} of {column['n_available']} items (--limit)"
    if column.get("imported_from"):
        line += f"; imported from EmbodiedBench run `{column['imported_from']}`"
    return line


def render_markdown(table: dict) -> str:
    """``table.md``: the table, then per-column notes and links, absent and failed benchmarks."""
    columns = table["columns"]
    lines = [f"# Benchmark suite: {table['model']}", ""]
    if columns:
        lines += [f"Percent (100 x each benchmark's `score`). Paper rows: {PAPER}. `avg`: {_average_note(table)}, "
                  "for every row alike. Column labels: the protocol and its "
                  "version, then any setting that departs from it. A partial column (--limit) gives its count.", ""]
        header = ["model", *[f"{c['name']} ({c['label']})" for c in columns], f"avg ({len(table['average_over'])})"]
        lines += ["| " + " | ".join(_md(h) for h in header) + " |", "|---" * len(header) + "|"]
        rows = [({**table["model_row"], "name": f"**{table['model']}** (this run)", "mine": True})]
        for row in rows + table["paper_rows"]:
            cells = [_cell(row["scores"].get(c["name"]), c if row.get("mine") else None) for c in columns]
            cells.append(_cell(row["average"]))
            lines.append(f"| {_md(row['name'])} | " + " | ".join(cells) + " |")
        lines += ["", "## Runs", ""]
        for c in columns:
            links = ", ".join(f"[{kind}]({c[kind]})" for kind in ("report", "pictures") if c.get(kind))
            lines.append(f"- {c['name']}: {_count_line(c)}" + (f" -- {links}" if links else ""))
    else:
        lines += ["No benchmark ran (see the absent and failed benchmarks below).", ""]
    if table["absent"]:
        lines += ["", "## Absent", ""] + [f"- {a['name']}: looked for `{a['looked_for']}` -- {a['reason']}"
                                          for a in table["absent"]]
    if table["failed"]:
        lines += ["", "## Failed", ""] + [f"- {f['name']}: {f['error']}" for f in table["failed"]]
    return "\n".join(lines) + "\n"


def render_html(table: dict) -> str:
    """``index.html``: the same table, self-contained, every text escaped, with links to each run's outputs."""
    e = html.escape
    columns = table["columns"]
    page = ["<!doctype html><meta charset='utf-8'>", f"<title>vlaser suite: {e(table['model'])}</title>",
            "<style>body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
            "{text-align:left}tr.me{background:#fff3c4;font-weight:bold}small{font-weight:normal;color:#555}"
            "</style>", f"<h1>Benchmark suite: {e(table['model'])}</h1>"]
    if columns:
        page.append(f"<p>Percent (100 &times; each benchmark's score). Paper rows: {e(PAPER)}. avg: "
                    f"{e(_average_note(table))}, for every row alike. A partial column (--limit) gives its count.</p>")
        head = "".join(f"<th>{e(c['name'])}<br><small>{e(c['label'])}</small></th>" for c in columns)
        page.append(f"<table><tr><th>model</th>{head}<th>avg</th></tr>")
        links = "".join("<td>" + " ".join(f"<a href='{e(c[kind], quote=True)}'>{kind}</a>"
                                          for kind in ("report", "pictures") if c.get(kind)) + "</td>"
                        for c in columns)
        page.append(f"<tr><td>outputs</td>{links}<td></td></tr>")
        rows = [(table["model_row"], " class='me'")] + [(row, "") for row in table["paper_rows"]]
        for row, cls in rows:
            cells = "".join(f"<td>{e(_cell(row['scores'].get(c['name']), c if cls else None))}</td>" for c in columns)
            page.append(f"<tr{cls}><td>{e(row['name'])}</td>{cells}<td>{_cell(row['average'])}</td></tr>")
        page.append("</table><h2>Runs</h2><ul>")
        page += [f"<li>{e(c['name'])}: {e(_count_line(c))}</li>" for c in columns]
        page.append("</ul>")
    else:
        page.append("<p>No benchmark ran (see the absent and failed benchmarks below).</p>")
    if table["absent"]:
        page.append("<h2>Absent</h2><ul>")
        page += [f"<li>{e(a['name'])}: looked for <code>{e(a['looked_for'])}</code> -- {e(a['reason'])}</li>"
                 for a in table["absent"]]
        page.append("</ul>")
    if table["failed"]:
        page.append("<h2>Failed</h2><ul>")
        page += [f"<li>{e(f['name'])}: <pre>{e(f['error'])}</pre></li>" for f in table["failed"]]
        page.append("</ul>")
    return "\n".join(page) + "\n"


def write_table(table: dict, out: Path) -> None:
    """``table.md``, ``table.json`` and ``index.html`` in ``out``."""
    (out / "table.json").write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    (out / "table.md").write_text(render_markdown(table))
    (out / "index.html").write_text(render_html(table))

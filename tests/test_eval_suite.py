"""``vlaser eval suite``: benchmarks found under a data root, run (resumably) and tabled beside the paper's Table 1."""

import json

import pytest

from fakes import ScriptedBackend
from test_embodiedbench import make_dataset as embodiedbench_run
from test_eval import _mmsi, refspatial, where2place
from vlaser.cli import main
from vlaser.eval.benchmark import REGISTRY
from vlaser.eval.embodiedbench import import_results
from vlaser.eval.report import PAPER_COLUMNS, PAPER_TABLE_1
from vlaser.eval.suite import IMPORTED, LAYOUTS, run_suite, scoped, select

THREE = ("where2place", "refspatial", "mmsi_bench")


def make_dataset(root):
    """A data root with three benchmarks (where2place: 2 items, refspatial: 4, mmsi_bench: 3) and no others."""
    where2place(root / "where2place", n=2)
    refspatial(root / "refspatial")
    _mmsi(root / "mmsi_bench")
    return root


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def test_every_registered_benchmark_has_a_documented_folder():
    import vlaser.eval.suite as suite

    assert set(LAYOUTS) == set(REGISTRY)
    assert all(f"``DIR/{name}/``" in suite.__doc__ for name in REGISTRY)
    assert set(PAPER_COLUMNS) <= set(REGISTRY) | set(IMPORTED)  # every column of Table 1 has a source


def test_select_orders_like_the_paper_and_refuses_unknown_names():
    assert select(["mmsi_bench", "erqa", "where2place", "erqa"]) == ["erqa", "where2place", "mmsi_bench"]
    assert select(None) == list(PAPER_COLUMNS)
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['where2plac'\]; registered: \['egoplan_bench2'"):
        select(["where2plac"])


def test_scoped_protocols_and_options():
    assert scoped(["pixmo_points=molmo"], "--protocol") == {"pixmo_points": "molmo"}
    assert scoped(["where2place.binarize=true", "vlabench.prompt_file=/p/a=b.txt"], "--option") == {
        "where2place": {"binarize": True}, "vlabench": {"prompt_file": "/p/a=b.txt"}}
    with pytest.raises(ValueError, match="BENCHMARK.KEY=VALUE"):
        scoped(["binarize=true"], "--option")
    with pytest.raises(ValueError, match="BENCHMARK=PROTOCOL"):
        scoped(["pixmo_points"], "--protocol")


def test_suite_cli_with_the_tiny_model(tiny_original, tmp_path, capsys):
    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"
    args = ["eval", "suite", "--model", str(tiny_original), "--data-root", str(data), "--out", str(out),
            "--benchmarks", "erqa,mmsi_bench,refspatial,where2place", "--max-new-tokens", "8", "--dtype", "float32",
            "--limit", "2", "--batch-size", "2", "--average-partial"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"[1/4] erqa: absent -- looked for {data / 'erqa'}/" in printed
    assert f"[2/4] where2place: running on {data / 'where2place'}" in printed
    assert "[4/4] mmsi_bench: " in printed and f"-> {out / 'mmsi_bench' / 'report.md'}" in printed

    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert header == ("| model | where2place (vlaser v1; max_new_tokens=8) | refspatial (vlaser v1; max_new_tokens=8) "
                      "| mmsi_bench (official v1; max_new_tokens=8) | avg (3) |")
    # Vlaser-2B: where2place 74.0, refspatial 43.0, mmsi_bench 23.6 -> (74.0 + 43.0 + 23.6) / 3 = 46.87
    assert "| Vlaser-2B | 74.0 | 43.0 | 23.6 | 46.9 |" in table
    # InternVL3-8B: 10.0, 5.6, 25.7 -> 41.3 / 3 = 13.77
    assert "| InternVL3-8B | 10.0 | 5.6 | 25.7 | 13.8 |" in table
    assert all(f"| {row} | " in table for row in PAPER_TABLE_1)
    mine = next(line for line in table.splitlines() if "(this run)" in line)
    assert mine.startswith(f"| **{tiny_original}** (this run) | ")
    assert f"- erqa: looked for `{data / 'erqa'}/` -- no such folder; it should hold the official erqa.tfrecord" \
        in table
    assert "- where2place: 2 of 2 items scored" in table and "where2place: 2 of 2 items scored;" not in table
    assert "partial: only the first 2 of 4 items (--limit)" in table
    assert "(2 of 4 items) | " in mine and "(2 of 3 items) | " in mine  # refspatial and mmsi_bench are partial
    assert "partial columns included, as asked: refspatial, mmsi_bench" in table
    assert "[report](refspatial/report.md), [pictures](refspatial/index.html)" in table

    saved = json.loads((out / "table.json").read_text())
    assert [c["name"] for c in saved["columns"]] == ["where2place", "refspatial", "mmsi_bench"]
    assert [(c["protocol"], c["protocol_version"]) for c in saved["columns"]] == [("vlaser", 1), ("vlaser", 1),
                                                                                 ("official", 1)]
    assert saved["columns"][2]["metrics"] == "mmsi_bench/metrics.json" and "pictures" not in saved["columns"][2]
    assert saved["absent"] == [{"name": "erqa", "looked_for": f"{data / 'erqa'}/",
                                "reason": f"no such folder; it should hold {LAYOUTS['erqa']}"}]
    assert saved["failed"] == [] and saved["average_over"] == list(THREE)
    assert [r["name"] for r in saved["paper_rows"]] == list(PAPER_TABLE_1)
    vlaser_2b = next(r for r in saved["paper_rows"] if r["name"] == "Vlaser-2B")
    assert vlaser_2b["average"] == pytest.approx((74.0 + 43.0 + 23.6) / 3)
    assert saved["model_row"]["average"] == pytest.approx(sum(saved["model_row"]["scores"].values()) / 3)
    for name in THREE:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert saved["model_row"]["scores"][name] == pytest.approx(100 * metrics["score"])

    page = (out / "index.html").read_text()
    assert "<a href='where2place/report.md'>report</a> <a href='where2place/index.html'>pictures</a>" in page
    assert "<a href='mmsi_bench/report.md'>report</a>" in page and "mmsi_bench/index.html" not in page
    assert "<td>Vlaser-2B</td><td>74.0</td><td>43.0</td><td>23.6</td><td>46.9</td>" in page
    assert "http" not in page.lower().replace("<!doctype html>", "")  # nothing fetched from elsewhere

    # re-running continues: nothing is asked again, and the first run's answers stay
    before = {name: _lines(out / name / "predictions.jsonl") for name in THREE}
    assert main(args) == 0
    assert {name: _lines(out / name / "predictions.jsonl") for name in THREE} == before
    assert all(len(lines) == 2 for lines in before.values())

    # a folder that fails to load is reported, the others still run, and the exit status says so
    (data / "point_bench").mkdir()
    (data / "point_bench" / "data.json").write_text("{not json")
    capsys.readouterr()
    assert main([*args[:9], "point_bench,where2place", *args[10:]]) == 1
    printed = capsys.readouterr().out
    assert "[2/2] point_bench: FAILED -- BenchmarkDataError: " in printed and "[1/2] where2place: " in printed
    assert "## Failed" in (out / "table.md").read_text()


def test_resume_failure_and_imported_columns(tmp_path):
    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"
    (data / "point_bench").mkdir()
    (data / "point_bench" / "data.json").write_text('[{"image_filename": "a.png", ')  # cut short
    lines = []
    first = ScriptedBackend()
    table = run_suite(first, data, out, limit=1, echo=lines.append, max_new_tokens=8)
    assert len(first.asked) == 3  # one item of each benchmark present
    assert [c["name"] for c in table["columns"]] == list(THREE)
    assert [f["name"] for f in table["failed"]] == ["point_bench"]
    assert table["failed"][0]["error"].startswith(f"BenchmarkDataError: {data / 'point_bench' / 'data.json'}: ")
    assert any(line.startswith("[4/12] point_bench: FAILED -- BenchmarkDataError: ") for line in lines)
    absent = {a["name"]: a for a in table["absent"]}
    assert set(absent) == set(PAPER_COLUMNS) - set(THREE) - {"point_bench"}
    assert absent["eb_alfred"]["looked_for"] == str(out / "eb_alfred" / "metrics.json")
    assert f"`vlaser eval import embodiedbench RESULTS --out {out}`" in absent["eb_habitat"]["reason"]
    assert "## Failed\n\n- point_bench: BenchmarkDataError: " in (out / "table.md").read_text()

    # the rest of each benchmark is asked, answered items are not; the corrupt folder is fixed meanwhile
    (data / "point_bench").rename(tmp_path / "broken")
    import_results(embodiedbench_run(tmp_path / "eb"), out)  # EB-ALFRED success 5/9
    second = ScriptedBackend()
    table = run_suite(second, data, out, echo=lines.append, max_new_tokens=8)
    assert len(second.asked) == (2 - 1) + (4 - 1) + (3 - 1)
    assert {name: len(_lines(out / name / "predictions.jsonl")) for name in THREE} == {
        "where2place": 2, "refspatial": 4, "mmsi_bench": 3}
    assert table["failed"] == [] and "point_bench" in {a["name"] for a in table["absent"]}
    assert [c["name"] for c in table["columns"]] == [*THREE, "eb_alfred"]
    eb = table["columns"][-1]
    assert eb["score"] == pytest.approx(500 / 9) and eb["label"] == "official" and eb["n_items"] == 300
    assert eb["imported_from"] and eb["report"] == "eb_alfred/report.md"
    assert table["average_over"] == [*THREE, "eb_alfred"]
    vlaser_2b = next(r for r in table["paper_rows"] if r["name"] == "Vlaser-2B")
    assert vlaser_2b["average"] == pytest.approx((74.0 + 43.0 + 23.6 + 42.3) / 4)
    assert vlaser_2b["scores"] == {"where2place": 74.0, "refspatial": 43.0, "mmsi_bench": 23.6, "eb_alfred": 42.3}
    assert "| eb_alfred (official) |" in (out / "table.md").read_text()

    third = ScriptedBackend()
    run_suite(third, data, out, THREE, echo=lines.append, max_new_tokens=8)
    assert third.asked == []


def test_a_run_made_differently_fails_that_benchmark_only(tmp_path):
    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"
    run_suite(ScriptedBackend(), data, out, list(THREE), limit=1, echo=lambda line: None, max_new_tokens=8)
    table = run_suite(ScriptedBackend(), data, out, list(THREE), echo=lambda line: None, max_new_tokens=9)
    assert [f["name"] for f in table["failed"]] == list(THREE)
    assert "settings.max_new_tokens: 8 -> 9" in table["failed"][0]["error"]
    with pytest.raises(ValueError, match="a suite may override"):
        run_suite(ScriptedBackend(), data, out, list(THREE), echo=lambda line: None, max_tokens=8)
    with pytest.raises(ValueError, match="--max-new-tokens must be an integer of at least 1"):
        run_suite(ScriptedBackend(), data, out, list(THREE), echo=lambda line: None, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"names benchmark\(s\) \['erqa'\] that this suite does not run"):
        run_suite(ScriptedBackend(), data, out, list(THREE), protocols={"erqa": "lmms_eval"})


def test_suite_cli_refuses_before_loading_and_fails_on_a_failed_benchmark(tmp_path, capsys):
    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"
    missing_model = str(tmp_path / "no-model")  # never loaded: the names are checked first
    assert main(["eval", "suite", "--model", missing_model, "--data-root", str(data), "--out", str(out),
                 "--benchmarks", "where2place,nope"]) == 2
    assert "unknown benchmark(s) ['nope']; registered: ['egoplan_bench2'" in capsys.readouterr().err
    assert main(["eval", "suite", "--model", missing_model, "--data-root", str(data), "--out", str(out),
                 "--protocol", "where2place=nope"]) == 2
    assert "where2place: unknown protocol 'nope'" in capsys.readouterr().err


def test_a_truncated_image_does_not_fail_its_benchmark(tmp_path):
    data = make_dataset(tmp_path / "data")
    image = data / "where2place" / "images" / "1.jpg"
    image.write_bytes(image.read_bytes()[:200])
    table = run_suite(ScriptedBackend(), data, tmp_path / "out", ["where2place"], echo=lambda line: None)
    assert table["failed"] == [] and [c["name"] for c in table["columns"]] == ["where2place"]
    assert "1 item(s) have no picture" in (tmp_path / "out" / "where2place" / "report.md").read_text()


def test_partial_columns_are_marked_and_left_out_of_the_averages(tmp_path):
    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"
    table = run_suite(ScriptedBackend(), data, out, list(THREE), limit=2, echo=lambda line: None)
    assert table["average_over"] == ["where2place"] and table["partial"] == ["refspatial", "mmsi_bench"]
    vlaser_2b = next(r for r in table["paper_rows"] if r["name"] == "Vlaser-2B")
    assert vlaser_2b["average"] == pytest.approx(74.0)  # where2place alone: the partial columns are left out
    assert table["model_row"]["average"] == pytest.approx(table["model_row"]["scores"]["where2place"])
    markdown, page = (out / "table.md").read_text(), (out / "index.html").read_text()
    mine = next(line for line in markdown.splitlines() if "(this run)" in line)
    refspatial = table["model_row"]["scores"]["refspatial"]
    assert f"| {refspatial:.1f} (2 of 4 items) | " in mine and "(2 of 2 items)" not in mine
    assert "| Vlaser-2B | 74.0 | 43.0 | 23.6 | 74.0 |" in markdown  # paper cells are never marked
    assert "partial columns left out: refspatial, mmsi_bench; --average-partial includes them" in markdown
    assert f"<td>{refspatial:.1f} (2 of 4 items)</td>" in page and "partial columns left out" in page
    for name, n_available in (("where2place", 2), ("refspatial", 4)):
        run, metrics = (json.loads((out / name / f).read_text()) for f in ("run.json", "metrics.json"))
        assert (run["limit"], run["n_available"], run["shards"]) == (2, n_available, 1)
        assert (metrics["limit"], metrics["n_available"], metrics["partial"]) == (2, n_available, n_available > 2)
    assert "**Partial run: the first 2 of 4 items** (--limit 2)" in (out / "refspatial" / "report.md").read_text()
    assert "Partial run" not in (out / "where2place" / "report.md").read_text()

    from vlaser.eval.report import cross_run_table

    report = cross_run_table([out / "where2place", out / "refspatial"])
    assert f"| {refspatial:.1f} (2 of 4 items) |" in report and "(2 of 2 items)" not in report

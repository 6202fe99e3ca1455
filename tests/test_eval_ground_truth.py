"""Damaged ground truth (a cut mask, an unreadable annotation line or file, a bad parquet cell or segmentation):
named, counted, left out of the score, never fatal to ``eval run`` or ``eval suite`` (docs/eval_suite.md)."""

import json

import numpy as np
import pytest
from PIL import Image

from fakes import ScriptedBackend
from test_eval import _image_struct, _vlaser_jsonl, point_bench, refspatial, where2place
from test_eval_egoplan_bench2 import make_dataset as egoplan_bench2
from test_eval_erqa import make_dataset as erqa
from test_eval_vlabench import answer, pick, place
from test_eval_vlabench import make_dataset as vlabench
from test_eval_vsi_bench import make_dataset as vsi_bench
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.report import cross_run_table
from vlaser.eval.runner import run
from vlaser.eval.suite import run_suite


def cut(path):
    """Truncate a file to half its bytes, as an interrupted download leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def outputs(out):
    return json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()


def assert_left_out(out, n_items, n_scored, named):
    """The run finished, and metrics.json and report.md name and count the one damaged item."""
    metrics, report = outputs(out)
    assert (metrics["n_items"], metrics["n_scored"], metrics["n_gt_errors"]) == (n_items, n_scored, 1)
    assert named in metrics["gt_errors"][0]
    assert "1 item(s) left out of the score: their ground truth" in report and named in report
    assert "1 left out: ground truth unreadable" in report
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["score"] for s in scores if "gt_error" in s] == [None]
    return metrics


def where2place_parquet(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = where2place(root / "robopoint", n=3)
    lines = [json.loads(x) for x in (folder / "point_questions.jsonl").read_text().splitlines()]
    rows = []
    for i, x in enumerate(lines):
        mask = (folder / "masks" / f"{i:02d}.jpg").read_bytes()
        rows.append({"question_id": x["question_id"], "question": x["text"], "question_type": x["category"],
                     "image": _image_struct(Image.open(folder / "images" / x["image"])),
                     "mask": {"bytes": mask[: len(mask) // 2] if i == 1 else mask, "path": None}})  # row 1 cut
    (root / "flageval").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "flageval" / "test-00000-of-00001.parquet")
    return root / "flageval", "101.mask"


def where2place_jsonl(root):
    data = where2place(root / "w2p", n=3)
    return data, str(cut(data / "masks" / "01.jpg"))


def refspatial_cut(root):
    data = refspatial(root / "rs")
    return data, str(cut(data / "Unseen" / "mask" / "1.png"))


def point_bench_cut(root):
    data = point_bench(root / "pb")
    return data, str(cut(data / "masks" / "b_mask.png"))


@pytest.mark.parametrize("build, n_items", [(where2place_jsonl, 3), (where2place_parquet, 3), (refspatial_cut, 4),
                                            (point_bench_cut, 2)])
def test_a_cut_mask_is_left_out_and_named(build, n_items, tmp_path):
    data, named = build(tmp_path)
    name = {"where2place_jsonl": "where2place", "where2place_parquet": "where2place", "refspatial_cut": "refspatial",
            "point_bench_cut": "point_bench"}[build.__name__]
    backend = ScriptedBackend()
    run(get_benchmark(name), backend, data, tmp_path / "out", batch_size=2)
    assert len(backend.asked) == n_items  # the damage shows only once the answers are there
    metrics = assert_left_out(tmp_path / "out", n_items, n_items - 1, named)
    assert metrics["n_errors"] == 0 and metrics["n_unparsed"] == 0


def test_a_cut_mask_does_not_fail_the_suite(tmp_path):
    data = tmp_path / "data"
    where2place(data / "where2place", n=3)
    cut(data / "where2place" / "masks" / "02.jpg")
    table = run_suite(ScriptedBackend(), data, tmp_path / "out", ["where2place"], echo=lambda line: None)
    assert table["failed"] == [] and table["columns"][0]["n_gt_errors"] == 1
    assert "2 of 3 items scored (1 left out: ground truth unreadable)" in (tmp_path / "out" / "table.md").read_text()
    assert_left_out(tmp_path / "out" / "where2place", 3, 2, "masks/02.jpg")


def test_a_damaged_annotation_line_is_left_out_and_the_masks_keep_their_positions(tmp_path):
    data = where2place(tmp_path / "w2p", n=3)
    path = data / "point_questions.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:40], lines[2]]) + "\n")
    for k in (0, 1):  # only 02.jpg holds the centre region now: the third question must still use it
        Image.new("L", (640, 480), 0).save(data / "masks" / f"{k:02d}.jpg")
    backend = ScriptedBackend("<point>[[500, 500]]</point>")
    metrics = run(get_benchmark("where2place"), backend, data, tmp_path / "out")
    assert len(backend.asked) == 2  # the damaged line has no question to ask
    assert_left_out(tmp_path / "out", 3, 2, "point_questions.jsonl:2: invalid JSON")
    scores = {json.loads(x)["id"]: json.loads(x)["score"] for x in (tmp_path / "out" / "scores.jsonl").open()}
    assert scores["100"] == 0 and scores["102"] == pytest.approx(1, abs=0.02)
    assert metrics["n_missing_predictions"] == 0


@pytest.mark.parametrize("name", ["pixmo_points", "paco_lvis"])
def test_a_damaged_line_of_vlaser_jsonl_is_left_out(name, tmp_path):
    rows = [{"id": f"q{k}", "image": f"{k}.jpg", "segmentation": [[[0, 0, 100, 0, 100, 100, 0, 100]]],
             "conversations": [{"from": "human", "value": f"<ref>the cup {k}</ref>"},
                               {"from": "gpt", "value": f"<ref>the cup {k}</ref>[[250, 500]]"}]} for k in range(3)]
    data = _vlaser_jsonl(tmp_path / name, rows, name=f"{name}.jsonl")
    path = data / f"{name}.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    backend = ScriptedBackend("[[250, 500]]")
    metrics = run(get_benchmark(name), backend, data, tmp_path / "out")
    assert len(backend.asked) == 2
    assert_left_out(tmp_path / "out", 3, 2, f"{name}.jsonl:2: invalid JSON")
    assert metrics["score"] == 1.0


def test_a_damaged_molmo_masks_cell_is_left_out(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10), (0, 0, 0)).save(tmp_path / "images" / "abc.jpg")
    mask = np.zeros((10, 20), dtype=bool)
    mask[:, :10] = True
    ragged = [[True, False], [True]]  # rows of different lengths: no mask can be made of it
    rows = [{"image_sha256": "abc", "label": f"the left side {k}", "points": [{"x": 25.0, "y": 50.0}],
             "masks": [ragged if k == 1 else mask.tolist()]} for k in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000.parquet")
    run(get_benchmark("pixmo_points", protocol="molmo"), ScriptedBackend('<point x="25" y="50" alt="l">l</point>'),
        tmp_path, tmp_path / "out", prompt="official")
    metrics = assert_left_out(tmp_path / "out", 3, 2, "test-00000.parquet row 1")
    assert metrics["score"] == pytest.approx(1.0)


def test_a_damaged_coco_segmentation_is_left_out(tmp_path):
    from pycocotools import mask as coco_mask

    (tmp_path / "images").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "images" / "000001.jpg")
    handle = np.zeros((100, 200), dtype=np.uint8, order="F")
    handle[:, :100] = 1
    rle = coco_mask.encode(handle)
    rle["counts"] = rle["counts"].decode()
    data = {"images": [{"id": 1, "file_name": "000001.jpg", "width": 200, "height": 100}],
            "categories": [{"id": 9, "name": "mug:handle"}, {"id": 10, "name": "mug:rim"}],
            "annotations": [
                {"id": 101, "image_id": 1, "category_id": 9, "segmentation": rle, "obj_ann_id": 100},
                {"id": 102, "image_id": 1, "category_id": 10, "obj_ann_id": 100,
                 "segmentation": {**rle, "counts": rle["counts"][:3]}}]}  # cut short: its runs do not add up
    (tmp_path / "paco_lvis_v1_test.json").write_text(json.dumps(data))
    run(get_benchmark("paco_lvis"), ScriptedBackend("<point>[[100, 500]]</point>"), tmp_path, tmp_path / "out")
    metrics = assert_left_out(tmp_path / "out", 2, 1, "paco_lvis_v1_test.json: query 1:100:10")
    assert metrics["score"] == 1.0


def test_a_damaged_vlabench_ground_truth_file_is_left_out(tmp_path):
    data = vlabench(tmp_path / "vlm")
    cut(data / "M&T" / "select_fruit" / "example0" / "output" / "operation_sequence.json")
    backend = ScriptedBackend(answer([pick(1), place(2)]))
    metrics = run(get_benchmark("vlabench"), backend, data, tmp_path / "out")
    assert len(backend.asked) == 2  # nothing to score an answer against: not asked
    assert_left_out(tmp_path / "out", 3, 2, "example0/output/operation_sequence.json: not JSON")
    assert set(metrics["by_task"]) == {"Complex/cook_dishes", "M&T/select_fruit"}


def mmsi(root):
    from test_eval import _mmsi

    return _mmsi(root)


@pytest.mark.parametrize("name, build, annotation", [
    ("erqa", erqa, "erqa.tfrecord"), ("mmsi_bench", mmsi, "MMSI_Bench.parquet"),
    ("vsi_bench", vsi_bench, "test-00000-of-00001.parquet"), ("egoplan_bench2", egoplan_bench2, "EgoPlan-Bench2.json"),
])
def test_a_damaged_single_annotation_file_fails_its_benchmark_only(name, build, annotation, tmp_path):
    """Where every item's question and answer sit in one file, a damaged file has no readable item: the
    benchmark fails before anything is asked, naming the file, and the suite goes on."""
    data = tmp_path / "data"
    build(data / name)
    where2place(data / "where2place", n=2)
    cut(data / name / annotation)
    table = run_suite(ScriptedBackend(), data, tmp_path / "out", [name, "where2place"], echo=lambda line: None)
    assert [f["name"] for f in table["failed"]] == [name] and annotation in table["failed"][0]["error"]
    assert [c["name"] for c in table["columns"]] == ["where2place"]


def test_an_item_lost_to_its_image_is_not_an_unparsed_answer(tmp_path):
    from test_eval import TinyImageCheckingBackend

    data = where2place(tmp_path / "w", n=3)
    cut(data / "images" / "1.jpg")
    metrics = run(get_benchmark("where2place"), TinyImageCheckingBackend(), data, tmp_path / "out")
    assert (metrics["n_errors"], metrics["n_unparsed"], metrics["n_scored"]) == (1, 0, 3)
    assert "(0 answers not parsed, 0 unanswered)" in (tmp_path / "out" / "report.md").read_text()
    unparsed = run(get_benchmark("where2place"), TinyImageCheckingBackend("I cannot tell."), data, tmp_path / "o2")
    assert unparsed["n_unparsed"] == 2  # the two answers given, not the lost item


def test_eval_report_names_each_run_once(tmp_path):
    data = where2place(tmp_path / "w", n=2)
    run(get_benchmark("where2place"), ScriptedBackend(), data, tmp_path / "a")
    scored = tmp_path / "b"
    scored.mkdir()
    (scored / "metrics.json").write_text((tmp_path / "a" / "metrics.json").read_text())  # no run.json: eval score
    table = cross_run_table([tmp_path / "a", scored])
    rows = [line.split(" | ")[0] for line in table.splitlines()]
    assert f"| scripted ({tmp_path / 'a'})" in rows and f"| {scored}" in rows
    assert f"{scored} ({scored})" not in table


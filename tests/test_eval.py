"""The evaluation harness and the pointing benchmarks on synthetic data in their official layouts."""

import json

import numpy as np
import pytest
from PIL import Image

from fakes import ChatServer, ScriptedBackend
from media import write_mask
from test_eval_egoplan_bench2 import make_dataset as egoplan_bench2
from test_eval_erqa import make_dataset as erqa
from test_eval_vlabench import make_dataset as vlabench
from test_eval_vsi_bench import make_dataset as vsi_bench
from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, get_benchmark
from vlaser.eval.extract import robopoint_text2pts
from vlaser.eval.runner import read_predictions, run, score


def where2place(root, n=3):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (640, 480), (90, 90, 90 + 40 * i)).save(root / "images" / f"{i}.jpg")
        write_mask(root / "masks" / f"{i:02d}.jpg", (200, 150, 440, 330), (640, 480), "JPEG")  # centre region
        lines.append({"question_id": 100 + i, "image": f"{i}.jpg", "category": "seen" if i else "unseen",
                      "text": f"Find free space {i} on the table. Your answer should be formatted as a list of "
                              "tuples, i.e. [(x1, y1), (x2, y2), ...]."})
    (root / "point_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def point_bench(root):
    rows = [{"image_filename": "a.png", "mask_filename": "a_mask.png", "user_input": "Point to the cup",
             "category": "affordable", "count": 1},
            {"image_filename": "b.png", "mask_filename": "b_mask.png", "user_input": "Point to all apples",
             "category": "counting", "count": 2},
            {"image_filename": "c.png", "user_input": "no mask here", "category": "spatial", "count": 1}]
    (root / "masks").mkdir(parents=True)
    for row in rows:
        folder = root / "images" / row["category"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 80), (10, 10, 10)).save(folder / row["image_filename"])
        if "mask_filename" in row:
            write_mask(root / "masks" / row["mask_filename"], (50, 0, 100, 80), (100, 80), "PNG")  # right half
    (root / "data.json").write_text(json.dumps(rows))
    return root


def refspatial(root):
    for split in ("Location", "Unseen"):
        (root / split / "image").mkdir(parents=True)
        (root / split / "mask").mkdir()
        rows = []
        for i in range(2):
            Image.new("RGB", (200, 100), (0, 0, 0)).save(root / split / "image" / f"{i}.png")
            write_mask(root / split / "mask" / f"{i}.png", (0, 0, 100, 100), (200, 100), "PNG")  # left half
            rows.append({"id": i, "object": "the mug", "prompt": f"Point to the mug {i}.", "step": 1,
                         "suffix": "Your answer should be formatted as a list of tuples.", "category": split,
                         "rgb_path": f"image/{i}.png", "mask_path": f"mask/{i}.png"})
        (root / split / "question.json").write_text(json.dumps(rows))
    return root


def test_robopoint_parser_quirks():
    assert robopoint_text2pts("[(0.5, 0.5)]") == [(320, 240)]  # floats scale by the hard-coded 640x480
    assert robopoint_text2pts("(30, 40)") == [(30, 40)]  # ints are pixels
    assert robopoint_text2pts("(0.5, 1)") == [(320, 480)]  # mixed: both scale, y=1 leaves the image
    assert len(robopoint_text2pts("(0.0, 0.0, 0.01, 0.01)")) == 6 * 4  # a box adds every pixel inside
    assert robopoint_text2pts("(1, 1, 3, 2)", scale_int_boxes=False) == [(1, 1), (2, 1)]


def test_where2place_scores_like_robopoint(tmp_path):
    bench = get_benchmark("where2place")
    items = bench.load(where2place(tmp_path))
    assert [i.id for i in items] == ["100", "101", "102"] and items[0].question == "Find free space 0 on the table."
    item = items[0]
    assert bench.score(item, "<point>[[500, 500]]</point>").value == pytest.approx(1.0, abs=0.02)
    assert bench.score(item, "[(0.5, 0.5), (0.05, 0.05)]").value == pytest.approx(0.5, abs=0.02)
    assert bench.score(item, "(700, 500)").value == 0.0  # outside the image
    empty = bench.score(item, "I cannot tell.")
    assert empty.value == 0.0 and not empty.parsed
    edge = bench.score(item, "(200, 240)").value  # on the JPEG edge: soft credit, officially not binarised
    binarised = get_benchmark("where2place", binarize=True).score(item, "(200, 240)").value
    assert binarised in (0.0, 1.0) and 0 <= edge <= 1
    skipped = bench.score(item, "(0.5, 0.5, 0.4, 0.4)")  # a reversed box makes the official parser raise
    assert skipped.value is None
    assert get_benchmark("where2place", unparsed_as_zero=True).score(item, "(0.5, 0.5, 0.4, 0.4)").value == 0.0


def test_point_bench_first_point_and_counting(tmp_path):
    bench = get_benchmark("point_bench")
    items = {i.id: i for i in bench.load(point_bench(tmp_path))}
    assert set(items) == {"a.png", "b.png"}  # the item without a mask is not part of the benchmark
    a, b = items["a.png"], items["b.png"]
    assert bench.score(a, '[{"point": [75, 40]}, {"point": [10, 10]}]').value == 1.0  # only the first counts
    assert bench.score(a, '```json\n[{"point": [10, 10]}, {"point": [75, 40]}]\n```').value == 0.0
    assert bench.score(a, "<point>[[800, 500]]</point>").value == 1.0  # grid 800 -> x 80 of 100
    assert bench.score(b, "<point>[[800, 500], [900, 100]]</point>").value == 1.0
    assert bench.score(b, "<point>[[800, 500]]</point>").value == 0.0  # wrong count
    assert bench.score(b, "<point>[[800, 500], [100, 100]]</point>").value == 0.0  # one outside
    assert "width=100px, height=80px" in a.official_prompt


def test_refspatial_fraction_in_mask_per_split(tmp_path):
    bench = get_benchmark("refspatial")
    items = bench.load(refspatial(tmp_path))
    assert [i.id for i in items] == ["Location/0", "Location/1", "Unseen/0", "Unseen/1"]
    assert items[0].official_prompt == "Point to the mug 0. Your answer should be formatted as a list of tuples."
    assert bench.score(items[0], "<point>[[100, 500], [900, 500]]</point>").value == 0.5
    assert bench.score(items[0], "[(0.1, 0.5), (0.2, 0.5), (0.9, 0.5)]").value == pytest.approx(2 / 3)


def test_run_writes_outputs_and_resumes(tmp_path):
    data = where2place(tmp_path / "w2p", n=5)
    bench = get_benchmark("where2place")
    full = run(bench, ScriptedBackend(), data, tmp_path / "full", batch_size=2)
    out = tmp_path / "killed"
    backend = ScriptedBackend()
    run(bench, backend, data, out, batch_size=2)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed mid-write
    again = ScriptedBackend()
    resumed = run(bench, again, data, out, batch_size=2)
    assert len(again.asked) == 3  # the torn line and the two after it
    assert resumed["score"] == full["score"] and resumed["n_scored"] == 5
    assert len(read_predictions(out / "predictions.jsonl")) == 5
    for name in ("metrics.json", "report.md", "scores.jsonl", "index.html"):
        assert (out / name).is_file(), name
    assert len(list((out / "pictures").glob("*.png"))) == 5
    assert backend.asked[0].startswith("<image>\nYou are InternVL. Your task is to locate several points")
    with pytest.raises(ValueError, match="different"):
        run(bench, ScriptedBackend(), data, out, prompt="official")


def test_score_reports_unknown_ids_and_missing_items(tmp_path):
    data = point_bench(tmp_path / "pb")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "a.png", "response": '[{"point": [75, 40]}]'}) + "\n"
                     + json.dumps({"id": "zzz.png", "response": "x"}) + "\n")
    assert main(["eval", "score", "--benchmark", "point_bench", "--data", str(data), "--predictions", str(preds),
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["score"] == 1.0 and metrics["n_unknown_ids"] == 1 and metrics["n_missing_predictions"] == 1


def test_missing_files_are_named(tmp_path):
    with pytest.raises(BenchmarkDataError, match="point_questions.jsonl"):
        get_benchmark("where2place").load(tmp_path)
    data = where2place(tmp_path / "w", n=2)
    (data / "images" / "1.jpg").unlink()
    metrics = run(get_benchmark("where2place"), TinyImageCheckingBackend(), data, tmp_path / "o", batch_size=2)
    assert metrics["n_scored"] == 2 and any("1.jpg" in e for e in metrics["errors"])
    with pytest.raises(ValueError, match="did you mean 'where2place'"):
        get_benchmark("where2plac")


class TinyImageCheckingBackend(ScriptedBackend):
    def prepare(self, request, pending=None):
        from vlaser.model.preprocess import load_image

        load_image(request.pictures[0].source)
        return request


def test_eval_run_cli_with_tiny_model_and_report(tiny_original, tmp_path, capsys):
    data = refspatial(tmp_path / "rs")
    out = tmp_path / "run"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "refspatial", "--data", str(data),
                 "--out", str(out), "--batch-size", "3", "--max-new-tokens", "8", "--dtype", "float32"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["Location/0", "Location/1", "Unseen/0", "Unseen/1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_group"]) == {"Location", "Unseen"}
    capsys.readouterr()
    assert main(["eval", "report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "refspatial" in table and "paper: Vlaser-2B" in table and "43.0" in table


@pytest.mark.slow
def test_two_process_eval_equals_one(tiny_original, tmp_path):
    import os
    import subprocess
    import sys

    data = refspatial(tmp_path / "rs")
    args = ["--model", str(tiny_original), "--benchmark", "refspatial", "--data", str(data), "--batch-size", "2",
            "--max-new-tokens", "6", "--dtype", "float32"]
    assert main(["eval", "run", *args, "--out", str(tmp_path / "one")]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vlaser", "eval", "run", *args, "--out", str(tmp_path / "two")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = (tmp_path / "one" / "predictions.jsonl").read_text()
    two = (tmp_path / "two" / "predictions.jsonl").read_text()
    assert one == two and not list((tmp_path / "two").glob("predictions.rank*"))
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert (m1["score"], m1["by_group"]) == (m2["score"], m2["by_group"])


def _vlaser_jsonl(root, rows, name="points.jsonl"):
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        path = root / row["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (200, 100), (0, 0, 0)).save(path)
    (root / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_pixmo_points_vlaser_protocol(tmp_path):
    rows = [{"id": "p1", "image": "a.jpg", "conversations": [
                {"from": "human", "value": "<image>\nPoint to <ref>the cup</ref>"},
                {"from": "gpt", "value": "<ref>the cup</ref><point>[[100, 100], [500, 500]]</point>"},
                {"from": "human", "value": "And <ref>the bowl</ref>"},
                {"from": "gpt", "value": "<ref>the bowl</ref><point>[[900, 900]]</point>"}]},
            {"image": "sub/b.jpg", "conversations": [
                {"from": "human", "value": "<ref>a fork</ref>"},
                {"from": "gpt", "value": "<ref>a fork</ref>[[10, 10]]"}]}]
    data = _vlaser_jsonl(tmp_path / "px", rows)
    bench = get_benchmark("pixmo_points")
    items = bench.load(data)
    assert [i.id for i in items] == ["p1#0", "p1#1", "1"]
    assert bench.prompt(items[0], "vlaser").endswith("Please provide the referring points of the cup.")
    assert bench.prompt(items[0], "vlaser").startswith(" You are InternVL.")
    preds = {"p1#0": "<point>[[110, 110], [300, 300], [505.5, 490]]</point>",  # 2 of 3 within 25
             "p1#1": "nothing",  # no point: one miss
             "1": "[[10, 10]]"}  # its image has a folder: the official keys miss it, so it is skipped
    metrics = score(bench, items, {k: {"id": k, "response": v} for k, v in preds.items()}, tmp_path / "out")
    assert (metrics["correct_points"], metrics["counted_points"], metrics["n_scored"]) == (2, 4, 2)
    assert metrics["score"] == 0.5
    fixed = get_benchmark("pixmo_points", match_by_line=True)
    assert score(fixed, items, {k: {"id": k, "response": v} for k, v in preds.items()},
                 tmp_path / "out2")["score"] == pytest.approx(3 / 5)


def test_paco_lvis_vlaser_protocol(tmp_path):
    square = [[0, 0, 100, 0, 100, 100, 0, 100]]  # left half of a 200x100 image
    rows = [{"id": 7, "image": "c.jpg", "segmentation": [square], "conversations": [
        {"from": "human", "value": "<ref>the handle of the mug</ref>"}, {"from": "gpt", "value": "x"}]}]
    data = _vlaser_jsonl(tmp_path / "paco", rows, name="paco.jsonl")
    bench = get_benchmark("paco_lvis")
    items = bench.load(data)
    assert [i.id for i in items] == ["7"]
    s = bench.score(items[0], "<point>[[100, 500], [900, 500], [400, 999]]</point>")
    assert (s.extra["correct"], s.extra["total"]) == (2, 3) and s.points == [(20, 50), (180, 50), (80, 99)]
    assert bench.score(items[0], "").extra == {"correct": 0, "total": 1}


def test_openai_backend_against_a_local_server(tmp_path):
    """`eval run --api-base` sends images as data URLs and retries a failing server (loopback only)."""
    answer = {"choices": [{"message": {"role": "assistant", "content": "<point>[[500, 500]]</point>"}}]}
    server = ChatServer([(503, {})] + [(200, answer)] * 3)
    try:
        data = where2place(tmp_path / "w", n=3)
        out = tmp_path / "api"
        assert main(["eval", "run", "--api-base", server.url, "--api-model", "vlaser",
                     "--benchmark", "where2place", "--data", str(data), "--out", str(out)]) == 0
    finally:
        server.close()
    seen = server.seen[1:]  # the first request was answered 503 and sent again
    assert len(seen) == 3 and seen[0]["model"] == "vlaser" and seen[0]["temperature"] == 0.0
    from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

    system, user = seen[0]["messages"]
    assert system == {"role": "system", "content": INTERNVL2_5_SYSTEM_MESSAGE}  # vLLM would not add it
    content = user["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[0]["image_url"]["max_dynamic_patch"] == 12  # LMDeploy's per-image field
    assert seen[0]["mm_processor_kwargs"] == {"max_dynamic_patch": 12}  # vLLM's per-request field
    assert seen[0]["max_tokens"] == 1024  # Where2Place's default protocol: eval_example.py's settings
    assert content[1]["text"].startswith("You are InternVL.")
    assert json.loads((out / "metrics.json").read_text())["score"] == pytest.approx(1.0, abs=0.02)
    assert json.loads((out / "run.json").read_text())["settings"]["max_tiles"] == 12


def _image_struct(image):
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_parquet_layouts_give_the_same_items_and_scores(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = where2place(tmp_path / "robopoint", n=2)
    lines = [json.loads(x) for x in (folder / "point_questions.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist([
        {"question_id": x["question_id"], "question": x["text"], "question_type": x["category"],
         "image": _image_struct(Image.open(folder / "images" / x["image"])),
         "mask": _image_struct(Image.open(folder / "masks" / f"{i:02d}.jpg"))} for i, x in enumerate(lines)])
    (tmp_path / "flageval" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "flageval" / "data" / "test-00000-of-00001.parquet")
    bench = get_benchmark("where2place")
    a, b = bench.load(folder), bench.load(tmp_path / "flageval")
    assert [i.id for i in a] == [i.id for i in b] and [i.question for i in a] == [i.question for i in b]
    answer = "[(0.5, 0.5), (0.32, 0.32)]"
    assert [bench.score(i, answer).value for i in a] == pytest.approx([bench.score(i, answer).value for i in b])

    rs = refspatial(tmp_path / "rs")
    rows = json.loads((rs / "Location" / "question.json").read_text())
    pq.write_table(pa.Table.from_pylist([
        {**{k: r[k] for k in ("id", "object", "prompt", "suffix", "step")},
         "image": _image_struct(Image.open(rs / "Location" / r["rgb_path"])),
         "mask": _image_struct(Image.open(rs / "Location" / r["mask_path"]))} for r in rows]),
        tmp_path / "rs_parquet.parquet")
    (tmp_path / "rsp").mkdir()
    (tmp_path / "rs_parquet.parquet").rename(tmp_path / "rsp" / "location-00000.parquet")
    items = get_benchmark("refspatial").load(tmp_path / "rsp")
    assert [i.id for i in items] == ["Location/0", "Location/1"]
    assert get_benchmark("refspatial").score(items[0], "<point>[[100, 500], [900, 500]]</point>").value == 0.5


def test_molmo_parser_and_gate():
    from vlaser.eval.molmo import extract_points, is_valid_format, pointing_scores

    assert extract_points('<point x="50.0" y="25.0" alt="cup">cup</point>', 200, 100) == [(100.0, 25.0)]
    assert extract_points('<points x1="10" y1="10" x2="150" y2="20">a</points>', 100, 100) == [(10.0, 10.0)]
    assert extract_points("p=500,250", 200, 100) == [(100.0, 25.0)]
    assert is_valid_format('<point x="5" y="5" alt="a">a</point>') and is_valid_format("(1, 2)\n(3, 4)")
    assert not is_valid_format('Sure! <point x="5" y="5" alt="a">a</point>')
    mask = np.zeros((10, 10), dtype=bool)
    mask[:5, :5] = True
    assert pointing_scores([], [], [], True)["f1"] == 1.0 and pointing_scores([(1, 1)], [], [], True)["f1"] == 0.0
    s = pointing_scores([(1, 1), (8, 8)], [(2, 2)], [mask], True)
    assert (s["precision"], s["recall"]) == (0.5, 1.0) and s["f1"] == pytest.approx(2 / 3)
    assert pointing_scores([(1, 1)], [(2, 2)], [mask], False)["f1"] == 0.0


def test_pixmo_points_molmo_protocol_on_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10), (0, 0, 0)).save(tmp_path / "images" / "abc123.jpg")
    mask = np.zeros((10, 20), dtype=bool)
    mask[:, :10] = True
    rows = [{"image_url": "http://x/a.jpg", "image_sha256": "abc123", "label": "the left side",
             "points": [{"x": 25.0, "y": 50.0}], "masks": [mask.tolist()]},
            {"image_url": "http://x/a.jpg", "image_sha256": "abc123", "label": "a dragon", "points": [],
             "masks": []}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000.parquet")
    bench = get_benchmark("pixmo_points", protocol="molmo")
    items = bench.load(tmp_path)
    assert [i.id for i in items] == ["0", "1"]
    assert bench.prompt(items[0], "official").startswith("Point to the left side")
    one = pytest.approx(1.0)  # Molmo's F1 adds 1e-10 to the denominator
    assert bench.score(items[0], '<point x="25.0" y="50.0" alt="l">l</point>').value == one
    assert bench.score(items[0], "<point>[[250, 500]]</point>").value == one  # Vlaser answers, grid -> pixels
    assert bench.score(items[0], "Here: <point>[[250, 500]]</point>").value == 0.0  # fails the format gate
    assert bench.score(items[1], "There are none.").value == 1.0  # empty ground truth, no points
    assert bench.score(items[1], "<point>[[250, 500]]</point>").value == 0.0
    with pytest.raises(BenchmarkDataError, match="protocol molmo"):
        get_benchmark("pixmo_points").load(tmp_path)


def test_paco_lvis_coco_annotations_generate_part_queries(tmp_path):
    from pycocotools import mask as coco_mask

    (tmp_path / "images").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "images" / "000001.jpg")
    handle = np.zeros((100, 200), dtype=np.uint8, order="F")
    handle[:, :100] = 1
    rle = coco_mask.encode(handle)
    rle["counts"] = rle["counts"].decode()
    data = {"images": [{"id": 1, "file_name": "000001.jpg", "width": 200, "height": 100}],
            "categories": [{"id": 5, "name": "mug"}, {"id": 9, "name": "mug:handle"}, {"id": 10, "name": "mug:rim"}],
            "annotations": [
                {"id": 100, "image_id": 1, "category_id": 5, "segmentation": rle, "obj_ann_id": None},
                {"id": 101, "image_id": 1, "category_id": 9, "segmentation": rle, "obj_ann_id": 100},
                {"id": 102, "image_id": 1, "category_id": 10, "obj_ann_id": 100,
                 "segmentation": [[150, 0, 199, 0, 199, 99, 150, 99]]}]}
    (tmp_path / "paco_lvis_v1_test.json").write_text(json.dumps(data))
    bench = get_benchmark("paco_lvis")
    items = bench.load(tmp_path)
    assert [(i.id, i.question) for i in items] == [("1:100:9", "the handle of the mug"),
                                                    ("1:100:10", "the rim of the mug")]
    s = bench.score(items[0], "<point>[[100, 500], [900, 500]]</point>")
    assert (s.extra["correct"], s.extra["total"]) == (1, 2)
    assert bench.score(items[1], "<point>[[900, 500]]</point>").extra["correct"] == 1  # polygon part
    assert len(get_benchmark("paco_lvis", max_queries=1).load(tmp_path)) == 1


@pytest.mark.slow
def test_sigkill_midway_then_rerun_asks_nothing_twice(tiny_original, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = where2place(tmp_path / "w", n=24)
    args = [sys.executable, "-m", "vlaser", "eval", "run", "--model", str(tiny_original), "--benchmark",
            "where2place", "--data", str(data), "--batch-size", "1", "--max-new-tokens", "40", "--dtype", "float32",
            "--pictures", "0"]
    assert main(args[3:] + ["--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    pred = out / "predictions.jsonl"
    while time.time() < deadline and (not pred.is_file() or pred.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    answered = pred.read_text().count("\n")
    assert 3 <= answered < 24, "the run must be killed midway"
    assert main(args[3:] + ["--out", str(out)]) == 0
    ids = [json.loads(line)["id"] for line in pred.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 24
    full, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "killed"))
    assert (resumed["score"], resumed["n_scored"]) == (full["score"], full["n_scored"])
    assert sorted((tmp_path / "full" / "predictions.jsonl").read_text().splitlines()) == sorted(
        pred.read_text().splitlines())


def _pixmo_jsonl(root):
    rows = [{"id": "q", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<ref>the cup</ref>"}, {"from": "gpt", "value": "<ref>the cup</ref>[[500, 500]]"}]}]
    return _vlaser_jsonl(root, rows)


def _paco_jsonl(root):
    rows = [{"id": 3, "image": "c.jpg", "segmentation": [[[0, 0, 100, 0, 100, 100, 0, 100]]],
             "conversations": [{"from": "human", "value": "<ref>the rim of the bowl</ref>"}]}]
    return _vlaser_jsonl(root, rows)


def _mmsi(root):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def jpeg(color):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
        return buf.getvalue()

    root.mkdir(parents=True)
    rows = [{"id": i, "images": [jpeg((200, 0, 0)), jpeg((0, 0, 200))], "question_type": "Positional Relationship",
             "question": f"Which image is red?\nOptions: A: the first, B: the second, C: both, D: neither {i}",
             "answer": "A", "thought": ""} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), root / "MMSI_Bench.parquet")
    return root


BUILDERS = {"where2place": lambda p: where2place(p, n=2), "point_bench": point_bench, "refspatial": refspatial,
            "pixmo_points": _pixmo_jsonl, "paco_lvis": _paco_jsonl, "mmsi_bench": _mmsi,
            "egoplan_bench2": egoplan_bench2, "vsi_bench": vsi_bench, "vlabench": vlabench,
            "erqa": erqa}
TRICKY = ["", "The free space is to the left of the cup, near the edge of the table.", "<point>[[5000, -3]]</point>",
          "<point>[[1, 2]</point>", "[(0.5, 1)]", "<point>[[500.5, 400], [100, 900], [3, 3]]</point>",
          '[{"point": [1, 2]}', "(12, 34, 56)", "<point>\n[ [ 10 , 20 ] ,\n[30,40] ]\n</point>"]


def test_every_registered_benchmark_has_a_fixture():
    from vlaser.eval.benchmark import REGISTRY

    assert set(BUILDERS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_tricky_responses_score_within_bounds(name, tmp_path):
    bench = get_benchmark(name)
    items = bench.load(BUILDERS[name](tmp_path / name))
    for response in TRICKY:
        s = bench.score(items[0], response)
        assert s.value is None or 0.0 <= s.value <= 1.0, (name, response, s)
    assert not bench.score(items[0], "").parsed


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_eval_run_end_to_end_with_the_tiny_model(name, tiny_original, tmp_path):
    data = BUILDERS[name](tmp_path / name)
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", name, "--data", str(data), "--out",
                 str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    answered = len((out / "predictions.jsonl").read_text().splitlines())
    assert metrics["n_items"] == answered == min(3, len(get_benchmark(name).load(data)))
    assert 0.0 <= metrics["score"] <= 1.0 and (out / "report.md").is_file()
    if get_benchmark(name).pointing:
        assert len(list((out / "pictures").glob("*.png"))) == answered and (out / "index.html").is_file()


def test_mmsi_extraction_and_scoring(tmp_path):
    from vlaser.eval.benchmarks.mmsi_bench import extract_choice

    assert extract_choice("``B``") == "B" and extract_choice("The answer is `C`.") == "C"
    assert extract_choice("A bike is on the left") is None  # a letter followed by a word is not a choice
    assert extract_choice("(D) neither") == "D" and extract_choice("B.") == "B" and extract_choice("e") is None
    bench = get_benchmark("mmsi_bench")
    items = bench.load(_mmsi(tmp_path / "m"))
    assert [i.id for i in items] == ["0", "1", "2"] and len(items[0].images) == 2
    assert bench.prompt(items[0], "vlaser").endswith("Enclose the option's letter within ``.")
    assert bench.score(items[0], "`A`").value == 1.0 and bench.score(items[0], "B").value == 0.0
    assert not bench.score(items[0], "I don't know").parsed


def test_paper_table_rows_average_to_the_published_avg():
    """A typo in the transcribed Table 1 would move a row's mean off the paper's Avg column."""
    from vlaser.eval.report import PAPER_COLUMNS, PAPER_TABLE_1

    published_avg = {"GPT-4o-20241120": 34.2, "Claude-3.7-Sonnet": 33.6, "Gemini-2.5-Pro": 44.4, "ChatVLA-2B": 9.1,
                     "InternVL3-2B": 15.2, "Qwen2.5VL-3B": 31.6, "Embodied-R1-3B": 32.5, "RoboBrain2.0-3B": 35.3,
                     "Vlaser-2B": 45.3, "Magma-8B": 14.6, "Cosmos-Reason1-7B": 26.2, "VeBrain-7B": 28.8,
                     "InternVL3-8B": 22.3, "Qwen2.5VL-7B": 35.7, "Embodied-R1-7B": 38.9, "RoboBrain2.0-7B": 37.0,
                     "Vlaser-8B": 51.3}
    assert set(PAPER_TABLE_1) == set(published_avg) and len(PAPER_COLUMNS) == 12
    for model, avg in published_avg.items():
        assert sum(PAPER_TABLE_1[model].values()) / 12 == pytest.approx(avg, abs=0.06), model

"""VSI-Bench: official prompts, first-token scoring, MRA, the 8-task aggregation, configs and frame sampling."""

import json
from pathlib import Path

import numpy as np
import pytest

from media import frame_index, write_counter_video
from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, Item, Score, get_benchmark
from vlaser.eval.benchmarks.vsi_bench import THRESHOLDS, fuzzy_matching

REL_HARD = ("If I am standing by the stove and facing the sofa, is the tv to my front-left, front-right, back-left, "
            "or back-right?\nThe directions refer to the quadrants of a Cartesian plane (if I am standing at the "
            "origin and facing along the positive y-axis).")
ROWS = [
    {"id": 0, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_counting",
     "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "3", "pruned": False},
    {"id": 1, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_rel_direction_hard",
     "question": REL_HARD, "options": ["A. front-left", "B. back-right", "C. back-left", "D. front-right"],
     "ground_truth": "B", "pruned": True},
    {"id": 2, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "room_size_estimation",
     "question": "What is the size of this room (in square meters)?", "options": None, "ground_truth": "2.3",
     "pruned": False},
    {"id": 3, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "route_planning",
     "question": "How do I get from the door to the bed?", "options": ["A. left", "B. right", "C. back"],
     "ground_truth": "C", "pruned": False},
    {"id": 4, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_abs_distance",
     "question": "How far is the sofa from the tv (in meters)?", "options": None, "ground_truth": "10",
     "pruned": True},
]
CLIP_FRAMES = {"arkitscenes/41069025.mp4": 50, "scannet/scene0011_00.mp4": 40}


def _write(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def make_dataset(root: Path) -> Path:
    """The HF layout: full ``test-*.parquet`` (with ``pruned``), ``test_debiased.parquet`` and counter clips."""
    _write(root / "test-00000-of-00001.parquet", ROWS)
    _write(root / "test_debiased.parquet", [r for r in ROWS if not r["pruned"]])
    for name, n in CLIP_FRAMES.items():
        write_counter_video(root / name, n, fps=10)
    return root


def _item(qtype: str, truth, options=None) -> Item:
    return Item(id="x", question="q", official_prompt="", images=[], group=qtype,
                meta={"question_type": qtype, "ground_truth": truth, "options": options})


def test_prompts_are_the_official_text(tmp_path):
    items = get_benchmark("vsi_bench").load(make_dataset(tmp_path))
    bench = get_benchmark("vsi_bench")
    assert bench.prompt(items[0], "vlaser") == bench.prompt(items[0], "official") == (
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase.")
    assert bench.prompt(items[1], "official") == (
        "These are frames of a video.\n" + REL_HARD + "\nOptions:\nA. front-left\nB. back-right\nC. back-left\n"
        "D. front-right\nAnswer with the option's letter from the given choices directly.")
    assert (bench.settings.max_new_tokens, bench.settings.frames, bench.pointing) == (16, 8, False)
    assert items[1].video == tmp_path / "scannet" / "scene0011_00.mp4" and items[1].images == []
    other = get_benchmark("vsi_bench", videos=str(tmp_path / "elsewhere")).load(tmp_path)
    assert other[0].video == tmp_path / "elsewhere" / "arkitscenes" / "41069025.mp4"


def test_first_token_and_exact_match():
    bench = get_benchmark("vsi_bench")
    item = _item("route_planning", "B", ["A. left", "B. right", "C. back"])
    assert fuzzy_matching("B.") == "B" and fuzzy_matching("3 chairs") == "3" and fuzzy_matching(" B") == ""
    got = {r: (bench.score(item, r).value, bench.score(item, r).parsed)
           for r in ("B", "B.", "b", "B) left", "(B)", " B", "B\nright", "The answer is B", "C")}
    assert got == {"B": (1.0, True), "B.": (1.0, True), "b": (1.0, True), "B) left": (0.0, False),
                   "(B)": (0.0, False), " B": (0.0, False), "B\nright": (0.0, False),
                   "The answer is B": (0.0, False), "C": (0.0, True)}


def test_mean_relative_accuracy_by_hand():
    bench = get_benchmark("vsi_bench")
    assert np.allclose(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], rtol=0, atol=1e-15)
    official_count = int((0.95 - 0.5) / 0.05 + 2)  # 10.999999999999998 -> 10: right by float error
    assert np.array_equal(THRESHOLDS, np.linspace(0.5, 0.95, official_count))
    cases = [  # (response, ground truth, score): thresholds with |p - g| / g <= 1 - theta, out of 10
        ("3 chairs", 3.0, 1.0), ("3.", 3.0, 1.0), ("There are 3", 3.0, 0.0), ("three", 3.0, 0.0),
        ("4", 3.0, 0.4),  # error 1/3: 0.5, 0.55, 0.6, 0.65
        ("2", 2.3, 0.8),  # error 0.13: up to 0.85
        ("5.2", 5.0, 1.0), ("1", 3.0, 0.0), ("0", 5.0, 0.0), ("9", 10.0, 0.9), ("13", 10.0, 0.5),
        ("8", 10.0, 0.6),  # error 0.2 fails theta 0.8 in floats: 1 - 0.8 = 0.19999999999999996
        ("7.5", 10.0, 0.6),  # error 0.25 passes theta 0.75: 1 - 0.75 == 0.25
        ("nan", 10.0, 0.0), ("inf", 10.0, 0.0), ("1e1", 10.0, 1.0), ("", 10.0, 0.0),
    ]
    for response, truth, expected in cases:
        assert bench.score(_item("object_counting", truth), response).value == pytest.approx(expected), response
    assert not bench.score(_item("object_counting", 3.0), "There are 3").parsed
    assert bench.score(_item("object_counting", 3.0), "3 chairs").parsed


def test_aggregation_is_the_unweighted_mean_of_eight_tasks():
    values = {"object_rel_direction_easy": [1, 0], "object_rel_direction_medium": [1],
              "object_rel_direction_hard": [0, 0, 1, 1], "object_rel_distance": [1], "route_planning": [0],
              "obj_appearance_order": [1, 1, 0, 0], "object_counting": [1.0, 0.4], "object_abs_distance": [0.8],
              "object_size_estimation": [0.0], "room_size_estimation": [0.6, 0.2]}
    items, scores = [], []
    for qtype, vs in values.items():
        for v in vs:
            items.append(_item(qtype, "A"))
            scores.append(Score(float(v), parsed=True))
    metrics = get_benchmark("vsi_bench").aggregate(items, scores)
    # direction (0.5 + 1 + 0.5) / 3; overall (2/3 + 1 + 0 + 0.5 + 0.7 + 0.8 + 0 + 0.4) / 8 = 0.508333...
    assert metrics["vsi"] == pytest.approx({
        "object_counting_MRA:.5:.95:.05": 70.0, "object_abs_distance_MRA:.5:.95:.05": 80.0,
        "object_size_estimation_MRA:.5:.95:.05": 0.0, "room_size_estimation_MRA:.5:.95:.05": 40.0,
        "object_rel_distance_accuracy": 100.0, "object_rel_direction_accuracy": 200 / 3,
        "route_planning_accuracy": 0.0, "obj_appearance_order_accuracy": 50.0, "overall": 50.833333333})
    assert metrics["score"] == pytest.approx(0.50833333333) and metrics["vsi_missing_types"] == []
    assert (metrics["n"], metrics["n_scored"], metrics["by_group"]["object_rel_direction_hard"]["n"]) == (19, 19, 4)


def test_partial_run_averages_what_it_has(tmp_path):
    bench = get_benchmark("vsi_bench")
    items = bench.load(make_dataset(tmp_path))[:2]
    metrics = bench.aggregate(items, [Score(0.4, True), Score(1.0, True)])
    assert metrics["vsi"] == pytest.approx({"object_counting_MRA:.5:.95:.05": 40.0,
                                            "object_rel_direction_accuracy": 100.0, "overall": 70.0})
    assert "object_rel_direction_easy" in metrics["vsi_missing_types"] and len(metrics["vsi_missing_types"]) == 8


def test_full_and_debiased_configs(tmp_path):
    data = make_dataset(tmp_path)
    ids = {c: [i.id for i in get_benchmark("vsi_bench", config=c).load(data)] for c in ("full", "debiased")}
    assert ids == {"full": ["0", "1", "2", "3", "4"], "debiased": ["0", "2", "3"]}
    (data / "test_debiased.parquet").unlink()  # then the full file's pruned column selects the subsets
    assert [i.id for i in get_benchmark("vsi_bench", config="debiased").load(data)] == ["0", "2", "3"]
    assert [i.id for i in get_benchmark("vsi_bench", config="pruned").load(data)] == ["1", "4"]
    with pytest.raises(ValueError, match="config must be one of"):
        get_benchmark("vsi_bench", config="easy")
    old = tmp_path / "old"
    _write(old / "test-00000-of-00001.parquet", [{k: v for k, v in r.items() if k != "pruned"} for r in ROWS])
    with pytest.raises(BenchmarkDataError, match="no boolean 'pruned' column"):
        get_benchmark("vsi_bench", config="debiased").load(old)
    with pytest.raises(BenchmarkDataError, match=r"no test-\*.parquet"):
        get_benchmark("vsi_bench").load(tmp_path / "empty")


@pytest.mark.parametrize("change, message", [
    ({"question_type": "object_height"}, "unknown question_type 'object_height'"),
    ({"ground_truth": "0"}, "numerical ground_truth must be a finite positive number, got '0'"),
    ({"ground_truth": "-2"}, "numerical ground_truth must be a finite positive number, got '-2'"),
    ({"ground_truth": "three"}, "numerical ground_truth must be a finite positive number, got 'three'"),
    ({"question_type": "route_planning"}, "multiple-choice item without options"),
    ({"question_type": "route_planning", "options": ["A. left", "B. right"]}, "ground_truth '3' is not one of"),
])
def test_bad_rows_are_named(tmp_path, change, message):
    rows = [dict(ROWS[1]), {**ROWS[0], **change}]
    _write(tmp_path / "test-00000-of-00001.parquet", rows)
    with pytest.raises(BenchmarkDataError, match="test-00000-of-00001.parquet row 1: " + message):
        get_benchmark("vsi_bench").load(tmp_path)


def test_repeated_id_is_an_error(tmp_path):
    _write(tmp_path / "test-00000-of-00001.parquet", [ROWS[0], ROWS[0]])
    with pytest.raises(BenchmarkDataError, match="row 1: id 0 repeats"):
        get_benchmark("vsi_bench").load(tmp_path)


@pytest.mark.parametrize("n_frames, expected", [
    (8, [3, 9, 15, 21, 27, 34, 40, 46]),  # segment 49/8; the fifth centre rounds 24.5 down (numpy's half-even)
    (32, [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24, 26, 28, 29, 31, 32, 34, 35, 37, 38, 40, 41,
          43, 44, 46, 47]),  # segment 49/32 = 1.53125: centre k is int(0.765625 + round(1.53125 k))
])
def test_frames_read_back_from_the_pixels(tmp_path, n_frames, expected):
    from vlaser.model.preprocess import decode_frames

    bench = get_benchmark("vsi_bench")
    item = bench.load(make_dataset(tmp_path))[0]  # the 50-frame arkitscenes clip
    frames = decode_frames(item.video, lambda total: bench.frame_indices(item, total, n_frames))
    assert [frame_index(f) for f in frames] == expected


def test_frame_lines_are_the_internvl2_wrappers(tmp_path):
    """The official wrapper writes ``Frame1: <image>`` lines (no hyphen), one tile per frame."""
    from PIL import Image

    from vlaser.eval.runner import build_request
    from vlaser.inference.prepare import place_tags

    bench = get_benchmark("vsi_bench")
    item = bench.load(make_dataset(tmp_path))[0]
    request = build_request(bench, item, "official", 6, [Image.new("RGB", (8, 8))] * 2)
    assert place_tags(request) == "Frame1: <image>\nFrame2: <image>\n" + item.official_prompt
    assert [(p.max_tiles, p.frame) for p in request.pictures] == [(1, True), (1, True)]


def test_score_without_videos(tmp_path):
    data = make_dataset(tmp_path / "data")
    for name in CLIP_FRAMES:
        (data / name).unlink()
    preds = tmp_path / "preds.jsonl"
    answers = {"0": "3 chairs", "1": "B.", "2": "2", "3": "A", "4": "8", "99": "C"}
    preds.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in answers.items()))
    assert main(["eval", "score", "--benchmark", "vsi_bench", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--predictions", str(preds)]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    # counting 1.0, room size 0.8, direction 1.0, route 0.0, distance 0.6: overall (1 + .8 + 1 + 0 + .6) / 5
    assert metrics["score"] == pytest.approx(0.68) and metrics["n_unknown_ids"] == 1
    assert metrics["vsi"]["object_abs_distance_MRA:.5:.95:.05"] == pytest.approx(60.0)
    assert main(["eval", "score", "--benchmark", "vsi_bench", "--data", str(data), "--out", str(tmp_path / "d"),
                 "--predictions", str(preds), "--option", "config=debiased"]) == 0
    debiased = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert debiased["score"] == pytest.approx((1.0 + 0.8 + 0.0) / 3) and debiased["n_unknown_ids"] == 3


def test_eval_run_with_the_tiny_model(tiny_original, tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "vsi_bench", "--data", str(data),
                 "--out", str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n_items"] == len(records) == 3 and not any(r.get("error") for r in records)
    assert all(r["prompt"].count("<image>") == 8 and r["prompt"].startswith("Frame1: <image>\nFrame2: ")
               for r in records)
    assert 0.0 <= metrics["score"] <= 1.0 and json.loads((out / "run.json").read_text())["settings"]["frames"] == 8
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "vsi_bench", "--data", str(data),
                 "--out", str(tmp_path / "f32"), "--max-new-tokens", "4", "--dtype", "float32", "--limit", "1",
                 "--frames", "32", "--option", "config=debiased"]) == 0
    record = json.loads((tmp_path / "f32" / "predictions.jsonl").read_text())
    assert record["id"] == "0" and record["prompt"].count("<image>") == 32 and not record.get("error")

"""Pointing benchmarks' fidelity: pinned prompts, PointArena's steerable reference points, Vlaser's Pixmo ground-truth
keying, annotation discovery and Molmo's local image column, on synthetic data in the official layouts.

Every expected prompt below is written out by hand from the official code (PointArena ``model_evaluator.py``
``call_claude``; Vlaser ``evaluate_point_pixmo.py``/``evaluate_point_paco.py``; RoboPoint/RoboRefer question files;
Molmo's pointing template), not built with the module's constants.
"""

import io
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from fakes import ScriptedBackend
from media import write_mask
from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, get_benchmark
from vlaser.eval.runner import run, score

#: the Vlaser README's point-grounding prefix, typed out
PREFIX = ('You are InternVL. Your task is to locate several points in the given image according to the task '
          'descriptions. Your answer should be formatted as "<point>[[x1, y1], [x2, y2],...]</point>". The point '
          'coordinates are normalized to integers between 0 and 1000. Return the answer in the point format directly.')
PAD = "            "  # the 12 spaces of source indentation inside PointArena's triple-quoted prompt


def _image(path, size, color=(20, 20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=None if path.suffix else "PNG")  # Molmo's files have no suffix


# ---- Point-Bench -------------------------------------------------------------------------------------------------

def make_dataset(root, metadata=True):
    """Point-Bench in PointArena's layout: data.json, images/<category>/, masks/, pixmo_metadata.csv; 4 items
    (one steerable with a reference point, one steerable without a row) and one item without a mask."""
    rows = [{"image_filename": "cup.png", "mask_filename": "cup_mask.png", "user_input": "Point to the cup",
             "category": "affordable", "count": 1},
            {"image_filename": "apples.png", "mask_filename": "apples_mask.png", "user_input": "Point to all apples",
             "category": "counting", "count": 2},
            {"image_filename": "steer.png", "mask_filename": "steer_mask.png",
             "user_input": "Point to the object left of the marked one.", "category": "steerable", "count": 1},
            {"image_filename": "lost.png", "mask_filename": "lost_mask.png", "user_input": "Point to the lid",
             "category": "steerable", "count": 1},
            {"image_filename": "nomask.png", "user_input": "not scored", "category": "spatial", "count": 1}]
    for row in rows:
        _image(root / "images" / row["category"] / row["image_filename"], (100, 80))
        if "mask_filename" in row:
            write_mask(root / "masks" / row["mask_filename"], (50, 0, 100, 80), (100, 80))  # right half
    (root / "data.json").write_text(json.dumps(rows))
    if metadata:
        (root / "pixmo_metadata.csv").write_text('image_filename,points\n'
                                                 'steer.png,"[{""x"": 25.5, ""y"": 50}]"\n'
                                                 'apples.png,[]\n'
                                                 'other.png,"[{""x"": 1, ""y"": 2}]"\n')
    return root


POINT_BENCH_CUP = ("You are a helpful assistant that can identify objects in images and provide their coordinates.\n"
                   "\n"
                   "\n"
                   f"{PAD}Point to the cup.\n"
                   f"{PAD}The image dimensions are width=100px, height=80px.\n"
                   f'{PAD}The answer should follow the json format: [{{"point": <point>}}]. \n'
                   f"{PAD}IMPORTANT: Return EXACTLY ONE POINT. The point MUST be in [x, y] format where x is the "
                   "horizontal position (left-to-right) and y is the vertical position (top-to-bottom) in PIXEL "
                   "COORDINATES (not normalized).\n"
                   f"{PAD}Example: For a point in the center of the image, return [width/2, height/2].\n"
                   f"{PAD}")


def test_point_bench_official_prompts_pinned(tmp_path):
    bench = get_benchmark("point_bench", protocol="official")
    items = {i.id: i for i in bench.load(make_dataset(tmp_path))}
    assert list(items) == ["cup.png", "apples.png", "steer.png", "lost.png"]
    assert bench.prompt(items["cup.png"], "official") == POINT_BENCH_CUP == items["cup.png"].official_prompt
    assert bench.prompt(items["apples.png"], "official") == (
        "You are a helpful assistant that can identify objects in images and provide their coordinates.\n\n\n"
        f"{PAD}Point to all apples.\n"
        f"{PAD}The image dimensions are width=100px, height=80px.\n"
        f'{PAD}The answer should follow the json format: [{{"point": <point>}}, ...]. \n'
        f"{PAD}IMPORTANT: The points MUST be in [x, y] format where x is the horizontal position (left-to-right) "
        "and y is the vertical position (top-to-bottom) in PIXEL COORDINATES (not normalized).\n"
        f"{PAD}Example: For a point in the center of the image, return [width/2, height/2].\n{PAD}")
    # steerable: the query keeps its own full stop (PointArena appends another); 25.5% of 100 px, 50% of 80 px
    assert bench.prompt(items["steer.png"], "official") == (
        "You are a helpful assistant that can identify objects in images and provide their coordinates.\n\n\n"
        f"{PAD}Point to the object left of the marked one..\n"
        f"{PAD}The image dimensions are width=100px, height=80px.\n"
        "The image contains an existing original point at pixel coordinates: [25.5, 40.0].\n"
        "The query refers to this existing point.\n"
        f'{PAD}The answer should follow the json format: [{{"point": <point>}}]. \n'
        f"{PAD}IMPORTANT: Return EXACTLY ONE POINT. The point MUST be in [x, y] format where x is the horizontal "
        "position (left-to-right) and y is the vertical position (top-to-bottom) in PIXEL COORDINATES (not "
        "normalized).\n"
        f"{PAD}Example: For a point in the center of the image, return [width/2, height/2].\n{PAD}")
    assert "existing original point" not in bench.prompt(items["lost.png"], "official")  # no row: none, officially
    assert bench.prompt(items["cup.png"], "vlaser") == f"{PREFIX} Point to the cup"


def test_point_bench_reference_points_use_the_real_image_size(tmp_path):
    data = make_dataset(tmp_path)
    _image(data / "images" / "steerable" / "steer.png", (333, 201))  # 12.3% / 45.6% -> 40.959 / 91.656
    (data / "pixmo_metadata.csv").write_text('image_filename,points\n'
                                             'steer.png,"[{""x"": 12.3, ""y"": 45.6}, {""x"": 99, ""y"": 1}]"\n')
    bench = get_benchmark("point_bench", protocol="official")
    steer = {i.id: i for i in bench.load(data)}["steer.png"]
    text = bench.prompt(steer, "official")
    assert "width=333px, height=201px.\nThe image contains an existing original point at pixel coordinates: " \
           "[41.0, 91.7], [329.7, 2.0].\nThe query refers to this existing point.\n" in text


def test_point_bench_missing_metadata_is_warned_and_counted(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", metadata=False)
    bench = get_benchmark("point_bench", protocol="official")
    with caplog.at_level(logging.WARNING):
        items = bench.load(data)
    assert "2 steerable item(s)" in caplog.text and "pixmo_metadata.csv" in caplog.text and "absent" in caplog.text
    assert all("existing original point" not in bench.prompt(i, "official") for i in items)
    preds = {i.id: {"id": i.id, "response": '[{"point": [75, 40]}]'} for i in items}
    metrics = score(bench, items, preds, tmp_path / "out", pictures=0)
    assert (metrics["n_steerable"], metrics["n_steerable_with_reference_point"]) == (2, 0)
    assert metrics["pixmo_metadata_csv"] is False
    assert metrics["score"] == 0.75  # the counting item wants two points

    with_csv = get_benchmark("point_bench").load(make_dataset(tmp_path / "e"))
    metrics = score(bench, with_csv, preds, tmp_path / "out2", pictures=0)
    assert (metrics["n_steerable"], metrics["n_steerable_with_reference_point"]) == (2, 1)
    assert metrics["pixmo_metadata_csv"] is True


@pytest.mark.parametrize("csv_text, message", [
    ('image_filename,points\nsteer.png,"[{""x"": 1}]"\n', r"pixmo_metadata.csv:2: .*KeyError\('y'\)"),
    ('image_filename,points\nok.png,[]\nsteer.png,not json\n', r"pixmo_metadata.csv:3: points 'not json'"),
    ('image_filename,points\nsteer.png,"[{""x"": ""1"", ""y"": 2}]"\n', r"pixmo_metadata.csv:2: .*numbers"),
    ("name,points\nsteer.png,[]\n", r"pixmo_metadata.csv: no column\(s\) \['image_filename'\]"),
])
def test_point_bench_malformed_metadata_is_named(tmp_path, csv_text, message):
    data = make_dataset(tmp_path)
    (data / "pixmo_metadata.csv").write_text(csv_text)
    with pytest.raises(BenchmarkDataError, match=message):
        get_benchmark("point_bench").load(data)


def test_point_bench_scoring_and_official_run_without_media(tmp_path):
    data = make_dataset(tmp_path / "pb")
    bench = get_benchmark("point_bench", protocol="official")
    items = {i.id: i for i in bench.load(data)}
    cup, apples = items["cup.png"], items["apples.png"]
    assert bench.score(cup, '[{"point": [75, 40]}, {"point": [10, 10]}]').value == 1.0  # the first point only
    assert bench.score(cup, '[{"point": [49.9, 40]}]').value == 0.0  # int(49.9) = 49, left of the mask
    assert bench.score(cup, '[{"point": [100, 40]}]').value == 0.0  # x = width is outside the image
    assert bench.score(apples, '[{"point": [60, 10]}, {"point": [90, 70]}]').value == 1.0
    assert bench.score(apples, '[{"point": [60, 10]}, {"point": [9, 70]}]').value == 0.0  # one outside
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": k, "response": '[{"point": [80, 40]}]'}) + "\n"
                             for k in ("cup.png", "steer.png", "lost.png", "ghost.png")))
    shutil.rmtree(data / "images")  # scoring needs the annotations and masks only
    assert main(["eval", "score", "--benchmark", "point_bench", "--protocol", "official", "--data", str(data),
                 "--predictions", str(preds), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["score"], metrics["n"], metrics["n_unknown_ids"]) == (1.0, 3, 1)
    assert metrics["protocol"] == "official" and metrics["protocol_version"] == 2


def test_point_bench_official_run_sends_the_pinned_text(tmp_path):
    backend = ScriptedBackend('[{"point": [80, 40]}]')
    metrics = run(get_benchmark("point_bench", protocol="official"), backend, make_dataset(tmp_path / "pb"),
                  tmp_path / "out", pictures=0)
    assert backend.asked[0] == "<image>\n" + POINT_BENCH_CUP
    assert metrics["n"] == 4 and metrics["by_group"]["counting"]["score"] == 0.0


# ---- Vlaser's JSONL sets: Pixmo-Points and PACO-LVIS ---------------------------------------------------------------

def _jsonl(root, rows, name):
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if not (root / row["image"]).exists():
            _image(root / row["image"], (200, 100))
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _turns(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


SHARED_KEY_ROWS = [
    {"id": "L1", "image": "a.jpg", "width": 200, "height": 100, "conversations": _turns(
        ("human", "<image>\nWhere is <ref>the cup</ref>?"), ("gpt", "<ref>the cup</ref><point>[[100, 100]]</point>"))},
    {"id": "L2", "image": "a.jpg", "width": 200, "height": 100, "conversations": _turns(
        ("human", "<ref>the cup</ref>"), ("gpt", "<ref>the cup</ref><point>[[800, 800]]</point>"))},
    {"id": "L3", "image": "sub/b.jpg", "conversations": _turns(
        ("human", "<ref>a fork</ref> and <ref>a knife</ref>"), ("gpt", "<ref>a fork</ref>[[300, 300]]"))},
    {"id": "L4", "image": "b.jpg", "conversations": _turns(
        ("human", "<ref> a plate </ref>"), ("gpt", "<ref>a fork</ref>[[600, 600]]"),
        ("gpt", "<ref> a plate </ref>[[50, 50], [1.5, 2]]"))},
]


def make_pixmo_jsonl(root):
    """Vlaser's Pixmo JSONL where lines L1 and L2 share the key (a.jpg, the cup) with different points."""
    return _jsonl(root, SHARED_KEY_ROWS, "data_0.jsonl")


def test_pixmo_shared_key_last_line_wins_by_default_and_per_line_as_option(tmp_path):
    data = make_pixmo_jsonl(tmp_path / "px")
    bench = get_benchmark("pixmo_points")
    items = bench.load(data)
    # one query per human turn: its first <ref>, as written (the knife is never asked; the plate keeps its spaces)
    assert [(i.id, i.question) for i in items] == [("L1", "the cup"), ("L2", "the cup"), ("L3", "a fork"),
                                                    ("L4", " a plate ")]
    preds = {"L1": "<point>[[105, 95]]</point>",  # near L1's own point, far from L2's
             "L2": "<point>[[805, 800], [500, 500]]</point>",  # one near L2's point
             "L3": "[[600, 610]]",  # sub/b.jpg looks up (b.jpg, a fork): L4's turn, not its own
             "L4": "[[50, 60]]"}  # within 25 of (50, 50); the float pair [1.5, 2] is no ground truth
    records = {k: {"id": k, "response": v} for k, v in preds.items()}
    official = score(bench, items, records, tmp_path / "o", pictures=0)
    # L1 and L2 both scored against L2's [800, 800]: 0/1 + 1/2; L3 against L4's fork [600, 600]: 1/1; L4: 1/1
    assert (official["correct_points"], official["counted_points"], official["n_scored"]) == (3, 5, 4)
    assert official["score"] == 0.6 and official["n_gt_from_other_line"] == 2
    lines = [json.loads(x) for x in (tmp_path / "o" / "scores.jsonl").read_text().splitlines()]
    assert [r["gt_line"] for r in lines] == [2, 2, 4, 4]

    by_line = get_benchmark("pixmo_points", match_by_line=True)
    fixed = score(by_line, items, records, tmp_path / "f", pictures=0)
    # L1 against its own [100, 100]: 1/1; L2: 1/2; L3 against its own [300, 300]: 0/1; L4: 1/1
    assert (fixed["correct_points"], fixed["counted_points"], fixed["n_gt_from_other_line"]) == (3, 5, 0)
    assert by_line.score(items[0], preds["L1"]).value == 1.0 and bench.score(items[0], preds["L1"]).value == 0.0


def test_pixmo_folder_image_without_a_bare_twin_is_skipped(tmp_path):
    rows = [{"image": "sub/c.jpg", "conversations": _turns(("human", "<ref>x</ref>"), ("gpt", "<ref>x</ref>[[1, 1]]"))},
            {"image": "d.jpg", "conversations": _turns(("human", "<ref>y</ref>"), ("gpt", "<ref>z</ref>[[1, 1]]"))}]
    bench = get_benchmark("pixmo_points")
    items = bench.load(_jsonl(tmp_path, rows, "pixmo_eval_set.jsonl"))
    assert [i.id for i in items] == ["0", "1"]
    for item in items:  # no key (c.jpg, x); d.jpg's gpt turn names another expression
        s = bench.score(item, "[[1, 1]]")
        assert s.value is None and s.parsed and "no ground truth" in s.extra["skipped"]
    assert get_benchmark("pixmo_points", match_by_line=True).score(items[0], "[[1, 1]]").value == 1.0


def test_vlaser_prompt_pinned_for_both_sets(tmp_path):
    pixmo = get_benchmark("pixmo_points")
    item = pixmo.load(make_pixmo_jsonl(tmp_path / "px"))[0]
    assert pixmo.prompt(item, pixmo.settings.prompt) == f" {PREFIX} Please provide the referring points of the cup."
    paco = get_benchmark("paco_lvis")
    item = paco.load(make_paco_jsonl(tmp_path / "paco"))[0]
    assert paco.prompt(item, paco.settings.prompt) == (
        f" {PREFIX} Please provide the referring points of the handle of the mug.")


@pytest.mark.parametrize("names, chosen", [
    (["data_0.jsonl", "predictions.jsonl", "scores.jsonl", "predictions.rank1.jsonl"], "data_0.jsonl"),
    (["answers.jsonl", "data_0.jsonl"], "data_0.jsonl"),  # the known name wins
    (["points.jsonl", "predictions.jsonl"], "points.jsonl"),  # the only non-output file
    (["my_pixmo_points.jsonl", "answers.jsonl"], "my_pixmo_points.jsonl"),
])
def test_annotation_file_is_found_among_other_jsonl(tmp_path, names, chosen):
    rows = SHARED_KEY_ROWS[:1]
    _jsonl(tmp_path, rows, chosen)
    for name in names:
        if name != chosen:
            (tmp_path / name).write_text(json.dumps({"id": "L1", "response": "[[1, 1]]"}) + "\n")
    items = get_benchmark("pixmo_points").load(tmp_path)
    assert [i.id for i in items] == ["L1"] and items[0].meta["file"].endswith(chosen)


def test_annotation_file_ambiguity_and_choice(tmp_path):
    _jsonl(tmp_path, SHARED_KEY_ROWS[:1], "one.jsonl")
    _jsonl(tmp_path, SHARED_KEY_ROWS[1:2], "two.jsonl")
    with pytest.raises(BenchmarkDataError, match=r"cannot tell the annotation file among \['one.jsonl', "
                                                 r"'two.jsonl'\].*--option annotation=NAME"):
        get_benchmark("pixmo_points").load(tmp_path)
    assert [i.id for i in get_benchmark("pixmo_points", annotation="two.jsonl").load(tmp_path)] == ["L2"]
    with pytest.raises(BenchmarkDataError, match="three.jsonl: annotation file not found"):
        get_benchmark("pixmo_points", annotation="three.jsonl").load(tmp_path)
    empty = tmp_path / "outputs"
    empty.mkdir()
    (empty / "predictions.jsonl").write_text("")
    with pytest.raises(BenchmarkDataError, match="vlaser protocol reads Vlaser's JSONL"):
        get_benchmark("pixmo_points").load(empty)
    with pytest.raises(BenchmarkDataError, match=r"no annotation \.jsonl"):
        get_benchmark("paco_lvis").load(empty)


def test_eval_score_with_predictions_beside_the_annotations(tmp_path):
    data = make_pixmo_jsonl(tmp_path / "px")
    (data / "predictions.jsonl").write_text("".join(json.dumps({"id": k, "response": "<point>[[800, 800]]</point>"})
                                                    + "\n" for k in ("L1", "L2", "L3")))
    for image in [*data.glob("*.jpg"), *data.glob("sub/*.jpg")]:
        image.unlink()  # scoring never needs the images
    assert main(["eval", "score", "--benchmark", "pixmo_points", "--data", str(data), "--predictions",
                 str(data / "predictions.jsonl"), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # L1, L2 hit L2's [800, 800]; L3 misses L4's fork; L4 unanswered
    assert (metrics["correct_points"], metrics["counted_points"], metrics["n_missing_predictions"]) == (2, 3, 1)
    assert metrics["protocol_version"] == 2


@pytest.mark.parametrize("rows, message", [
    ([{"image": "a.jpg"}], r"data_0.jsonl:1: KeyError\('conversations'\)"),
    ([{"id": 1, "image": "a.jpg", "conversations": []}, {"id": 1, "image": "b.jpg", "conversations": []}],
     r"data_0.jsonl:2: id '1' already used on line 1"),
    ([{"image": "a.jpg", "conversations": [{"value": "<ref>x</ref>"}]}], r"data_0.jsonl:1: KeyError\('from'\)"),
])
def test_bad_jsonl_lines_are_named(tmp_path, rows, message):
    _jsonl(tmp_path, rows, "data_0.jsonl")
    with pytest.raises(BenchmarkDataError, match=message):
        get_benchmark("pixmo_points").load(tmp_path)


def make_paco_jsonl(root):
    """Vlaser's PACO JSONL: two lines with width/height, one polygon each (left half / a two-point line)."""
    rows = [{"id": 7, "image": "c.jpg", "width": 200, "height": 100,
             "segmentation": [[[0, 0, 100, 0, 100, 100, 0, 100]]],
             "conversations": _turns(("human", "<ref>the handle of the mug</ref>"), ("gpt", "x"))},
            {"id": 8, "image": "d.jpg", "width": 200, "height": 100, "segmentation": [[[0, 50, 199, 50]], []],
             "conversations": _turns(("human", "<ref>the rim of the bowl</ref>"))},
            {"id": 9, "image": "e.jpg", "width": 400, "height": 200, "segmentation": [[[200, 0, 399, 0, 399, 199]]],
             "conversations": _turns(("human", "<ref>the lid of the pot</ref>"))}]
    return _jsonl(root, rows, "paco_lvis_v1_pointing_test_single_conv.jsonl")


def test_paco_uses_the_lines_size_and_draws_like_pil(tmp_path):
    data = make_paco_jsonl(tmp_path / "paco")
    (data / "predictions.jsonl").write_text("")
    bench = get_benchmark("paco_lvis")
    items = {i.id: i for i in bench.load(data)}
    for image in data.glob("*.jpg"):
        image.unlink()
    s = bench.score(items["7"], "<point>[[100, 500], [900, 500], [400, 999]]</point>")
    assert (s.extra["correct"], s.extra["total"]) == (2, 3) and s.points == [(20, 50), (180, 50), (80, 99)]
    line = bench.score(items["8"], "[[500, 500], [500, 510], [1000, 500]]")  # y=50 is the line; x=200 is outside
    assert (line.extra["correct"], line.extra["total"]) == (1, 3)
    # e.jpg's line says 400x200 (the image written was 200x100): the mask and the mapping use the line's size
    assert bench.score(items["9"], "[[990, 10]]").points == [(396, 2)]
    assert bench.score(items["9"], "[[990, 10]]").extra["correct"] == 1


@pytest.mark.parametrize("row, message", [
    ({"segmentation": [[[0, 0]]]}, r"paco.jsonl:1: a polygon needs at least two points"),
    ({}, r"paco.jsonl:1: no 'segmentation'"),
    ({"segmentation": [[["a", 1, 2, 3]]]}, r"paco.jsonl:1: a polygon must be a flat list of numbers"),
    ({"segmentation": [], "width": 20.5, "height": 10}, r"paco.jsonl:1: width/height must be positive integers"),
])
def test_paco_bad_lines_are_named(tmp_path, row, message):
    line = {"image": "c.jpg", "conversations": _turns(("human", "<ref>x</ref>")), **row}
    _jsonl(tmp_path, [line], "paco.jsonl")
    with pytest.raises(BenchmarkDataError, match=message):
        get_benchmark("paco_lvis").load(tmp_path)


def test_paco_coco_annotations_beside_a_predictions_file(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "1.jpg")
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 20, "height": 10}],
            "categories": [{"id": 9, "name": "mug:handle"}],
            "annotations": [{"id": 2, "image_id": 1, "category_id": 9, "obj_ann_id": 5,
                             "segmentation": [[0, 0, 9, 0, 9, 9, 0, 9]]}]}
    (tmp_path / "paco_lvis_v1_test.json").write_text(json.dumps(data))
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"id": "1:5:9", "response": "[[100, 100]]"}) + "\n")
    assert [i.id for i in get_benchmark("paco_lvis").load(tmp_path)] == ["1:5:9"]


# ---- Molmo's parquet with its local image column --------------------------------------------------------------------

def _png(size, color):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_molmo_parquet_reads_the_local_image_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _image(tmp_path / "pixmo_images" / "x1", (30, 20))
    _image(tmp_path / "images" / "moved", (30, 20))
    mask = np.zeros((20, 30), dtype=bool).tolist()
    base = {"image_url": "http://x", "image_sha256": "f" * 64, "label": "the cup", "points": [], "masks": [mask]}
    rows = [{**base, "image": {"bytes": None, "path": "pixmo_images/x1"}},  # relative to the parquet's folder
            {**base, "image": {"bytes": _png((30, 20), (255, 0, 0)), "path": None}},  # embedded
            {**base, "image": {"bytes": None, "path": "/gone/pixmo_images/moved"}},  # moved: images/<base name>
            {**base, "image": None}]  # no local copy: the sha256 layout
    _image(tmp_path / "images" / ("f" * 64 + ".jpg"), (30, 20))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pixmo_points_eval.parquet")
    bench = get_benchmark("pixmo_points", protocol="molmo")
    items = bench.load(tmp_path)
    assert items[0].images[0] == tmp_path / "pixmo_images" / "x1"
    with Image.open(items[1].images[0]) as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)
    assert items[2].images[0] == tmp_path / "images" / "moved"
    assert items[3].images[0] == tmp_path / "images" / ("f" * 64 + ".jpg")
    assert bench.prompt(items[0], bench.settings.prompt) == (
        "Point to the cup\nPlease say 'This isn't in the image.' if it is not in the image.")

    bad = [{"image_url": "u", "image_sha256": "s", "label": "l", "points": [{"x": 1}], "image": "a.jpg"}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "pixmo_points_eval.parquet")
    with pytest.raises(BenchmarkDataError, match=r"pixmo_points_eval.parquet row 0: KeyError\('y'\)"):
        bench.load(tmp_path)


# ---- every pointing benchmark's prompt per protocol, pinned ---------------------------------------------------------

def _where2place(root):
    _image(root / "images" / "0.jpg", (64, 48))
    write_mask(root / "masks" / "00.jpg", (0, 0, 10, 10), (64, 48))
    text = ("Find some free space on the plate. Your answer should be formatted as a list of tuples, i.e. "
            "[(x1, y1), (x2, y2), ...], where each tuple contains the x and y coordinates of a point satisfying the "
            "conditions above. The coordinates should be between 0 and 1, indicating the normalized pixel locations "
            "of the points in the image.")
    (root / "point_questions.jsonl").write_text(json.dumps({"question_id": 0, "image": "0.jpg", "text": text,
                                                            "category": "seen"}) + "\n")
    return root, text


def _refspatial(root):
    _image(root / "Location" / "image" / "0.png", (64, 48))
    write_mask(root / "Location" / "mask" / "0.png", (0, 0, 10, 10), (64, 48))
    row = {"id": 0, "object": "the mug", "prompt": "Please point out the mug left of the bowl.",
           "suffix": "Your answer should be formatted as a list of tuples, i.e. [(x1, y1)], where each tuple contains "
                     "the x and y coordinates of a point satisfying the conditions above. The coordinates should be "
                     "between 0 and 1, indicating the normalized pixel locations of the points in the image.",
           "rgb_path": "image/0.png", "mask_path": "mask/0.png", "category": "Location", "step": 1}
    (root / "Location" / "question.json").write_text(json.dumps([row]))
    return root, row


def test_every_pointing_prompt_pinned_per_protocol(tmp_path):
    w2p, text = _where2place(tmp_path / "w2p")
    ref, _ = _refspatial(tmp_path / "ref")
    expected = {
        ("where2place", "vlaser"): (w2p, f"{PREFIX} Find some free space on the plate."),
        ("where2place", "official"): (w2p, text),
        ("refspatial", "vlaser"): (ref, f"{PREFIX} Please point out the mug left of the bowl."),
        ("refspatial", "official"): (ref, "Please point out the mug left of the bowl. Your answer should be formatted "
                                          "as a list of tuples, i.e. [(x1, y1)], where each tuple contains the x and y "
                                          "coordinates of a point satisfying the conditions above. The coordinates "
                                          "should be between 0 and 1, indicating the normalized pixel locations of "
                                          "the points in the image."),
        ("point_bench", "vlaser"): (make_dataset(tmp_path / "pb"), f"{PREFIX} Point to the cup"),
        ("point_bench", "official"): (tmp_path / "pb", POINT_BENCH_CUP),
        ("pixmo_points", "vlaser"): (make_pixmo_jsonl(tmp_path / "px"),
                                     f" {PREFIX} Please provide the referring points of the cup."),
        ("paco_lvis", "vlaser"): (make_paco_jsonl(tmp_path / "paco"),
                                  f" {PREFIX} Please provide the referring points of the handle of the mug."),
    }
    for (name, protocol), (data, prompt) in expected.items():
        bench = get_benchmark(name, protocol=protocol)
        item = bench.load(data)[0]
        assert bench.prompt(item, bench.settings.prompt) == prompt, (name, protocol)
    declared = {(name, p.name) for name in ("where2place", "refspatial", "point_bench", "pixmo_points", "paco_lvis")
                for p in get_benchmark(name).protocols}
    assert declared - set(expected) == {("pixmo_points", "molmo")}  # pinned in the Molmo parquet test


# ---- the tiny model, end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_run_with_the_tiny_model(tiny_original, tmp_path):
    for name, data, extra in (("point_bench", make_dataset(tmp_path / "pb"), ["--protocol", "official"]),
                              ("pixmo_points", make_pixmo_jsonl(tmp_path / "px"), []),
                              ("paco_lvis", make_paco_jsonl(tmp_path / "paco"), [])):
        out = tmp_path / f"out_{name}"
        assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", name, "--data", str(data),
                     "--out", str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3", *extra]) == 0
        records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(records) == 3 and metrics["n_items"] == 3 and all("error" not in r for r in records)
    assert records[0]["prompt"].startswith("<image>\n You are InternVL.")

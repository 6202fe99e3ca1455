"""Pictures of pointing answers: small benchmark images are enlarged for viewing, markers where the points are."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlaser.eval.benchmark import Item, Score
from vlaser.eval.report import PICTURE_MIN_SIDE, PICTURE_WIDTH, picture_scale, write_pictures

RED, GREEN = np.array([255, 64, 64]), np.array([40, 220, 90])


def _picture_of(tmp_path, size, points, gt_points=None):
    image = tmp_path / "scene.png"
    Image.new("RGB", size, (0, 0, 0)).save(image)
    item = Item(id="q/1", question="Point to it.", official_prompt="Point to it.", images=[image])
    bench = SimpleNamespace(name="fake", gt_mask=lambda item: None, gt_points=lambda item: gt_points)
    cards = write_pictures(bench, [item], [Score(1.0, parsed=True, points=points)],
                           {"q/1": {"prompt": "p", "response": "r"}}, tmp_path)
    return np.asarray(Image.open(tmp_path / cards[0]["file"]).convert("RGB"))


def test_a_small_image_is_enlarged_nearest_neighbour_with_markers_scaled(tmp_path):
    picture = _picture_of(tmp_path, (112, 112), points=[(20, 80)], gt_points=[(90, 10)])
    assert picture.shape[:2] == (336, 336)  # 3x: the least whole factor reaching 320 px
    assert (picture[80 * 3, 20 * 3] == RED).all() and (picture[10 * 3, 90 * 3] == GREEN).all()
    assert not (picture[80, 20] == RED).all()  # not at the unscaled position
    assert (picture[200, 200] == 0).all()  # the image itself stays black (no smoothing of its pixels)


def test_a_large_image_is_reduced_with_its_points(tmp_path):
    picture = _picture_of(tmp_path, (960, 600), points=[(480, 300)])
    assert picture.shape[:2] == (300, 480) and (picture[150, 240] == RED).all()


@pytest.mark.parametrize("size, scale", [((112, 112), 3.0), ((320, 200), 2.0), ((400, 320), 1.0), ((480, 100), 4.0),
                                         ((960, 540), 0.5), ((1, 1), 320.0)])
def test_picture_scale(size, scale):
    assert picture_scale(*size) == scale
    if scale > 1:  # the least whole factor that reaches the minimum short side
        assert scale.is_integer() and min(size) * scale >= PICTURE_MIN_SIDE > min(size) * (scale - 1)
    elif scale < 1:
        assert round(size[0] * scale) == PICTURE_WIDTH


def _truncate(path):
    """Cut an image file in half, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_image_is_named_in_the_report_and_pictures_not_fatal(tmp_path):
    from fakes import ScriptedBackend
    from test_eval import where2place
    from vlaser.eval.benchmark import get_benchmark
    from vlaser.eval.runner import run

    bad = _truncate(where2place(tmp_path / "data") / "images" / "1.jpg")
    out = tmp_path / "out"
    metrics = run(get_benchmark("where2place"), ScriptedBackend(), tmp_path / "data", out)
    assert metrics["n_items"] == 3
    report, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert "Pictures of 2 items" in report and "1 item(s) have no picture" in report
    assert f"item 101: cannot read {bad}" in report and "truncated" in report
    assert f"cannot read {bad}" in page and page.count("<img ") == 2
    assert sorted(p.name for p in (out / "pictures").iterdir()) == ["100.png", "102.png"]


def test_the_mask_is_outlined_and_the_prediction_ringed_on_green_and_red_objects(tmp_path):
    """A green object (left) and a red one (right); the mask spans both, a point is predicted on each."""
    pixels = np.zeros((320, 320, 3), dtype=np.uint8)
    pixels[:, :160], pixels[:, 160:] = (0, 200, 0), (200, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    mask = np.zeros((320, 320))
    mask[100:220, 100:220] = 1.0
    item = Item(id="q", question="Point.", official_prompt="Point.", images=[tmp_path / "scene.png"])
    bench = SimpleNamespace(name="fake", gt_mask=lambda item: mask, gt_points=lambda item: [])
    cards = write_pictures(bench, [item], [Score(1.0, parsed=True, points=[(60, 60), (280, 280)])],
                           {"q": {"prompt": "p", "response": "r"}}, tmp_path)
    picture = np.asarray(Image.open(tmp_path / cards[0]["file"]).convert("RGB")).astype(int)
    white, black = [255, 255, 255], [0, 0, 0]
    for y, x, colour in ((150, 100, (0, 200, 0)), (150, 219, (200, 0, 0))):  # the left and right edges
        inward = 1 if x < 160 else -1
        assert picture[y, x].tolist() == white and picture[y, x - 2 * inward].tolist() == black
        assert picture[y, x + 3 * inward].tolist() == list(colour)  # inside: the object's own colour, not tinted
    for x, y in ((60, 60), (280, 280)):  # r = 4, rings of 2: red to 4, white 5-6, black 7-8
        assert picture[y, x].tolist() == [255, 64, 64]
        assert picture[y, x + 5].tolist() == white and picture[y, x + 7].tolist() == black
        assert picture[y, x + 10].tolist() != black


def test_eval_outputs_follow_the_umask(tmp_path, umask):
    from conftest import modes
    from fakes import ScriptedBackend
    from test_eval import where2place
    from vlaser.eval.benchmark import get_benchmark
    from vlaser.eval.runner import run

    umask(0o027)
    run(get_benchmark("where2place"), ScriptedBackend(), where2place(tmp_path / "data"), tmp_path / "out")
    got = modes(tmp_path / "out")
    assert {"report.md", "index.html", "pictures", "run.json"} <= set(got)
    assert got == {name: 0o750 if (tmp_path / "out" / name).is_dir() else 0o640 for name in got}


def _score_cli(tmp_path, lines):
    from test_eval import where2place
    from vlaser.cli import main

    data = tmp_path / "data"
    if not data.is_dir():
        where2place(data)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return main(["eval", "score", "--benchmark", "where2place", "--data", str(data), "--predictions", str(preds),
                 "--out", str(tmp_path / "out"), "--pictures", "0"])


def test_eval_score_reports_unknown_and_repeated_ids_and_refuses_conflicting_ones(tmp_path, capsys):
    answer = "[(320, 240)]"
    lines = [{"id": "100", "response": answer}, {"id": "101", "response": answer}, {"id": "101", "response": answer},
             {"id": "999", "response": answer}]
    assert _score_cli(tmp_path, lines) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**1 prediction id(s) are not in the benchmark** (not scored): `999`" in report
    assert "**1 id(s) are given more than once** in the predictions (with the same answer; scored once): `101`" \
        in report
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["duplicate_ids"] == ["101"] and metrics["unknown_ids"] == ["999"] and metrics["n_scored"] == 2

    capsys.readouterr()
    lines += [{"id": "100", "response": "[(0, 0)]"}]
    assert _score_cli(tmp_path, lines) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vlaser eval score: error: {tmp_path / 'preds.jsonl'}: 1 id(s) have different answers: "
                   "100 (lines 1 and 5)"]


def test_coverage_says_partial_and_shards_and_the_report_shows_them(tmp_path):
    from vlaser.eval.provenance import coverage, partial_note
    from vlaser.eval.report import write_report

    full = coverage({"limit": 200, "n_available": 100, "shards": 1}, 100)
    assert full == {"limit": 200, "n_available": 100, "shards": 1, "partial": False} and partial_note(full) is None
    part = coverage({"limit": 20, "n_available": 100, "shards": 4}, 20)
    assert part["partial"] and partial_note({**part, "n_items": 20}) == "(20 of 100 items)"
    assert coverage(None, 7) == {"limit": None, "n_available": 7, "shards": 1, "partial": False}  # eval score
    metrics = {"benchmark": "b", "protocol": "p", "score": 0.849, "n_scored": 20, "n_items": 20, "n_unparsed": 0,
               "n_missing_predictions": 0, **part}
    write_report(metrics, tmp_path, [])
    report = (tmp_path / "report.md").read_text()
    assert "**Partial run: the first 20 of 100 items** (--limit 20)" in report
    assert "Items were asked over 4 processes and scored together." in report

"""The quickstart's synthetic scenes: deterministic, and readable by the SFT pipeline and the harness."""

import json
from pathlib import Path

import numpy as np

from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.benchmarks.mmsi_bench import SUFFIX
from vlaser.model.tokenizer import load_tokenizer
from vlaser.points import POINT_PROMPT
from vlaser.quickstart.scenes import scene_for, write_mmsi, write_training_set, write_where2place


def test_scenes_are_deterministic_and_readable_by_the_sft_pipeline(tiny_original, tmp_path):
    a = write_training_set(tmp_path / "a", n=40, seed=3)
    write_training_set(tmp_path / "b", n=40, seed=3)
    for name in ("train.jsonl", "images/000007.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    dataset = SFTDataset(a, load_tokenizer(tiny_original), DataConfig(num_image_token=4, force_image_size=56,
                                                                      max_dynamic_patch=1))
    assert len(dataset) == 40 and all(not dataset[i]["skipped"] for i in range(40))
    turns = [json.loads(x)["conversations"] for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    points = [t for t in turns if t[1]["value"].startswith("<point>[[")]
    choices = [t for t in turns if t[0]["value"].endswith(SUFFIX)]
    assert points and choices and all(len(t) == 2 and t[0]["value"].startswith("<image>\n") for t in turns)
    assert all(t[0]["value"] == f"<image>\n{POINT_PROMPT} Point to the " + t[0]["value"].split("Point to the ")[1]
               for t in points)
    assert all(t[1]["value"] in "ABCD" for t in choices)


def test_held_out_sets_score_their_own_answers_perfectly(tmp_path):
    data = write_where2place(tmp_path / "w2p", n=12, seed=5)
    bench = get_benchmark("where2place", binarize=True)
    rows = [json.loads(x) for x in (data / "point_questions.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(5)
    for item, row in zip(bench.load(data), rows):
        scene = scene_for(rng, 112, "basic")
        target = int(rng.integers(len(scene.objects)))
        gx, gy = scene.grid_point(target)
        assert row["text"].startswith(f"Point to the {scene.objects[target].name}.")
        assert bench.score(item, f"<point>[[{gx}, {gy}]]</point>").value == 1.0
    mcq = get_benchmark("mmsi_bench")
    for preset in ("basic", "hard"):
        items = mcq.load(write_mmsi(tmp_path / preset, n=10, seed=6, preset=preset))
        assert len(items) == 10 and all(mcq.score(i, f"`{i.meta['answer']}`").value == 1.0 for i in items)
    assert {i.group for i in items} <= {"relation", "colour"} and "relation" in {i.group for i in items}


def test_the_quickstart_meta_works_from_any_folder(tmp_path, monkeypatch):
    from vlaser.data.meta import check_datasets, media_path, read_annotations

    monkeypatch.chdir(tmp_path)
    meta = write_training_set(Path("qs") / "data", n=3)  # a relative --out, as typed
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec, = check_datasets(tmp_path / meta)  # `vlaser train` checks this before loading any weights
    record = read_annotations(spec).records[0]
    assert media_path(record, record.data["image"]).is_file()

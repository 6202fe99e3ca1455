"""The quickstart's synthetic scenes: deterministic, and readable by the SFT pipeline and the harness."""

import json

from vlaser.data.dataset import DataConfig, SFTDataset
from vlaser.eval.benchmark import get_benchmark
from vlaser.model.tokenizer import load_tokenizer
from vlaser.quickstart.scenes import write_mmsi, write_training_set, write_where2place


def test_scenes_are_deterministic_and_consistent(tiny_original, tmp_path):
    a = write_training_set(tmp_path / "a", n=20, seed=3)
    write_training_set(tmp_path / "b", n=20, seed=3)
    for name in ("train.jsonl", "images/000007.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    dataset = SFTDataset(a, load_tokenizer(tiny_original), DataConfig(num_image_token=4, force_image_size=56,
                                                                      max_dynamic_patch=1))
    assert len(dataset) == 20 and all(not dataset[i]["skipped"] for i in range(20))
    first = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    assert first["conversations"][1]["value"].startswith("<point>[[")


def test_held_out_sets_score_their_own_answers_perfectly(tmp_path):
    data = write_where2place(tmp_path / "w2p", n=12, seed=5)
    bench = get_benchmark("where2place", binarize=True)
    rows = [json.loads(x) for x in (data / "point_questions.jsonl").read_text().splitlines()]
    import numpy as np

    from vlaser.quickstart.scenes import _scene_for

    rng = np.random.default_rng(5)
    for item, row in zip(bench.load(data), rows):
        scene = _scene_for(rng, 112, "basic", curriculum=1.0)
        target = int(rng.integers(len(scene.objects)))
        gx, gy = scene.grid_point(target)
        assert row["text"].startswith(f"Point to the {scene.objects[target].name}.")
        assert bench.score(item, f"<point>[[{gx}, {gy}]]</point>").value == 1.0
    mcq = get_benchmark("mmsi_bench")
    items = mcq.load(write_mmsi(tmp_path / "mcq", n=10, seed=6, preset="hard"))
    assert len(items) == 10 and all(mcq.score(i, f"`{i.meta['answer']}`").value == 1.0 for i in items)

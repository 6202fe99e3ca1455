"""``vlaser quickstart``: the time budget, the blind baselines, and (short) the whole loop learning for real."""

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from media import write_mask
from vlaser.quickstart import run as quickstart

#: the CI variant's training, as steps so that it does not depend on the machine's speed (about 6 minutes here;
#: the full run trains for 10 minutes, about 4,600 steps)
SHORT_STEPS = 2400


def test_budget_stops_training_and_does_not_count_evaluation_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(quickstart.time, "perf_counter", lambda: now[0])

    def evaluate(model, tokenizer, step):  # an evaluation that takes 20 s of wall time
        now[0] += 20.0
        return {"where2place": step / 10}

    callback = quickstart.BudgetCallback(30.0, evaluate, every=10.0)
    state, control = SimpleNamespace(global_step=0, max_steps=100), SimpleNamespace(should_training_stop=False)
    model = SimpleNamespace(eval=lambda: None, train=lambda: None)
    callback.on_train_begin(None, state, control)

    def step(seconds):
        now[0] += seconds
        state.global_step += 1
        callback.on_step_end(None, state, control, model=model)

    step(4.0)
    assert callback.curve == []  # 4 s < the first curve point at 10 s
    step(7.0)  # 11 s: a curve point, taking 20 s of wall time that the budget does not count
    assert callback.curve == [{"step": 2, "train_seconds": 11.0, "where2place": 0.2}]
    step(15.0)  # 26 s of training (46 s of wall time): under the budget, a curve point (>= 21 s)
    assert not control.should_training_stop and len(callback.curve) == 2
    step(5.0)  # 31 s: over the budget -> stop, with a last curve point
    assert control.should_training_stop and callback.stopped_by_budget
    assert callback.curve[-1]["step"] == 4 and callback.train_seconds() == pytest.approx(31.0)


def test_blind_baselines_find_the_best_constant_point_and_the_majority(tmp_path):
    w2p = tmp_path / "w2p"
    (w2p / "images").mkdir(parents=True)
    (w2p / "masks").mkdir()
    boxes = [(0, 0, 5, 10), (0, 0, 10, 5), (5, 5, 10, 10)]  # left half, top half, bottom-right quarter
    lines = []
    for i, box in enumerate(boxes):
        Image.new("RGB", (10, 10)).save(w2p / "images" / f"{i}.png")
        write_mask(w2p / "masks" / f"{i:02d}.jpg", box)
        lines.append(json.dumps({"question_id": i, "image": f"{i}.png", "text": "Point to it.", "category": "x"}))
    (w2p / "point_questions.jsonl").write_text("\n".join(lines) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "mcq").mkdir()
    rows = [{"id": i, "images": [b""], "question": "Q?", "answer": a, "question_type": "t"} for i, a in
            enumerate("ABBCB")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mcq" / "MMSI_Bench.parquet")
    baselines = quickstart.blind_baselines({"where2place": w2p, "mmsi_bench": tmp_path / "mcq"})
    x, y = baselines["best_constant_point"]["pixel"]
    assert x < 5 and y < 5  # the top-left quarter lies in two of the three masks
    assert baselines["best_constant_point"]["score"] == pytest.approx(2 / 3, abs=0.02)  # JPEG edges are soft
    assert baselines["majority_answer"] == {"score": 0.6, "answer": "B"}


@pytest.mark.slow
def test_short_quickstart_runs_the_whole_loop_and_learns(tmp_path):
    """The CI variant: every stage through the real commands' code, and training that clearly helps."""
    from vlaser.cli import main

    assert main(["quickstart", "--out", str(tmp_path), "--max-steps", str(SHORT_STEPS), "--seed", "0"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for name in ("report.md", "index.html", "loss.png", "curve.png", "trained/config.json",
                 "eval/trained/where2place/metrics.json", "eval/trained/where2place/pictures/0.png",
                 "data/where2place/point_questions.jsonl", "data/mmsi_bench/MMSI_Bench.parquet"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["architectures"] == ["InternVLChatModel"]
    before, after, base = summary["untrained"], summary["trained"], summary["baselines"]
    assert after["mmsi_bench"] >= before["mmsi_bench"] + 0.25
    assert after["mmsi_bench"] >= base["majority_answer"]["score"] + 0.25
    assert after["where2place"] >= before["where2place"] + 0.2
    assert after["where2place"] >= base["best_constant_point"]["score"] + 0.15
    unparsed = json.loads((tmp_path / "eval" / "trained" / "where2place" / "metrics.json").read_text())["n_unparsed"]
    assert unparsed <= 10  # of 200: the trained model answers in the <point> format
    assert summary["training"]["steps"] == SHORT_STEPS and summary["curve"]
    assert [s["steps"] for s in summary["training"]["stages"]] == [960, 1440]  # the time shares, 0.4 and 0.6
    assert main(["quickstart", "--out", str(tmp_path)]) == 2  # a finished run is not silently mixed into

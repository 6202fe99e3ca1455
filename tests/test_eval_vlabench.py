"""VLABench's VLM track on synthetic folders in the HF layout, scores worked out by hand from the official rules."""

import json

import pytest
from PIL import Image

from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, get_benchmark
from vlaser.eval.benchmarks.vlabench import split_subtasks


def pick(n):
    return {"name": "pick", "params": {"target_entity_name": n}}


def place(n):
    return {"name": "place", "params": {"target_container_name": n}}


def press(n):
    return {"name": "press", "params": {"target_entity_name": n}}


def skill(name, **params):
    return {"name": name, "params": params}


def answer(sequence, fence="```json"):
    return f"Here is the plan.\n{fence}\n{json.dumps(sequence, indent=2)}\n```\nDone."


def _example(root, dimension, task, number, gt, instruction="Put the apple on the plate.", pictures=True):
    folder = root / dimension / task / f"example{number}"
    (folder / "input").mkdir(parents=True)
    (folder / "output").mkdir()
    (folder / "env_config").mkdir()
    (folder / "input" / "instruction.txt").write_text(instruction, encoding="utf-8")
    (folder / "output" / "operation_sequence.json").write_text(json.dumps({"skill_sequence": gt}))
    if pictures:
        Image.new("RGB", (64, 32), (200, 100, 50)).save(folder / "input" / "input.png")
        Image.new("RGB", (64, 32), (50, 100, 200)).save(folder / "input" / "input_mask.png")
    return folder


#: sub-tasks A, B, C of the sequential example
A, B, C = [pick(1), place(2)], [pick(3), place(4)], [press(5)]


def make_dataset(root):
    """Two dimensions as shipped on HF; ``cook_dishes`` is one of the seq-independent tasks."""
    _example(root, "M&T", "select_fruit", 0, [pick(1), place(2)])
    _example(root, "M&T", "select_fruit", 1, A + B + C, "Put the apple on the plate, the pear in the bowl, press 5.")
    _example(root, "Complex", "cook_dishes", 0, [pick(1), place(2), pick(3), place(4)], "Cook the dish.")
    (root / "README.md").write_text("dataset card")  # files beside the folders are not items
    return root


@pytest.fixture
def items(tmp_path):
    return {item.id: item for item in get_benchmark("vlabench").load(make_dataset(tmp_path / "vlm"))}


def scores(bench, item, response):
    s = bench.score(item, response)
    return s, [s.extra[k] for k in ("skill_match_score", "entity_match_score", "skill_with_entity_match_score",
                                    "exact_match_score", "total_score")]


def test_load_reads_the_hf_layout(tmp_path):
    data = make_dataset(tmp_path / "vlm")
    _example(data, "M&T", "select_fruit", 10, [pick(1), place(2)])
    _example(data, "M&T", "select_fruit", 2, [pick(1), place(2)])
    loaded = get_benchmark("vlabench").load(data)
    assert [i.id for i in loaded] == ["Complex/cook_dishes/example0", "M&T/select_fruit/example0",
                                      "M&T/select_fruit/example1", "M&T/select_fruit/example2",
                                      "M&T/select_fruit/example10"]
    item = loaded[1]
    assert item.group == "M&T" and item.question == "Put the apple on the plate."
    assert item.images == [data / "M&T/select_fruit/example0/input/input.png",
                           data / "M&T/select_fruit/example0/input/input_mask.png"]
    assert loaded[0].meta["dependency"] == "Seq-independent" and item.meta["dependency"] == "Sequential"


def test_prompt_is_get_ti_list_joined_as_the_internvl_wrapper(tmp_path):
    from vlaser.eval.runner import build_request
    from vlaser.inference.prepare import place_tags

    pre = tmp_path / "eval_vlm_en.txt"
    pre.write_text("You plan robot skills.\nSkills: pick, place.", encoding="utf-8")
    data = make_dataset(tmp_path / "vlm")
    bench = get_benchmark("vlabench", prompt_file=str(pre))
    item = bench.load(data)[1]
    expected = ("You plan robot skills.\nSkills: pick, place.\n"
                "Input picture\nImage: <image>\n"
                "Input picture with numbered tags\nImage: <image>\n"
                "Language instruction:\nPut the apple on the plate.\n"
                "Please give the output skill sequence\n")
    assert bench.prompt(item, "vlaser") == bench.prompt(item, "official") == expected
    request = build_request(bench, item, "vlaser", bench.settings.max_tiles)
    assert place_tags(request) == expected  # the labelled picture second
    assert [(p.source, p.max_tiles) for p in request.pictures] == [(image, 6) for image in item.images]
    cot = get_benchmark("vlabench", prompt_file=str(pre), cot=True).load(data)[1]
    assert cot.official_prompt == expected + "Please analyze the problem step by step and give the answer\n"
    assert bench.prompt_source.startswith(f"file {pre} (sha256 ")
    default = get_benchmark("vlabench")
    text = default.prompt(default.load(data)[1], "vlaser")
    assert text.startswith("(A paraphrase by vlaser of the VLABench skill-library prompt; not the official wording.)")
    assert text.count("<image>") == 2 and default.prompt_source.startswith("paraphrase")
    assert (default.settings.max_new_tokens, default.settings.max_tiles) == (512, 6)


def test_exact_answer_and_total_weighting(items):
    item = items["M&T/select_fruit/example1"]
    s, values = scores(get_benchmark("vlabench"), item, answer(A + B + C))
    assert values == [100, 100, 100, 100, 80] and s.value == pytest.approx(0.8) and s.parsed
    s, values = scores(get_benchmark("vlabench", total="intended"), item, answer(A + B + C))
    assert values == [100, 100, 100, 100, 100] and s.value == pytest.approx(1.0)


def test_official_json_parsing(items):
    bench = get_benchmark("vlabench")
    item = items["M&T/select_fruit/example0"]
    for text in (json.dumps([pick(1), place(2)]),  # JSON outside a code block
                 answer([pick(1), place(2)], fence="```JSON"), answer([pick(1), place(2)], fence="```"),
                 "```json\n[{\"name\": \"pick\",]\n```", ""):
        s, values = scores(bench, item, text)
        assert not s.parsed and s.value == 0 and values == [0] * 5 and s.extra["format_error"], text
    unclosed = "```json\n" + json.dumps([pick(1), place(2)])  # split("```")[0] keeps the rest of the text
    two_blocks = answer([pick(1), place(2)]) + "\n" + answer([pick(7)])  # the first block counts
    for text in (unclosed, two_blocks):
        assert bench.score(item, text).value == pytest.approx(0.8), text


def test_wrong_skill_names(items):
    item = items["Complex/cook_dishes/example0"]  # GT pick 1, place 2, pick 3, place 4
    predicted = [skill("grab", target_entity_name=1), place(2), pick(3), skill("put", target_container_name=4)]
    # names: pick and place once each of 4 -> 50; all four (role, id) pairs -> 100; triples 2 of 4 -> 50;
    # no pattern starts at grab/place/put and [pick, put] is none -> no sub-task -> exact 0
    _, values = scores(get_benchmark("vlabench"), item, answer(predicted))
    assert values == pytest.approx([50, 100, 50, 0, 60])
    _, values = scores(get_benchmark("vlabench", total="intended"), item, answer(predicted))
    assert values[4] == pytest.approx(0.4 * 50 + 0.4 * 100 + 0.1 * 50)


def test_string_and_int_entity_ids(items, tmp_path):
    item = items["M&T/select_fruit/example0"]  # GT ids are JSON numbers
    as_strings = [skill("pick", target_entity_name="1"), skill("place", target_container_name="2")]
    _, values = scores(get_benchmark("vlabench"), item, answer(as_strings))
    assert values == [100, 0, 0, 0, 40]  # the official code compares "1" with 1: not equal
    _, values = scores(get_benchmark("vlabench", entity_ids="text"), item, answer(as_strings))
    assert values == [100, 100, 100, 100, 80]
    string_gt = _example(tmp_path / "s", "Semantic", "select_book", 0, [skill("pick", target_entity_name="1"),
                                                                       skill("place", target_container_name=" 2")])
    gt_item = get_benchmark("vlabench").load(string_gt.parents[2])[0]
    _, values = scores(get_benchmark("vlabench"), gt_item, answer([pick(1), place(2)]))
    assert values == [100, 0, 0, 0, 40]
    _, values = scores(get_benchmark("vlabench", entity_ids="text"), gt_item, answer([pick(1), place(2)]))
    assert values == [100, 100, 100, 100, 80]


def test_partially_right_sequence_dag_match(items):
    bench = get_benchmark("vlabench")
    item = items["M&T/select_fruit/example1"]  # sequential chain START -> A -> B -> C
    wrong_first = [pick(1), place(9)] + B + C
    # layer 1: A vs (pick-place, 1, 9) no; layer 2: B equal but its predecessor A != (1, 9) no; layer 3: C equal
    # and predecessors B == B -> 1 of 3. Entities (te1, tc9, te3, tc4, te5): 4 of 5; triples 4 of 5.
    _, values = scores(bench, item, answer(wrong_first))
    assert values == pytest.approx([100, 80, 80, 100 / 3, 72])
    wrong_middle = A + [pick(3), place(7)] + C  # C is right, but its predecessor is not: only A
    assert scores(bench, item, answer(wrong_middle))[1][3] == pytest.approx(100 / 3)
    missing_middle = A + C  # layer 2: B vs C no; no predicted layer 3; names/pairs/triples 3 of 5
    assert scores(bench, item, answer(missing_middle))[1] == pytest.approx([60, 60, 60, 100 / 3, 48])
    swapped = B + A + C
    assert scores(bench, item, answer(swapped))[1][3] == 0  # chain: nothing in place
    _, intended = scores(get_benchmark("vlabench", total="intended"), item, answer(wrong_first))
    assert intended[4] == pytest.approx(40 + 32 + 8 + 10 / 3)


def test_seq_independent_task_ignores_order(items):
    item = items["Complex/cook_dishes/example0"]
    _, values = scores(get_benchmark("vlabench"), item, answer([pick(3), place(4), pick(1), place(2)]))
    assert values == [100, 100, 100, 100, 80]
    _, values = scores(get_benchmark("vlabench"), item, answer([pick(3), place(4), pick(1), place(8)]))
    assert values == pytest.approx([100, 75, 75, 50, 70])  # one of the two START children matches


def test_greedy_subtask_split():
    names = [[s["name"] for s in sub] for sub in split_subtasks(
        [pick(1), skill("pour", target_container_name=2), place(3), pick(4), pick(5), place(6), press(7),
         skill("lift"), pick(8), skill("push", target_container_name=9), place(9)])]
    assert names == [["pick", "pour", "place"], ["pick", "place"], ["press"], ["pick", "push", "place"]]


def test_malformed_predictions_score_zero_as_the_bare_except(items):
    bench = get_benchmark("vlabench")
    item = items["M&T/select_fruit/example0"]
    for bad in ({"skill_sequence": [pick(1), place(2)]}, [pick([1]), place(2)], [{"name": "pick"}],
                [pick(1), "place"], [skill(["pick"])], 5, None):
        s, values = scores(bench, item, answer(bad))
        assert s.parsed and values == [0] * 5 and s.extra["score_error"], bad
    for empty in ([], {}, ""):
        s, values = scores(bench, item, answer(empty))
        assert s.parsed and values == [0] * 5 and "score_error" not in s.extra, empty


def test_ground_truth_without_a_subtask_scores_zero(tmp_path):
    folder = _example(tmp_path / "g", "PhysicsLaw", "friction_qa", 0, [pick(1)])
    item = get_benchmark("vlabench").load(folder.parents[2])[0]
    s = get_benchmark("vlabench").score(item, answer([pick(1)]))  # even the exact answer: 0 / 0 nodes raises
    assert s.value == 0 and s.extra["skill_match_score"] == 0 and "division by zero" in s.extra["score_error"]


def test_bad_data_and_options_are_named(tmp_path):
    data = make_dataset(tmp_path / "vlm")
    (data / "M&T/select_fruit/example1/output/operation_sequence.json").unlink()
    with pytest.raises(BenchmarkDataError, match="example1"):
        get_benchmark("vlabench").load(data)
    data = make_dataset(tmp_path / "v2")
    (data / "M&T/select_fruit/notes").mkdir()
    with pytest.raises(BenchmarkDataError, match="notes"):
        get_benchmark("vlabench").load(data)
    with pytest.raises(BenchmarkDataError, match="pass the folder that holds the dimension folders"):
        get_benchmark("vlabench").load(make_dataset(tmp_path / "v3") / "M&T")
    bad = _example(tmp_path / "v4", "Spatial", "select_toy", 0, [pick(1)])
    (bad / "output/operation_sequence.json").write_text(json.dumps({"skill_sequence": [{"name": "pick"}]}))
    with pytest.raises(BenchmarkDataError, match="operation_sequence.json: skill 0 lacks"):
        get_benchmark("vlabench").load(bad.parents[2])
    with pytest.raises(BenchmarkDataError, match="nope.txt"):
        get_benchmark("vlabench", prompt_file=str(tmp_path / "nope.txt")).load(data)
    with pytest.raises(ValueError, match="total"):
        get_benchmark("vlabench", total="fixed")
    with pytest.raises(ValueError, match="unknown option"):
        get_benchmark("vlabench", weights="x")


def _predictions(path):
    records = [{"id": "M&T/select_fruit/example0", "response": answer([pick(1), place(2)])},
               {"id": "M&T/select_fruit/example1", "response": answer([pick(1), place(9)] + B + C)},
               {"id": "Complex/cook_dishes/example0", "response": json.dumps([pick(1), place(2)])},
               {"id": "Spatial/select_toy/example0", "response": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_score_without_pictures_aggregates_per_dimension(tmp_path):
    data = make_dataset(tmp_path / "vlm")
    for picture in data.rglob("*.png"):
        picture.unlink()
    preds = _predictions(tmp_path / "preds.jsonl")
    assert main(["eval", "score", "--benchmark", "vlabench", "--data", str(data), "--predictions", str(preds),
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # totals: 80 (exact), 72 (partial, as above), 0 (JSON outside a code block)
    assert metrics["score"] == pytest.approx((0.8 + 0.72 + 0) / 3)
    assert metrics["n_unknown_ids"] == 1 and metrics["n_unparsed"] == metrics["n_format_error"] == 1
    mt = metrics["by_group"]["M&T"]
    assert mt["n"] == 2 and mt["score"] == pytest.approx(0.76) and mt["total_score"] == pytest.approx(76)
    assert [mt[k] for k in ("skill_match_score", "entity_match_score", "skill_with_entity_match_score",
                            "exact_match_score")] == pytest.approx([100, 90, 90, (100 + 100 / 3) / 2])
    assert metrics["by_group"]["Complex"]["total_score"] == 0
    assert metrics["overall"]["entity_match_score"] == pytest.approx(60)
    assert metrics["mean_over_dimensions"]["total_score"] == pytest.approx(38)
    assert metrics["by_task"]["Complex/cook_dishes"]["n"] == 1
    assert metrics["total_weighting"].startswith("0.4 skill + 0.4 entity (official")
    assert metrics["prompt_source"].startswith("paraphrase")
    assert main(["eval", "score", "--benchmark", "vlabench", "--data", str(data), "--predictions", str(preds),
                 "--out", str(tmp_path / "intended"), "--option", "total=intended"]) == 0
    intended = json.loads((tmp_path / "intended" / "metrics.json").read_text())
    assert intended["score"] == pytest.approx((1.0 + (40 + 32 + 8 + 10 / 3) / 100) / 3)
    assert intended["options"] == {"total": "intended"}


@pytest.mark.slow
def test_eval_run_end_to_end_with_the_tiny_model(tiny_original, tmp_path):
    data = make_dataset(tmp_path / "vlm")
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "vlabench", "--data", str(data),
                 "--out", str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["prompt"].count("<image>") == 2 for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 3 and 0.0 <= metrics["score"] <= 0.8 and (out / "report.md").is_file()

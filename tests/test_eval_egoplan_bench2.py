"""EgoPlan-Bench2 on a synthetic ``EgoPlan-Bench2.json`` with counter clips standing in for Ego4D videos."""

import json
import shutil
from pathlib import Path

import pytest

from fakes import ScriptedBackend
from media import frame_index, write_counter_video
from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, get_benchmark
from vlaser.eval.benchmarks.egoplan_bench2 import (
    FIXED_PREFIXES,
    OFFICIAL_PREFIXES,
    extract_choice,
    official_frames,
)
from vlaser.eval.runner import run
from vlaser.model.preprocess import ImageLoadError, decode_frames

VIDEO_1 = "ca6e9ec9-46ac-4a02-8034-7c31157dc52c"
VIDEO_2 = "0d270946-95c5-4e71-ae49-b9e802548147"


def _row(sample_id, domain, scenario, goal, choices, golden, start, end):
    return {"sample_id": sample_id, "domain": domain, "scenario": scenario, "task_goal": goal,
            "choice_a": choices[0], "choice_b": choices[1], "choice_c": choices[2], "choice_d": choices[3],
            "golden_choice_idx": golden, "answer": choices["ABCD".index(golden)], "task_start_frame": start,
            "current_observation_frame": end,
            "task_progress_metadata": [{"narration_text": "open oven", "start_frame": start, "stop_frame": start + 2}]}


def make_dataset(root: Path) -> Path:
    """Three items in the official layout: two cut from a 40-frame clip, one from a 20-frame clip."""
    rows = [
        _row(f"{VIDEO_1}_2", "Hobbies", "baking", "bake pastry in the oven and set a stopwatch",
             ["attach stopwatch", "place oven tray", "operate oven", "set stopwatch"], "A", 3, 30),
        _row(f"{VIDEO_1}_5", "Hobbies", "crafting", "glue the paper flowers",
             ["cut paper", "apply glue", "fold paper", "paint petals"], "B", 0, 39),
        _row(f"{VIDEO_2}_0", "Daily life", "cooking", "make a sandwich",
             ["open fridge", "wash hands", "slice tomato", "spread butter"], "D", 5, 12),
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "EgoPlan-Bench2.json").write_text(json.dumps(rows, indent=2))
    write_counter_video(root / "videos" / f"{VIDEO_1}.mp4", 40)
    write_counter_video(root / "videos" / f"{VIDEO_2}.mp4", 20)
    return root


#: eval.py's QA_template filled for the first item, written out by hand
PROMPT_0 = ("\nSelect the best answer to the following multiple-choice question based on the video. Respond with "
            "only the letter (A, B, C, or D) of the correct option.\n\nConsidering the progress shown in the video "
            "and my current observation in the last frame, what action should I take next in order to bake pastry "
            "in the oven and set a stopwatch?\n\nA. attach stopwatch\nB. place oven tray\nC. operate oven\n"
            "D. set stopwatch\n")


def test_load_reads_the_official_fields(tmp_path):
    bench = get_benchmark("egoplan_bench2")
    data = make_dataset(tmp_path / "d")
    items = bench.load(data)
    assert [i.id for i in items] == [f"{VIDEO_1}_2", f"{VIDEO_1}_5", f"{VIDEO_2}_0"]
    assert items[0].video == data / "videos" / f"{VIDEO_1}.mp4" and items[2].video == data / "videos" / f"{VIDEO_2}.mp4"
    assert items[0].images == [] and items[0].group == "Hobbies" and items[2].meta["scenario"] == "cooking"
    assert bench.prompt(items[0], "official") == bench.prompt(items[0], "vlaser") == PROMPT_0
    assert items[0].question == PROMPT_0[PROMPT_0.index("Considering"):-1]
    assert (bench.settings.frames, bench.settings.max_new_tokens, bench.pointing) == (8, 512, False)
    assert bench.frame_line == "Image-{i}: <image>\n"


def test_video_file_is_the_text_before_the_first_underscore(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    rows = [_row("clip_part_3", "Work", "office", "file the papers", ["a", "b", "c", "d"], "C", 0, 5)]
    (data / "EgoPlan-Bench2.json").write_text(json.dumps(rows))
    # eval.py: qa_id.split('_')[0]; "up to the last underscore" would name clip_part.mp4 instead
    assert get_benchmark("egoplan_bench2").load(data)[0].video == data / "videos" / "clip.mp4"
    moved = get_benchmark("egoplan_bench2", videos=str(tmp_path / "ego4d" / "v1_288p")).load(data)[0]
    assert moved.video == tmp_path / "ego4d" / "v1_288p" / "clip.mp4"


def test_official_frame_choice():
    # np.linspace(0, 656, 8, dtype=int) for the README's example item: floor(656 * k / 7)
    assert official_frames(0, 656, 8) == [0, 93, 187, 281, 374, 468, 562, 656]
    assert official_frames(3, 30, 8) == [3, 6, 10, 14, 18, 22, 26, 30]
    assert official_frames(7, 7, 3) == [7, 7, 7]
    assert official_frames(10, 20, 1) == [10]  # one frame is the task start, not the current observation


def test_sampled_frames_read_back_from_the_pixels(tmp_path):
    bench = get_benchmark("egoplan_bench2")
    items = bench.load(make_dataset(tmp_path / "d"))
    expected = [[3, 6, 10, 14, 18, 22, 26, 30], [0, 5, 11, 16, 22, 27, 33, 39], [5, 6, 7, 8, 9, 10, 11, 12]]
    for item, want in zip(items, expected):
        frames = decode_frames(item.video, lambda n, item=item: bench.frame_indices(item, n, 8))
        assert [frame_index(f) for f in frames] == want, item.id
    frames = decode_frames(items[1].video, lambda n: bench.frame_indices(items[1], n, 4))
    assert [frame_index(f) for f in frames] == [0, 13, 26, 39]


def test_frame_range_past_the_clip_names_item_and_file(tmp_path):
    bench = get_benchmark("egoplan_bench2")
    data = make_dataset(tmp_path / "d")
    write_counter_video(data / "videos" / f"{VIDEO_1}.mp4", 30)  # a shorter download: frames 30 and 39 are gone
    items = bench.load(data)
    with pytest.raises(ImageLoadError, match=rf"{VIDEO_1}\.mp4: item {VIDEO_1}_2 asks for frames 3\.\.30 .* 30 frames"):
        decode_frames(items[0].video, lambda n: bench.frame_indices(items[0], n, 8))
    with pytest.raises(ValueError, match="at least 1"):
        bench.frame_indices(items[0], 40, 0)


def test_prefix_lists_are_pinned():
    assert OFFICIAL_PREFIXES == ("The best answer is", "The correct answer is", "The answer is", "The answer",
                                 "The best option isThe correct option is", "Best answer:Best option:", "Answer:",
                                 "Option:", "The correct answer", "The correct option")
    assert FIXED_PREFIXES == ("The best answer is", "The correct answer is", "The answer is", "The answer",
                              "The best option is", "The correct option is", "Best answer:", "Best option:",
                              "Answer:", "Option:", "The correct answer", "The correct option")


@pytest.mark.parametrize("response, official, fixed", [
    ("A", "A", "A"),
    ("  D\n", "D", "D"),
    ("(B) pick up the knife", "B", "B"),
    ("The best answer is C", "C", "C"),
    ("The answer is D.", "D", "D"),
    ("Answer: A", "A", "A"),
    ("ANSWER: D", "A", "A"),  # prefixes are case-sensitive: the A of ANSWER is read
    ("Based on the video, D", "B", "B"),  # the first capital A-D anywhere
    ("According to the video, C", "A", "A"),
    ("a", "", ""),  # lowercase is no answer
    ("I think the person should pick up the knife and then cut the bread", "", ""),  # 14 words, no letter
    ("I think the person should pick up the knife so the answer is C here", "C", "C"),  # 15 words with a letter
    ("Best option: D", "B", "D"),  # the missing commas: the joined prefix never matches, "Best" gives B
    ("Best answer: C", "B", "C"),
    ("The best option is A", "A", "A"),
    ("", "", ""),
])
def test_extraction_as_eval_py(response, official, fixed):
    assert extract_choice(response) == official
    assert extract_choice(response, FIXED_PREFIXES) == fixed


def test_score_and_the_fixed_prefixes_option(tmp_path):
    items = get_benchmark("egoplan_bench2").load(make_dataset(tmp_path / "d"))
    official, fixed = get_benchmark("egoplan_bench2"), get_benchmark("egoplan_bench2", fixed_prefixes=True)
    assert official.score(items[0], "A").value == 1.0 and official.score(items[0], "B").value == 0.0
    lowercase = official.score(items[0], "a")
    assert (lowercase.value, lowercase.parsed, lowercase.extra["choice"]) == (0.0, False, "")
    assert official.score(items[1], "Best option: C").value == 1.0  # read as B, the answer, by luck
    assert fixed.score(items[1], "Best option: C").value == 0.0


def test_bad_annotations_are_named(tmp_path):
    bench = get_benchmark("egoplan_bench2")
    with pytest.raises(BenchmarkDataError, match="EgoPlan-Bench2.json not found"):
        bench.load(tmp_path)
    data = make_dataset(tmp_path / "d")
    path = data / "EgoPlan-Bench2.json"
    good = json.loads(path.read_text())
    cases = [
        ([{k: v for k, v in good[0].items() if k != "choice_c"}], r"item 0 .*missing field\(s\) \['choice_c'\]"),
        ([good[0], {**good[1], "golden_choice_idx": "b"}], r"item 1 .*golden_choice_idx must be one of"),
        ([{**good[0], "current_observation_frame": 30.5}], "current_observation_frame must be a non-negative"),
        ([{**good[0], "task_start_frame": -1}], "task_start_frame must be a non-negative"),
        ([good[0], good[1], good[0]], "appears at items 0 and 2"),
        ([{**good[0], "sample_id": 7}], "sample_id must be a non-empty string"),
        ({"items": good}, "expected a list"),
    ]
    for rows, message in cases:
        path.write_text(json.dumps(rows))
        with pytest.raises(BenchmarkDataError, match=message):
            bench.load(data)
    path.write_text("[{")
    with pytest.raises(BenchmarkDataError, match="not valid JSON"):
        bench.load(data)
    with pytest.raises(ValueError, match="unknown option"):
        get_benchmark("egoplan_bench2", fixed_prefix=True)


def test_run_sends_image_lines_and_the_official_frames(tmp_path):
    data = make_dataset(tmp_path / "d")
    backend = ScriptedBackend("A")
    metrics = run(get_benchmark("egoplan_bench2"), backend, data, tmp_path / "out", batch_size=2)
    lines = "".join(f"Image-{i}: <image>\n" for i in range(1, 9))  # models/InternVL2.py's frame lines
    (first,) = [r for r, prompt in zip(backend.requests, backend.asked) if prompt == lines + PROMPT_0]
    assert [(p.max_tiles, p.frame) for p in first.pictures] == [(1, True)] * 8
    assert [frame_index(p.source) for p in first.pictures] == [3, 6, 10, 14, 18, 22, 26, 30]
    sent = [[frame_index(p.source) for p in r.pictures] for r in backend.requests]
    assert len(sent) == 3 and [5, 6, 7, 8, 9, 10, 11, 12] in sent
    assert metrics["score"] == pytest.approx(1 / 3) and metrics["n_scored"] == 3
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["frames"] == 8


def test_missing_video_names_file_and_item(tmp_path):
    data = make_dataset(tmp_path / "d")
    (data / "videos" / f"{VIDEO_2}.mp4").unlink()
    metrics = run(get_benchmark("egoplan_bench2"), ScriptedBackend("D"), data, tmp_path / "out")
    assert metrics["n_scored"] == 3 and metrics["score"] == pytest.approx(0.0)  # the failed item scores 0
    (error,) = metrics["errors"]
    assert f"{VIDEO_2}_0" in error and f"{VIDEO_2}.mp4" in error


def test_eval_score_without_videos(tmp_path):
    data = make_dataset(tmp_path / "d")
    shutil.rmtree(data / "videos")
    preds = tmp_path / "preds.jsonl"
    answers = {f"{VIDEO_1}_2": "A", f"{VIDEO_1}_5": "Best option: C", f"{VIDEO_2}_0": "d", "nope_1": "A"}
    preds.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in answers.items()))
    base = ["eval", "score", "--benchmark", "egoplan_bench2", "--data", str(data), "--predictions", str(preds)]
    assert main([*base, "--out", str(tmp_path / "official")]) == 0
    metrics = json.loads((tmp_path / "official" / "metrics.json").read_text())
    assert metrics["score"] == pytest.approx(2 / 3) and metrics["n_unparsed"] == 1 and metrics["n_unknown_ids"] == 1
    assert metrics["by_domain"] == metrics["by_group"] == {"Daily life": {"score": 0.0, "n": 1},
                                                            "Hobbies": {"score": 1.0, "n": 2}}
    assert metrics["by_scenario"] == {"baking": {"score": 1.0, "n": 1}, "cooking": {"score": 0.0, "n": 1},
                                      "crafting": {"score": 1.0, "n": 1}}
    assert "vlaser" in metrics["breakdown_note"]
    assert main([*base, "--out", str(tmp_path / "fixed"), "--option", "fixed_prefixes=true"]) == 0
    assert json.loads((tmp_path / "fixed" / "metrics.json").read_text())["score"] == pytest.approx(1 / 3)


def test_eval_run_end_to_end_with_the_tiny_model(tiny_original, tmp_path):
    data = make_dataset(tmp_path / "d")
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "egoplan_bench2", "--data", str(data),
                 "--out", str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"{VIDEO_1}_2", f"{VIDEO_1}_5", f"{VIDEO_2}_0"]
    assert all("error" not in r for r in records) and records[0]["prompt"].endswith(PROMPT_0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == metrics["n_scored"] == 3 and set(metrics["by_domain"]) <= {"Hobbies", "Daily life"}

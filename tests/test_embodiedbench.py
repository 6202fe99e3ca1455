"""EmbodiedBench: its plan format and request shape against vlaser's request path, and the results import."""

import base64
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from fakes import tagged
from media import data_url
from vlaser.cli import main
from vlaser.eval.backends import to_payload
from vlaser.eval.benchmark import BenchmarkDataError
from vlaser.eval.embodiedbench import (
    EMPTY_PLAN,
    INVALID_PLAN,
    JSON_TEMPLATE,
    action_list,
    first_step_prompt,
    fix_json,
    import_results,
    parse_plan,
)
from vlaser.inference import GenerationParams, Request, Turn
from vlaser.inference.prepare import prepare
from vlaser.model.preprocess import image_to_tiles
from vlaser.model.template import build_chat_prompt
from vlaser.serve.messages import parse_chat_request

# ---- the answer format ------------------------------------------------------------------------------------------

# planner_utils.template, typed by hand from the official text (one literal, so a slip in either copy shows)
OFFICIAL_TEMPLATE = (
    "\nThe output json format should be {'visual_state_description':str, 'reasoning_and_reflection':str, "
    "'language_plan':str, 'executable_plan':List[{'action_id':int, 'action_name':str}...]}\nThe fields in above "
    "JSON follows the purpose below:\n1. visual_state_description is for description of current state from the "
    "visual image, \n2. reasoning_and_reflection is for summarizing the history of interactions and any available "
    "environmental feedback. Additionally, provide reasoning as to why the last action or plan failed and did not "
    "finish the task, \n3. language_plan is for describing a list of actions to achieve the user instruction. Each "
    "action is started by the step number and the action name, \n4. executable_plan is a list of actions needed to "
    "achieve the user instruction, with each action having an action ID and a name.\n5. keep your plan efficient "
    "and concise.\n!!! When generating content for JSON strings, avoid using any contractions or abbreviated forms "
    "(like 's, 're, 've, 'll, 'd, n't) that use apostrophes. Instead, write out full forms (is, are, have, will, "
    "would, not) to prevent parsing errors in JSON. Please do not output any other thing more than the "
    "above-mentioned JSON, do not include ```json and ```!!!.\n"
)
ACTIONS = ["find a Apple", "pick up the Apple", "find a Fridge", "open the Fridge", "put down the object in hand"]
SYSTEM = "## You are a robot.\n\n## The available action id (0 ~ {}) and action names are: {}.\n\n{}\n\n## Guidelines"


def plan(*steps, **fields) -> str:
    """An answer shaped as the model is asked to write it."""
    return json.dumps({"visual_state_description": "An apple on the table.",
                       "reasoning_and_reflection": "Find the apple, then put it in the fridge.",
                       "language_plan": "1. find a Apple\n2. pick up the Apple", **fields,
                       "executable_plan": list(steps)})


def test_json_template_is_the_official_text():
    assert JSON_TEMPLATE == OFFICIAL_TEMPLATE


def test_first_step_prompt_as_the_planner_builds_it():
    assert action_list(["a", "b", "c"]) == "\naction id 0: a, \naction id 1: b, \naction id 2: c"
    prompt = first_step_prompt(SYSTEM, ACTIONS[:2], "Put an apple in the fridge.", examples=["ex A", "ex B"])
    assert prompt == (
        "## You are a robot.\n\n## The available action id (0 ~ 1) and action names are: \naction id 0: find a "
        "Apple, \naction id 1: pick up the Apple.\n\n## Task Execution Example 0: \n ex A\n\n## Task Execution "
        "Example 1: \n ex B\n\n## Guidelines\n\n## Now the human instruction is: Put an apple in the fridge. You are "
        "supposed to output in json. You need to describe current visual state from the image, output your "
        "reasoning steps and plan. At the end, output the action id (0 ~ 1) from the available actions to excute."
        + OFFICIAL_TEMPLATE)


def test_fix_json_quirks():
    # every ' becomes ", then the listed contractions are put back
    assert fix_json("{'a': 'the robot's arm'}") == '{"a": "the robot\'s arm"}'
    assert fix_json("{'a': 'the robots' arm'}") == '{"a": "the robots" arm"}'  # still broken JSON
    assert fix_json('```json\n{"a": 1}\n```') == '\n{"a": 1}\n'
    # stray quotes are escaped inside reasoning_and_reflection only
    assert fix_json('{"reasoning_and_reflection": "it is "hot"", "language_plan": "say "hi""}') == \
        '{"reasoning_and_reflection": "it is \\"hot\\"", "language_plan": "say "hi""}'


def test_parse_plan_reproduces_json_to_action():
    n = len(ACTIONS)
    step = [{"action_id": i, "action_name": ACTIONS[i]} for i in range(n)]
    assert parse_plan(plan(step[0], step[1]), n) == [0, 1]
    assert parse_plan("```json\n" + plan(step[2]) + "\n```", n) == [2]  # fences go in fix_json ...
    assert parse_plan("```json\n" + plan(step[2]) + "\n```", n, fix=False) == INVALID_PLAN  # ... not in the parser
    assert parse_plan("Here is my plan: " + plan(step[2]), n) == INVALID_PLAN  # no JSON search in the text
    assert parse_plan(plan(), n) == EMPTY_PLAN
    assert parse_plan(json.dumps({"executable_plan": ""}), n) == EMPTY_PLAN  # an empty string iterates as empty
    assert parse_plan(json.dumps({"language_plan": "x"}), n) == INVALID_PLAN
    assert parse_plan(json.dumps([{"action_id": 1}]), n) == INVALID_PLAN
    # out-of-range ids: the plan stops before the first one, or is invalid when it is the first
    assert parse_plan(plan(step[1], {"action_id": 9}, step[2]), n) == [1]
    assert parse_plan(plan({"action_id": -1}, step[2]), n) == INVALID_PLAN
    # a step without an integer id ends the plan there
    assert parse_plan(plan(step[1], {"action_name": "open the Fridge"}, step[3]), n) == [1]
    assert parse_plan(plan(step[1], {"action_id": "3"}, step[3]), n) == [1]
    assert parse_plan(plan({"action_id": 1.0}), n) == INVALID_PLAN
    assert parse_plan(plan(step[1], 3), n) == INVALID_PLAN  # "action_id" in 3 raises: the whole plan is invalid
    assert parse_plan(plan({"action_id": True}), n) == [True]  # bool is an int to isinstance
    # the apostrophe rule of fix_json decides whether an answer parses
    assert parse_plan(plan(step[1]).replace("Find the apple", "Find the robot's apple"), n) == [1]
    assert parse_plan(plan(step[1]).replace("An apple", "The robots' apple"), n) == INVALID_PLAN
    assert parse_plan(plan(step[1]).replace("Find the apple", "Find the robots' apple"), n) == [1]  # escaped there
    assert parse_plan(plan(step[1]).replace('"', "'"), n) == [1]  # single-quoted JSON is repaired


def test_point_actions_only_where_the_evaluator_enables_them():
    click = {"action_name": "pick up the Apple", "point": [120.4, 80.6]}
    assert parse_plan(plan(click), 5, point_actions=True) == [{"action": "pickup_by_point", "point": [120, 81]}]
    assert parse_plan(plan(click), 5) == INVALID_PLAN  # EB-Habitat: no action_id, first step
    named = {"action_name": "open the Fridge at (300, 200)"}
    assert parse_plan(plan({"action_id": 0}, named), 5, point_actions=True) == \
        [0, {"action": "open_by_point", "point": [300, 200]}]
    explicit = {"action": "slice_by_point", "pixel": ["7", 8]}
    assert parse_plan(plan(explicit), 5, point_actions=True) == [{"action": "slice_by_point", "point": [7, 8]}]
    # the two official branches try the action words in different orders
    both = {"action_name": "pick up and put down", "point": [1, 2]}
    assert parse_plan(plan(both), 5, point_actions=True) == [{"action": "pickup_by_point", "point": [1, 2]}]
    both = {"action_name": "pick up and put down at 1, 2"}
    assert parse_plan(plan(both), 5, point_actions=True) == [{"action": "put_by_point", "point": [1, 2]}]
    infinite = plan({"action_name": "pick up the Apple", "point": [1, 2]}).replace("[1, 2]", "[Infinity, 2]")
    assert parse_plan(infinite, 5, point_actions=True) == INVALID_PLAN  # OverflowError escapes to the catch-all


# ---- the request path ---------------------------------------------------------------------------------------------

def eb_request(image: Image.Image, prompt: str, history: list | None = None, **extra) -> dict:
    """The body ``RemoteModel._call_intern38b`` posts: image part first, then the prompt."""
    user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": prompt}]}
    return {"model": "OpenGVLab/InternVL3-Vlaser-2B", "messages": (history or []) + [user], "temperature": 0,
            "max_tokens": 2048, **extra}


def test_parse_chat_request_pieces():
    red, blue = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (10, 40), (0, 0, 255))
    body = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image_url", "image_url":
                                     {"url": data_url(red)}}, {"type": "image_url", "image_url": data_url(blue)},
                                     {"type": "text", "text": "please."}]}],
        "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.5,
        "response_format": {"type": "json_object"}}
    request, params = parse_chat_request(body)
    assert request.system == "Be brief." and request.history == [Turn("Hello", "Hi.")]
    assert request.question == "Compare\n<image>\n<image>\nplease." and request.tagged
    images = [picture.source for picture in request.pictures]
    assert [im.size for im in images] == [(30, 20), (10, 40)] and images[0].getpixel((0, 0)) == (255, 0, 0)
    assert [picture.max_tiles for picture in request.pictures] == [None, None]  # the server's setting
    assert params == GenerationParams(max_new_tokens=20, temperature=0.5)
    plain, params = parse_chat_request({"messages": [{"role": "user", "content": "Hi"},
                                                     {"role": "user", "content": "you"}]})
    assert plain == Request("Hi\nyou") and params == GenerationParams()  # the defaults for fields not sent


def test_to_payload_round_trips_through_the_parser(tmp_path):
    pictures = []
    for k, color in enumerate([(255, 0, 0), (0, 255, 0)]):
        Image.new("RGB", (8, 8), color).save(tmp_path / f"{k}.png")
        pictures.append(tmp_path / f"{k}.png")
    for prompt in ("Image-1: <image>\nImage-2: <image>\nWhich is red?", "<image>\nA\n<image>\nB"):
        for engine in ("openai", "vlaser", "vllm", "lmdeploy"):  # vlaser serve reads every engine's shape
            payload = to_payload(tagged(prompt, pictures, [6, 6]), "m", GenerationParams(16), server=engine)
            request, params = parse_chat_request(payload)
            assert request.question == prompt and len(request.pictures) == 2 and params.max_new_tokens == 16, engine
    glued = parse_chat_request(to_payload(tagged("A<image>B", pictures[:1], [6]), "m", GenerationParams(16)))[0]
    assert glued.question == "A\n<image>\nB"  # a tag gets its own line unless whitespace precedes it


@pytest.mark.parametrize(("message", "error"), [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
     "message 0, part 0: remote image URLs are not fetched"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]},
     "message 0, part 0: bad base64"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]},
     "message 0, part 0: a data: URL must be base64-encoded"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]},
     "message 0, part 0: the data: URL does not hold a readable image"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
     "message 0, part 0: unsupported content part type 'input_audio'"),
    ({"role": "user", "content": "look at <image>"}, "message 0: the text contains a literal '<image>'"),
    ({"role": "user", "content": None}, "message 0: content must be a string or a list"),
    ({"role": "tool", "content": "x"}, "messages.0.role: Input should be 'system', 'developer', 'user' or 'assistant'"),
])
def test_parse_chat_request_refuses_bad_input(message, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        parse_chat_request({"messages": [message]})


def test_parse_chat_request_refuses_bad_conversations():
    user, assistant = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    picture = {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    cases = [([user, assistant], "message 1: the last message must be a user message"),
             ([assistant, user], "message 0: the conversation must start with a user message"),
             ([user, {"role": "system", "content": "s"}, user], "message 1: a system message is only accepted first"),
             ([user, picture, user], "message 1, part 0: images are only accepted in user messages")]
    for messages, error in cases:
        with pytest.raises(ValueError, match=error):
            parse_chat_request({"messages": messages})
    with pytest.raises(ValueError, match="messages: List should have at least 1 item"):
        parse_chat_request({"messages": []})
    with pytest.raises(ValueError, match="max_tokens: Input should be greater than or equal to 1"):
        parse_chat_request({"messages": [user], "max_tokens": 0})


def test_mislabelled_data_url_still_decodes():
    # EmbodiedBench's convert_format_2gemini relabels PNG bytes as image/jpeg; the bytes decide
    image = Image.new("RGB", (5, 5), (1, 2, 3))
    url = data_url(image, mime="image/jpeg")
    request = parse_chat_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url[:23] + "\n" + url[23:]}}]}]})[0]  # a wrapped line too
    assert request.question == "<image>" and request.pictures[0].source.getpixel((2, 2)) == (1, 2, 3)


def test_embodiedbench_request_runs_through_vlaser(loaded):
    """Contract: EmbodiedBench's request shape -> parse -> vlaser's template -> the model -> a plan it can use."""
    from vlaser.api import VLM

    model, tokenizer = loaded
    vlm = VLM(model, tokenizer)
    scene = Image.new("RGB", (600, 600), (120, 90, 60))
    prompt = first_step_prompt(SYSTEM, ACTIONS, "Put an apple in the fridge.")
    schema = {"type": "json_schema", "json_schema": {"name": "embodied_planning", "schema": {"type": "object"}}}
    request, params = parse_chat_request(eb_request(scene, prompt, response_format=schema))
    assert request.question == "<image>\n" + prompt and request.system is None and request.history == []
    assert (params.max_new_tokens, params.temperature) == (2048, 0)
    tiles = [image_to_tiles(p.source, max_num=6, image_size=vlm.image_size) for p in request.pictures]
    counts = [t.shape[0] for t in tiles]
    prepared = prepare(request, model, max_tiles=6)  # the server's path
    rendered = prepared.prompt
    assert prepared.num_patches == counts
    # no system message in the request: the model's own, exactly as model.chat would build it for one image
    assert rendered == build_chat_prompt(prompt, model.conv_template, counts, model.num_image_token,
                                         system_message=model.system_message)[1]
    assert rendered.startswith("<|im_start|>system\n" + model.system_message + "<|im_end|>\n<|im_start|>user\n<img>")
    assert rendered.endswith(OFFICIAL_TEMPLATE + "<|im_end|>\n<|im_start|>assistant\n")
    gen = {"max_new_tokens": 8, "do_sample": False}
    answer = model.generate_text(tokenizer, [rendered], torch.cat(tiles), gen)[0]
    assert answer == vlm.ask(scene, prompt, max_tiles=6, **gen)  # the serving path answers as the friendly API
    assert parse_plan(answer, len(ACTIONS), point_actions=True) == INVALID_PLAN  # a random tiny model: no plan
    # the second step with chat_history: the earlier answer comes back as an assistant turn with a text part
    history = eb_request(scene, prompt)["messages"] + [{"role": "assistant", "content": [
        {"type": "text", "text": answer}]}]
    second = parse_chat_request(eb_request(scene, "The human instruction is: go on.", history))[0]
    assert second.history == [Turn("<image>\n" + prompt, answer)] and len(second.pictures) == 2
    tiles2 = [image_to_tiles(p.source, max_num=6, image_size=vlm.image_size) for p in second.pictures]
    rendered2 = prepare(second, model, max_tiles=6).prompt
    assert rendered2.count("<img>") == 2
    assert isinstance(model.generate_text(tokenizer, [rendered2], torch.cat(tiles2), gen)[0], str)
    # what a real model returns, read as EmbodiedBench reads it
    good = plan({"action_id": 0, "action_name": ACTIONS[0]}, {"action_id": 1, "action_name": ACTIONS[1]},
                {"action_id": 2, "action_name": ACTIONS[2]}, {"action_id": 3, "action_name": ACTIONS[3]})
    assert parse_plan(good, len(ACTIONS), point_actions=True) == [0, 1, 2, 3]
    assert parse_plan(good[:-2], len(ACTIONS)) == INVALID_PLAN  # cut off by max_tokens
    assert parse_plan(plan(), len(ACTIONS)) == EMPTY_PLAN


# ---- importing the results ------------------------------------------------------------------------------------

RUN = "InternVL3-Vlaser-2B_baseline"
ALFRED = {  # subset -> (task_success, task_progress) per episode, in episode order from 1
    "base": [(1.0, 1.0), (0.0, 0.5), (1.0, 1.0), (1.0, 1.0)],
    "common_sense": [(0.0, 0.25), (0.0, 0.0), (1.0, 1.0)],
    "spatial": [(1.0, 1.0), (0.0, 0.5)],
}


def episode(success, progress, **extra) -> dict:
    """An ``episode_<i>_final_res.json`` as ``EB_AlfredEvaluator.evaluate`` fills it."""
    return {"reward": 0.5, "num_invalid_actions": 0, "empty_plan": 0, "instruction": "Put a washed apple away.",
            "task_success": success, "task_progress": progress, "num_steps": 7, "planner_steps": 2,
            "planner_output_error": 0, "num_invalid_action_ratio": 0.0, "episode_elapsed_seconds": 12.5, **extra}


def write_run(root: Path, env: str, run: str, subsets: dict) -> Path:
    """``running/<env>/<run>/<subset>/results/episode_<i>_final_res.json`` plus the official summary.json."""
    for subset, rows in subsets.items():
        folder = root / "running" / env / run / subset / "results"
        folder.mkdir(parents=True)
        for i, row in enumerate(rows, start=1):
            data = row if isinstance(row, dict) else episode(*row)
            (folder / f"episode_{i}_final_res.json").write_text(json.dumps(data))
        (folder / "summary.json").write_text(json.dumps({"task_progress": 0.9}))  # never an episode
        (root / "running" / env / run / subset / "episode_1_step_3.json").write_text('{"action_id": 1}\n')
    return root / "running"


def make_dataset(root: Path) -> Path:
    """A small EB-ALFRED run in the official layout; the folder to pass to ``vlaser eval import embodiedbench``."""
    return write_run(root, "eb_alfred", RUN, ALFRED)


def test_import_alfred_success_rates(tmp_path):
    running = make_dataset(tmp_path)
    results = running / "eb_alfred" / RUN / "common_sense" / "results"
    (results / "episode_4_final_res.json").write_text('{"reward": 0.1, "task_succ')  # a json.dump cut short
    (results / "episode_51_final_res.json").write_text(json.dumps(episode(1.0, 1.0)))  # not a test-set episode
    out = tmp_path / "out"
    metrics = import_results(running, out)["eb_alfred"]
    assert metrics["benchmark"] == "eb_alfred" and metrics["protocol"] == "official" and metrics["run"] == RUN
    assert metrics["by_group"] == {"base": {"score": 0.75, "n": 4, "task_progress": 0.875},
                                   "common_sense": {"score": pytest.approx(1 / 3), "n": 3,
                                                    "task_progress": pytest.approx(1.25 / 3)},
                                   "spatial": {"score": 0.5, "n": 2, "task_progress": 0.75}}
    assert list(metrics["by_group"]) == ["base", "common_sense", "spatial"]  # the official subset order
    assert metrics["score"] == pytest.approx(5 / 9)  # 3 + 1 + 1 successes over 9 readable episodes
    assert metrics["subset_mean_score"] == pytest.approx((0.75 + 1 / 3 + 0.5) / 3)
    assert metrics["task_progress"] == pytest.approx((3.5 + 1.25 + 1.5) / 9)
    assert metrics["task_progress"] != metrics["score"]  # summary.json's metric is not the success rate
    assert (metrics["n"], metrics["n_scored"], metrics["n_unparsed"]) == (10, 9, 1)
    assert (metrics["n_items"], metrics["n_missing_predictions"]) == (300, 290)
    assert (metrics["unknown_ids"], metrics["n_unknown_ids"]) == (["common_sense/episode_51"], 1)
    assert metrics["missing_subsets"] == ["complex_instruction", "visual_appearance", "long_horizon"]
    bad = f"eb_alfred/{RUN}/common_sense/results/episode_4_final_res.json"
    assert [u["file"] for u in metrics["unreadable_files"]] == [bad]
    assert metrics["unreadable_files"][0]["error"].startswith("JSONDecodeError")
    assert metrics["official_summary"]["base"] == {"task_progress": 0.9}
    folder = out / "eb_alfred"
    assert json.loads((folder / "metrics.json").read_text())["score"] == pytest.approx(5 / 9)
    report = (folder / "report.md").read_text()
    assert "**score 0.5556** over 9 scored of 300 items" in report and "| base | 0.7500 | 4 |" in report
    assert bad in report and "| common_sense | 0.3333 | 0.4167 | 3 |" in report
    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 11 and {"id": "base/episode_2", "score": 0.0, "parsed": True, "group": "base",
                                "task_progress": 0.5, "file": "eb_alfred/" + RUN + "/base/results/"
                                "episode_2_final_res.json"} in rows
    assert json.loads((folder / "run.json").read_text())["model"] == RUN


def test_imported_run_joins_the_cross_run_report(tmp_path, capsys):
    out = tmp_path / "out"
    # one run folder works as well as the whole running/ folder
    assert main(["eval", "import", "embodiedbench", str(make_dataset(tmp_path) / "eb_alfred" / RUN),
                 "--out", str(out)]) == 0
    assert "eb_alfred: 0.5556 over 9 episodes" in capsys.readouterr().out
    assert main(["eval", "report", str(out / "eb_alfred")]) == 0
    table = capsys.readouterr().out
    assert "| model | eb_alfred |" in table and f"| {RUN} ({out / 'eb_alfred'}) | 55.6 |" in table


def test_import_habitat_quirks(tmp_path):
    rows = [episode(True, 1.0, subgoal_reward=1.0, episode_elapsed_seconds=[3.2]),
            episode(False, [0.5], reward=math.nan, episode_elapsed_seconds=[1.0]),
            episode(0, 0.0)]
    running = write_run(tmp_path, "eb_habitat", "gpt-4o-mini_baseline", {"spatial_relationship": rows})
    write_run(tmp_path, "eb_alfred", RUN, {"base": [(1.0, 1.0)]})
    write_run(tmp_path, "eb_nav", "gpt-4o_baseline", {"base": [(1.0, 1.0)]})  # EB-Navigation: left out
    out = tmp_path / "out"
    both = import_results(running, out)
    assert sorted(both) == ["eb_alfred", "eb_habitat"] and (out / "eb_habitat" / "report.md").is_file()
    habitat = both["eb_habitat"]
    assert habitat["by_group"] == {"spatial_relationship": {"score": pytest.approx(1 / 3), "n": 3,
                                                            "task_progress": 0.5}}
    only = import_results(running, tmp_path / "only", env="eb-hab")
    assert list(only) == ["eb_habitat"] and len(only["eb_habitat"]["ignored_files"]) == 2
    assert habitat["ignored_files"] == ["eb_nav/gpt-4o_baseline/base/results/episode_1_final_res.json (an eb_nav "
                                        "result: only EB-ALFRED and EB-Habitat are imported)"]


def test_import_refuses_what_it_cannot_attribute(tmp_path):
    with pytest.raises(BenchmarkDataError, match="no EmbodiedBench episode results"):
        import_results(tmp_path, tmp_path / "out")
    running = write_run(tmp_path / "a", "eb_alfred", RUN, ALFRED)
    write_run(tmp_path / "a", "eb_alfred", "gpt-4o_baseline", {"base": [(1.0, 1.0)]})
    with pytest.raises(BenchmarkDataError, match=r"2 eb_alfred runs \(\['InternVL3-Vlaser-2B_baseline', 'gpt-4o"):
        import_results(running, tmp_path / "out")
    moved = write_run(tmp_path / "b", "eb_alfred", RUN, {"spatial_relationship": [(1.0, 1.0)]})
    with pytest.raises(BenchmarkDataError, match="'spatial_relationship' is not an eb_alfred subset"):
        import_results(moved, tmp_path / "out")
    lone = tmp_path / "c" / RUN / "base" / "results"
    lone.mkdir(parents=True)
    (lone / "episode_1_final_res.json").write_text(json.dumps(episode(1.0, 1.0)))
    with pytest.raises(BenchmarkDataError, match="no eb_alfred or eb_habitat folder above it"):
        import_results(tmp_path / "c", tmp_path / "out")
    assert import_results(tmp_path / "c", tmp_path / "out", env="eb_alfred")["eb_alfred"]["run"] == RUN
    with pytest.raises(ValueError, match="env must be one of"):
        import_results(tmp_path / "c", tmp_path / "out", env="eb_nav")

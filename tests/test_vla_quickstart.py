"""``run_quickstart``: the issue's targets on the default step budget (slow: a few minutes on 2 cores), and the
quick checks of its inputs and pictures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlaser.errors import UserInputError
from vlaser.vla import env as reach
from vlaser.vla.evaluate import ScriptedPolicy, rollout
from vlaser.vla.quickstart import DEFAULT_STEPS, DEMOS, frame_strip, run_quickstart, warnings


@pytest.mark.slow
def test_quickstart_reaches_the_issue_targets(tmp_path):
    report = run_quickstart(tmp_path / "qs", seed=0, progress=False)
    assert report["training"]["steps"] == DEFAULT_STEPS  # a step budget: the same run on any machine
    assert report["episodes"] == 100
    trained, blind = report["trained"]["success_rate"], report["blind"]["success_rate"]
    assert trained >= 0.80
    assert trained >= blind + 0.20
    assert report["untrained"]["success_rate"] <= 0.15
    assert report["colour_swap"]["to_other_object"] >= 0.70
    assert report["chunks_per_second"] > 0
    assert json.loads((tmp_path / "qs" / "report.json").read_text())["trained"] == report["trained"]
    for name in ["report.md", *report["files"]]:
        assert (tmp_path / "qs" / name).is_file(), name
    assert [p["step"] for p in report["curve"]][-1] == DEFAULT_STEPS


def test_quickstart_refuses_a_used_folder_and_bad_budgets(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(UserInputError, match="not empty; pass --overwrite"):
        run_quickstart(tmp_path / "used", progress=False)
    with pytest.raises(UserInputError, match="train_steps"):
        run_quickstart(tmp_path / "a", train_steps=0, progress=False)
    with pytest.raises(UserInputError, match="episodes"):
        run_quickstart(tmp_path / "b", episodes=0, progress=False)
    with pytest.raises(UserInputError, match="demos"):
        run_quickstart(tmp_path / "c", demos=0, progress=False)
    with pytest.raises(UserInputError, match="minutes"):
        run_quickstart(tmp_path / "d", minutes=0, progress=False)


def test_a_budget_below_the_tested_one_is_flagged():
    assert warnings({"steps": DEFAULT_STEPS, "demonstrations": DEMOS}) == []
    short = warnings({"steps": 20, "demonstrations": DEMOS})
    assert short == [f"Trained 20 steps, below the tested budget of {DEFAULT_STEPS:,}: the success rates are not "
                     "comparable to the tested ones."]
    assert len(warnings({"steps": 20, "demonstrations": 8})) == 2


@pytest.mark.slow
def test_a_short_run_overwrites_stops_at_its_minutes_and_warns(tmp_path):
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "old.txt").write_text("")
    report = run_quickstart(tmp_path / "qs", train_steps=50, minutes=1e-4, demos=8, episodes=2, progress=False,
                            overwrite=True)
    assert not (tmp_path / "qs" / "old.txt").exists()
    assert report["training"]["steps"] == 1 and report["training"]["step_budget"] == 50  # the time ran out
    assert [p["step"] for p in report["curve"]] == [1]
    assert report["training"]["demonstrations"] == 8 and len(report["warnings"]) == 2
    assert "**Warning:** Trained 1 steps, below the tested budget" in (tmp_path / "qs" / "report.md").read_text()
    assert report["config"]["image_size"] == reach.SIZE  # the backbone's, not asked for


def test_frame_strip_has_a_row_per_recorded_episode(tmp_path):
    result = rollout(ScriptedPolicy(), reach.heldout_seeds(6, 0), record=3)
    frame_strip(result, tmp_path / "strip.png", "scripted")
    image = Image.open(tmp_path / "strip.png")
    longest = max(len(f) for f in result.frames.values())
    assert image.width == longest * (2 * reach.SIZE + 4) + 4
    assert image.height == 18 + 3 * (2 * reach.SIZE + 18 + 4)

"""bench/device_check.py, the check a lent GPU runs: its parts fit the window, a step past its limit is recorded,
and ``--cpu`` runs every step end to end (so the script is never first run on a GPU)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "bench" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_part_fits_one_device_command(check):
    assert set(check.STEPS) == {1, 2}
    for steps in check.STEPS.values():
        assert sum(limit for _, limit in steps) <= check.PART_BUDGET == 280
    names = [name for steps in check.STEPS.values() for name, _ in steps]
    assert sorted(names) == sorted(check.STEP_FUNCTIONS)  # every step runs in exactly one part


def test_a_step_past_its_limit_is_killed_and_recorded(check, tmp_path):
    result = check.run_step("gpu_tests", 0.5, tmp_path, cpu=True)
    assert result["status"] == "timeout" and "0.5 s limit" in result["error"] and result["wall_s"] < 30
    assert json.loads((tmp_path / "gpu_tests.json").read_text()) == result
    assert (tmp_path / "gpu_tests.log").is_file()


def _part(part: int, out: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(out)}
    proc = subprocess.run([sys.executable, "bench/device_check.py", "--part", str(part), "--cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _results(out: Path, names: list[str]) -> dict:
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in names}
    for name, r in results.items():
        assert r["step"] == name and r["wall_s"] > 0 and r["device"] == "cpu", r
    return results


def _table(printed: str) -> list[list[str]]:
    """The summary table's (step, status) rows, from its header line on."""
    lines = printed.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("step ")))
    return [line.split()[:2] for line in lines[start + 1:]]


@pytest.mark.slow
def test_cpu_run_of_part_1(check, tmp_path):
    printed = _part(1, tmp_path)
    r = _results(tmp_path, [name for name, _ in check.STEPS[1]])
    assert all(v["status"] == "ok" for v in r.values()), r
    tests = r["gpu_tests"]
    assert tests["tests"] >= 2 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    sft = r["sft_2b"]
    assert len(sft["chunked"]["losses"]) == len(sft["plain"]["losses"]) == 3
    assert sft["max_loss_difference"] < 1e-4  # float32: the chunked loss is the plain loss
    assert 0 < sft["chunked"]["loss_head_share"] < 1 and sft["plain"]["tokens_per_s"] > 0
    decode = r["decode_2b"]
    assert decode["same_answers_dynamic_static"] == decode["same_answers_static_graphs"] == "8/8"
    for mode in ("dynamic", "static", "graphs"):
        assert decode[mode]["max_rows_per_step"] == decode["batch"] and decode[mode]["items_per_s"] > 0
        assert decode[f"batch1_ms_per_token_{mode}"] > 0
    assert _table(printed) == [[name, "ok"] for name, _ in check.STEPS[1]]


@pytest.mark.slow
def test_cpu_run_of_part_2(check, tmp_path):
    printed = _part(2, tmp_path)
    r = _results(tmp_path, [name for name, _ in check.STEPS[2]])
    assert [r[name]["status"] for name in ("sft_8b", "fp32_parity", "vla_2b")] == ["ok"] * 3, r
    assert len(r["sft_8b"]["chunked"]["losses"]) == 3
    assert r["fp32_parity"]["same_answers"] == "4/4"
    assert r["vla_2b"]["act_ms"] > 0 and len(r["vla_2b"]["train_losses"]) == 2
    assert r["deepspeed"]["status"] == "skipped" and "deepspeed" in r["deepspeed"]["reason"].lower()
    assert _table(printed) == [["sft_8b", "ok"], ["fp32_parity", "ok"], ["vla_2b", "ok"], ["deepspeed", "skipped"]]

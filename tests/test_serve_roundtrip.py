"""Round trip: ``vlaser eval run --api-base`` against a real ``vlaser serve`` process on loopback gives the same
predictions as ``vlaser eval run --model`` with the same checkpoint (greedy): the eval client's prompt pieces,
system message and per-image tile limits reach the server's prompt exactly as the local backend builds it. The
server runs with an API key (``VLASER_API_KEY``), which the client sends from ``OPENAI_API_KEY``, as the README
says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import free_port, wait_for_health
from test_eval import _mmsi, where2place
from vlaser.cli import main

NAME = "tiny-vlaser"
KEY = "round-trip-key"


@pytest.fixture(scope="module")
def server(tiny_original, tmp_path_factory) -> Iterator[str]:
    """``vlaser serve`` as a subprocess on a free loopback port; its base URL once ``/health`` answers."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlaser", "serve", "--model", str(tiny_original),
                                 "--port", str(port), "--dtype", "float32", "--device", "cpu",
                                 "--served-model-name", NAME], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "VLASER_API_KEY": KEY})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(proc, base, log)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answers(out: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {line["id"]: line["response"] for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "build"), [("where2place", lambda p: where2place(p, n=4)), ("mmsi_bench", _mmsi)])
def test_eval_through_vlaser_serve_equals_the_local_model(name, build, server, tiny_original, tmp_path,
                                                          monkeypatch):
    """A pointing benchmark (one image, 12 tiles by its protocol) and a multi-image one (``Image-i`` lines)."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/models", timeout=10)
    assert refused.value.code == 401
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    data = build(tmp_path / name)
    common = ["eval", "run", "--benchmark", name, "--data", str(data), "--max-new-tokens", "12", "--pictures", "0"]
    assert main([*common, "--model", str(tiny_original), "--dtype", "float32", "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--api-base", server, "--api-model", NAME, "--out", str(tmp_path / "served")]) == 0
    assert json.loads((tmp_path / "served" / "run.json").read_text())["backend"]["server"] == "vlaser"  # asked
    assert main([*common, "--api-base", server, "--api-model", NAME, "--api-engine", "openai",
                 "--out", str(tmp_path / "parts")]) == 0  # the interleaved parts of other servers read the same
    local, served = answers(tmp_path / "local"), answers(tmp_path / "served")
    assert len(local) >= 3 and served == local and answers(tmp_path / "parts") == local
    assert len(set(local.values())) > 1, "the items must get different answers for the comparison to mean much"
    scores = [json.loads((tmp_path / d / "metrics.json").read_text())["score"] for d in ("local", "served")]
    assert scores[0] == scores[1]

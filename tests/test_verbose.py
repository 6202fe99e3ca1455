"""What ``-v`` adds: transformers' "Loading weights" bar (hidden without it) and, in ``vlaser serve``, how each
request's images were cut (as ``vlaser chat -v`` logs them)."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient
from PIL import Image

from media import data_url
from vlaser.cli import main
from vlaser.serve.app import create_app
from vlaser.serve.scheduler import Scheduler

BAR = "Loading weights"


def _chat(tiny_original, image, *verbose: str) -> int:
    return main([*verbose, "chat", "--model", str(tiny_original), "--image", str(image), "--max-new-tokens", "2",
                 "--dtype", "float32", "--device", "cpu", "What?"])


def test_chat_shows_the_weights_bar_only_with_v(tiny_original, tmp_path, capfd, caplog):
    image = tmp_path / "a.png"
    Image.new("RGB", (90, 60), (255, 0, 0)).save(image)
    assert _chat(tiny_original, image) == 0
    captured = capfd.readouterr()
    assert captured.out.strip() and BAR not in captured.err, captured.err[-2000:]
    with caplog.at_level(logging.INFO):  # what -v sets up outside pytest (which holds the root logger)
        assert _chat(tiny_original, image, "-v") == 0
    assert BAR in capfd.readouterr().err


def test_serve_logs_how_each_requests_images_were_cut(vlm, caplog):
    app = create_app(Scheduler(vlm, max_batch_size=2, max_wait_ms=1, max_tiles=6), "tiny")
    image = Image.new("RGB", (90, 60), (255, 0, 0))
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}},
               {"type": "image_url", "image_url": {"url": data_url(image), "max_dynamic_patch": 2}},
               {"type": "text", "text": "What?"}]
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="vlaser.serve.scheduler"):
        response = client.post("/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": content}], "max_tokens": 1})
        assert response.status_code == 200, response.text
    assert [r.getMessage() for r in caplog.records if r.name == "vlaser.serve.scheduler"] == [
        "image 1: 90x60 -> 6 tiles + thumbnail (max_num 6)", "image 2: 90x60 -> 2 tiles + thumbnail (max_num 2)"]

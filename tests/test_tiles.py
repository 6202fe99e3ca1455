"""The tile limit is decided once (``inference.prepare.resolve_max_tiles``): chat, serve and eval cut the same image
into the same tiles for the same checkpoint and settings, a checkpoint with ``dynamic_image_size: false`` included."""

import base64
import io
import json

import pytest
from PIL import Image

from test_eval import where2place
from vlaser.api import VLM
from vlaser.eval.backends import TransformersBackend
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.runner import run
from vlaser.inference.prepare import resolve_max_tiles
from vlaser.model.settings import ProcessorSettings
from vlaser.serve.messages import parse_chat_request
from vlaser.serve.scheduler import Job, Scheduler


def test_the_one_rule():
    dynamic, single = ProcessorSettings(max_dynamic_patch=12), ProcessorSettings(dynamic=False)
    assert [resolve_max_tiles(4, 6, s) for s in (dynamic, single, None)] == [4, 4, 4]  # explicit wins
    assert [resolve_max_tiles(None, 6, s) for s in (dynamic, single, None)] == [6, 1, 6]  # then the checkpoint's off
    assert [resolve_max_tiles(None, None, s) for s in (dynamic, single, None)] == [12, 1, None]


def _data_url(path) -> str:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _tiles_by_path(vlm, image, explicit, tmp_path) -> dict[str, int]:
    """How many tiles chat, serve and eval cut ``image`` into, given ``explicit`` (``--max-num``) or not."""
    chat = vlm.media(str(image), max_tiles=explicit).num_patches[0]
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                      {"type": "text", "text": "Where?"}]}]}
    request, params = parse_chat_request(body)
    serve = Scheduler(vlm, max_tiles=explicit)._prepare(Job(request, params)).num_patches[0]

    seen = []

    class Spy(TransformersBackend):
        def prepare(self, request, pending=None):
            prepared = super().prepare(request, pending)
            seen.append(prepared.num_patches[0])
            return prepared

    run(get_benchmark("where2place"), Spy("tiny", vlm=vlm), image.parent.parent, tmp_path / f"out{explicit}",
        limit=1, max_new_tokens=1, max_tiles=explicit, pictures=0)
    return {"chat": chat, "serve": serve, "eval": seen[0]}


@pytest.mark.parametrize("dynamic", [True, False])
def test_chat_serve_and_eval_tile_alike(loaded, tmp_path, monkeypatch, dynamic):
    model, tokenizer = loaded
    nested = getattr(model.config, "internvl_chat", None)
    if isinstance(nested, dict) and "dynamic_image_size" in nested:
        monkeypatch.setitem(nested, "dynamic_image_size", dynamic)
    else:
        monkeypatch.setattr(model.config, "dynamic_image_size", dynamic, raising=False)
    assert model.processor_settings.dynamic is dynamic
    vlm = VLM(model, tokenizer)
    image = where2place(tmp_path / "w2p", n=1) / "images" / "0.jpg"
    explicit = _tiles_by_path(vlm, image, 4, tmp_path)
    assert len(set(explicit.values())) == 1 and explicit["chat"] > 1, explicit  # an explicit --max-num: everywhere
    default = _tiles_by_path(vlm, image, None, tmp_path)
    if dynamic:  # chat and serve take the checkpoint's 12, eval the protocol's 12 (where2place's)
        assert len(set(default.values())) == 1 and default["chat"] > explicit["chat"], default
    else:  # trained on one tile: one tile everywhere (eval used to cut the protocol's 12)
        assert default == {"chat": 1, "serve": 1, "eval": 1}
        settings = json.loads((tmp_path / "outNone" / "run.json").read_text())["settings"]
        assert settings["max_tiles"] == 1  # the run records what it used

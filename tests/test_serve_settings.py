"""The server's settings are one limits object and one set of default decoding parameters, built by ``vlaser serve``'s
flags; without flags they are ``create_app``'s defaults, and the server's own defaults fit inside its caps."""

import argparse
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's tests need fastapi (pip install 'vlaser[serve]')")

from fastapi.testclient import TestClient

from test_serve_api import EchoEngine
from vlaser.cli import serve as cli_serve
from vlaser.inference.types import GenerationParams
from vlaser.serve.app import create_app
from vlaser.serve.messages import SERVER_LIMITS, MediaLimits


def _args(line: str):
    parser = argparse.ArgumentParser()
    cli_serve.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--model", "m", *line.split()])


def test_the_flags_build_the_limits(tmp_path):
    assert cli_serve.limits(_args("")) == SERVER_LIMITS  # no flags: create_app's defaults
    args = _args(f"--max-num 50 --max-num-cap 40 --max-tokens 100 --max-tokens-cap 200 --max-images 3 "
                 f"--max-pixels 900 --allow-remote-media --allow-private-media-hosts --allow-local-media {tmp_path}")
    # the server's own tile limit may be asked for, over --max-num-cap
    assert cli_serve.limits(args) == MediaLimits(max_images=3, max_new_tokens=200, max_tiles=50, max_pixels=900,
                                                 allow_remote=True, allow_private_hosts=True,
                                                 local_root=Path(tmp_path))
    assert cli_serve.limits(_args("--max-num 6 --max-num-cap 40")).max_tiles == 40


def test_the_default_answer_length_fits_under_the_cap():
    def asked(limits: MediaLimits, defaults: GenerationParams | None, **fields) -> int:
        engine = EchoEngine()
        with TestClient(create_app(engine, "echo", limits=limits, defaults=defaults)) as client:
            body = {"messages": [{"role": "user", "content": "Hi"}], **fields}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        return engine.jobs[0].params.max_new_tokens

    assert asked(MediaLimits(max_new_tokens=10), GenerationParams(max_new_tokens=50)) == 10
    assert asked(MediaLimits(max_new_tokens=10), GenerationParams(max_new_tokens=5)) == 5
    assert asked(MediaLimits(), GenerationParams(max_new_tokens=50)) == 50  # no cap: unchanged
    assert asked(SERVER_LIMITS, None) == GenerationParams().max_new_tokens == 1024  # vlaser serve's --max-tokens
    assert asked(MediaLimits(max_new_tokens=10), GenerationParams(max_new_tokens=50), max_tokens=7) == 7

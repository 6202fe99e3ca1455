"""A bounded fuzz run of ``vlaser serve``'s OpenAPI schema with schemathesis: a fixed number of generated
requests per operation, both bodies the schema allows and bodies it forbids (derandomized, so every run sends
the same ones), against the app on the tiny model behind a loopback uvicorn, each with a timeout. No answer
may be a 5xx, and none may hang."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from fakes import served
from fuzzing import fuzz_all

EXAMPLES = 50  # per operation and generation mode (schema-valid bodies; invalid ones)


@pytest.fixture(scope="module")
def base_url(tiny_original) -> Iterator[str]:
    from test_serve_contract import NAME, build_app
    from vlaser.inference.types import GenerationParams
    from vlaser.serve.messages import SERVER_LIMITS

    # valid bodies answer quickly
    app = build_app(tiny_original, NAME, limits=replace(SERVER_LIMITS, max_new_tokens=16),
                    defaults=GenerationParams(8))
    with served(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_generated_requests_get_no_server_error_and_no_hang(base_url):
    labels, statuses = fuzz_all(base_url, EXAMPLES)
    assert {"GET /health", "GET /v1/models", "POST /v1/chat/completions"} <= labels
    # the run reached the model (some bodies were valid) and the refusals (some were not)
    assert statuses["POST /v1/chat/completions", 2] > 0 and statuses["POST /v1/chat/completions", 4] > 0

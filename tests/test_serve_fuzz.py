"""A bounded fuzz run of ``vlaser serve``'s OpenAPI schema with schemathesis: a fixed number of generated
requests per operation, both bodies the schema allows and bodies it forbids (derandomized, so every run sends
the same ones), against the app on the tiny model behind a loopback uvicorn, each with a timeout. No answer
may be a 5xx, and none may hang."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

EXAMPLES = 50  # per operation and generation mode (schema-valid bodies; invalid ones)
TIMEOUT = 60  # seconds per request: one that takes longer counts as a hang


@pytest.fixture(scope="module")
def base_url(tiny_original) -> Iterator[str]:
    import uvicorn

    from test_serve_contract import NAME, build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(tiny_original, NAME, default_max_tokens=8, max_tokens_cap=16)  # valid bodies answer quickly
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.slow
def test_generated_requests_get_no_server_error_and_no_hang(base_url):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"GET /health", "GET /v1/models", "POST /v1/chat/completions"} <= {op.label for op in operations}
    statuses: Counter = Counter()
    for operation in operations:
        # the GET routes take no input, so they have no invalid requests to generate
        for mode in GenerationMode if operation.method.upper() == "POST" else [GenerationMode.POSITIVE]:
            fuzz(operation, mode, base_url, statuses)
    print(sorted(statuses.items()))
    # the run reached the model (some bodies were valid) and the refusals (some were not)
    assert statuses["POST /v1/chat/completions", 2] > 0 and statuses["POST /v1/chat/completions", 4] > 0


def fuzz(operation, mode, base_url: str, statuses: Counter) -> None:
    """``EXAMPLES`` generated requests to one operation; status classes counted in ``statuses``."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=TIMEOUT)
        statuses[operation.label, response.status_code // 100] += 1
        case.validate_response(response, checks=[not_a_server_error])

    run()

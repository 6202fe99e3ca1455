"""Shared piece of the servers' schemathesis runs (each server served by ``fakes.served``): the generated
requests to every operation of its OpenAPI schema, their status classes counted."""

from __future__ import annotations

from collections import Counter

TIMEOUT = 60  # seconds per request: one that takes longer counts as a hang


def fuzz_all(base_url: str, examples: int, error_body: bool = False) -> tuple[set[str], Counter]:
    """``examples`` generated requests per operation and mode (the GET routes take no input, so positive ones
    only); returns the operations' labels and ``(label, status // 100)`` counts. ``error_body``: every 4xx/5xx
    body must be the main server's error shape, without a Python repr."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter = Counter()
    for operation in operations:
        for mode in GenerationMode if operation.method.upper() == "POST" else [GenerationMode.POSITIVE]:
            _fuzz(operation, mode, base_url, statuses, examples, error_body)
    print(sorted(statuses.items()))
    return {op.label for op in operations}, statuses


def _fuzz(operation, mode, base_url: str, statuses: Counter, examples: int, error_body: bool) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=TIMEOUT)
        statuses[operation.label, response.status_code // 100] += 1
        if error_body and response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and "object at 0x" not in error["message"]
        case.validate_response(response, checks=[not_a_server_error])

    run()

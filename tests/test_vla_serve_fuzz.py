"""A bounded fuzz run of ``vlaser vla serve``'s OpenAPI schema with schemathesis, as ``test_serve_fuzz`` runs the
main server's: a fixed number of derandomized requests per operation, bodies the schema allows and bodies it
forbids, against the tiny policy behind a loopback uvicorn. No answer may be a 5xx or hang, and every refusal
is the main server's error body."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from fakes import free_port

EXAMPLES = 50  # per operation and generation mode
TIMEOUT = 60  # seconds per request: one that takes longer counts as a hang


@pytest.fixture(scope="module")
def base_url(tiny_original, tmp_path_factory) -> Iterator[str]:
    import uvicorn

    from vlaser.vla import env as reach
    from vlaser.vla.config import preset
    from vlaser.vla.data import LeRobotDataset, Normalizer
    from vlaser.vla.policy import VLAPolicy
    from vlaser.vla.serve import create_app

    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=2, action_dim=2), seed=0)
    policy.model.config = dataclasses.replace(policy.config, cameras={reach.CAMERA: [reach.SIZE, reach.SIZE]})
    demos = reach.write_demonstrations(tmp_path_factory.mktemp("vla-fuzz") / "demos", 2, seed=1)
    policy.normalizer = Normalizer(LeRobotDataset(demos).stats, mode="mean_std", gripper_dims={})  # unclipped
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(policy), host="127.0.0.1", port=port, log_level="warning"))
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
def test_generated_observations_get_no_server_error_and_no_hang(base_url):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"GET /health", "GET /info", "POST /act"} <= {op.label for op in operations}
    statuses: Counter = Counter()
    for operation in operations:
        for mode in GenerationMode if operation.method.upper() == "POST" else [GenerationMode.POSITIVE]:
            fuzz(operation, mode, base_url, statuses)
    print(sorted(statuses.items()))
    assert statuses["POST /act", 4] > 0 and not any(status == 5 for _, status in statuses)


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
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and "object at 0x" not in error["message"]
        case.validate_response(response, checks=[not_a_server_error])

    run()

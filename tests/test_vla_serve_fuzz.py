"""A bounded fuzz run of ``vlaser vla serve``'s OpenAPI schema with schemathesis, as ``test_serve_fuzz`` runs the
main server's: a fixed number of derandomized requests per operation, bodies the schema allows and bodies it
forbids, against the tiny policy behind a loopback uvicorn. No answer may be a 5xx or hang, and every refusal
is the main server's error body."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from fakes import served
from fuzzing import fuzz_all

EXAMPLES = 50  # per operation and generation mode


@pytest.fixture(scope="module")
def base_url(tiny_original, tmp_path_factory) -> Iterator[str]:
    from vlaser.vla import env as reach
    from vlaser.vla.config import preset
    from vlaser.vla.data import LeRobotDataset, Normalizer
    from vlaser.vla.policy import VLAPolicy
    from vlaser.vla.serve import create_app

    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=2, action_dim=2), seed=0)
    policy.model.config = dataclasses.replace(policy.config, cameras={reach.CAMERA: [reach.SIZE, reach.SIZE]})
    demos = reach.write_demonstrations(tmp_path_factory.mktemp("vla-fuzz") / "demos", 2, seed=1)
    policy.normalizer = Normalizer(LeRobotDataset(demos).stats, mode="mean_std", gripper_dims={})  # unclipped
    with served(create_app(policy)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_generated_observations_get_no_server_error_and_no_hang(base_url):
    labels, statuses = fuzz_all(base_url, EXAMPLES, error_body=True)
    assert {"GET /health", "GET /info", "POST /act"} <= labels
    assert statuses["POST /act", 4] > 0 and not any(status == 5 for _, status in statuses)

"""The policy server (/act, /health) and its standard-library client, over a real loopback server."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server's tests need fastapi (pip install 'vlaser[serve]')")

from fastapi.testclient import TestClient
from PIL import Image

from fakes import free_port
from vlaser.vla import env as reach
from vlaser.vla.client import PolicyClient, PolicyError, encode_image
from vlaser.vla.config import preset
from vlaser.vla.data import LeRobotDataset, Normalizer
from vlaser.vla.policy import VLAPolicy
from vlaser.vla.serve import create_app


@pytest.fixture(scope="module")
def policy(tiny_original, tmp_path_factory):
    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=2, action_dim=2), seed=0)
    demos = reach.write_demonstrations(tmp_path_factory.mktemp("vla") / "demos", 4, seed=1)
    policy.normalizer = Normalizer(LeRobotDataset(demos).stats, gripper_dims={})
    return policy


@pytest.fixture(scope="module")
def observation():
    obs = reach.ReachEnv.from_seed(3).observation()
    noise = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    return obs, noise


def test_act_answers_what_predict_gives(policy, observation):
    obs, noise = observation
    client = TestClient(create_app(policy, name="tiny"))
    health = client.get("/health").json()
    assert health == {"status": "ok", "policy": "tiny", "proprio_dim": 2, "action_dim": 2, "chunk_size": 4,
                      "act_steps": 4, "image_size": 56, "sticky_gripper_steps": 0, "normalized": True}
    body = {"images": [encode_image(obs["image"])], "state": obs["state"].tolist(),
            "instruction": obs["instruction"], "noise": noise.tolist()}
    answer = client.post("/act", json=body).json()
    expected = policy.predict(obs["image"], obs["state"], obs["instruction"], noise=noise)
    assert np.array_equal(np.asarray(answer["actions"], dtype=np.float32), expected)
    assert answer["act_steps"] == 4 and answer["seconds"] > 0
    png = io.BytesIO()
    Image.fromarray(obs["image"]).save(png, format="PNG")
    body["images"] = [encode_image(png.getvalue())]  # a PNG decodes to the same pixels
    assert client.post("/act", json=body).json()["actions"] == answer["actions"]


def test_bad_observations_are_refused_with_the_reason(policy, observation):
    obs, noise = observation
    client = TestClient(create_app(policy))
    good = {"images": [encode_image(obs["image"])], "state": obs["state"].tolist(), "instruction": "go"}
    cases = [({"images": [encode_image(obs["image"][..., :2].copy())]}, "images[0]: expected uint8 pixels"),
             ({"images": ["not base64!"]}, "images[0]: cannot decode"),
             ({"state": [0.0, 1.0, 2.0]}, "state has 3 values"),
             ({"noise": [[0.0, 0.0]]}, "noise has shape (1, 2)")]
    for change, message in cases:
        response = client.post("/act", json={**good, **change})
        assert response.status_code == 400 and message in response.json()["detail"], response.text
    assert client.post("/act", json={**good, "images": []}).status_code == 422
    assert client.post("/act", json={"state": [0.0, 0.0]}).status_code == 422


@pytest.fixture(scope="module")
def live(policy):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(policy), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the policy server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_client_file_alone_drives_the_server_without_vlaser(live, policy, observation, tmp_path):
    obs, noise = observation
    shutil.copy(sys.modules["vlaser.vla.client"].__file__, tmp_path / "policy_client.py")
    np.save(tmp_path / "image.npy", obs["image"])
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        from policy_client import PolicyClient
        client = PolicyClient({live!r})
        chunk = client.act([np.load({str(tmp_path / "image.npy")!r})], {obs["state"].tolist()!r},
                           {obs["instruction"]!r}, noise={noise.tolist()!r})
        print(json.dumps({{"health": client.health(), "chunk": chunk,
                          "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("vlaser", "torch"))}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["imported"] == [] and got["health"]["chunk_size"] == 4
    expected = policy.predict(obs["image"], obs["state"], obs["instruction"], noise=noise)
    assert np.array_equal(np.asarray(got["chunk"], dtype=np.float32), expected)


def test_client_errors_name_the_server_and_the_reason(live):
    client = PolicyClient(live)
    with pytest.raises(PolicyError, match="answered 400: state has 1 values"):
        client.act([np.zeros((8, 8, 3), dtype=np.uint8)], [0.0], "go")
    with pytest.raises(PolicyError, match="cannot reach the policy server"):
        PolicyClient(f"http://127.0.0.1:{free_port()}", timeout=2).health()
    with pytest.raises(TypeError, match="pixel array or encoded bytes"):
        encode_image([[1, 2, 3]])
    assert base64.b64decode(encode_image(b"\x89PNG")) == b"\x89PNG"

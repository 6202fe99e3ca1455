"""The policy server (/act, /health) and its standard-library client, over a real loopback server."""

from __future__ import annotations

import base64
import dataclasses
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


def _refusal(client, body) -> dict:
    """The error of a refused ``/act``: a 400 in the main server's shape."""
    response = client.post("/act", json=body) if not isinstance(body, (str, bytes)) else client.post(
        "/act", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]["type"] == "invalid_request_error"
    return response.json()["error"]


def test_bad_observations_are_refused_with_the_reason(policy, observation):
    obs, noise = observation
    client = TestClient(create_app(policy))
    good = {"images": [encode_image(obs["image"])], "state": obs["state"].tolist(), "instruction": "go"}
    cases = [({"images": [encode_image(obs["image"][..., :2].copy())]}, "images[0].shape: expected [height, width, 3]"),
             ({"images": ["not base64!"]}, "images[0]: not base64"),
             ({"state": [0.0, 1.0, 2.0]}, "state: 3 values; expected a list of 2 finite numbers"),
             ({"noise": [[0.0, 0.0]]}, "noise: shape (1, 2); expected null or 4 lists of 2 finite numbers"),
             ({"images": []}, "images: List should have at least 1 item"),
             ({"state": None}, "state: Input should be a valid list; expected a list of 2 finite numbers")]
    for change, message in cases:
        assert message in _refusal(client, {**good, **change})["message"]
    error = _refusal(client, {"state": [0.0, 0.0]})
    assert error["message"].startswith("images: missing; expected one image per camera") and error["param"] == "images"


def test_every_bad_request_names_the_field_without_echoing_it(policy, observation):
    """The issue's cases: each a 400 naming the field and what was expected; never the payload, never a repr."""
    obs, _ = observation
    one_camera, original = VLAPolicy(policy.model, policy.tokenizer, policy.normalizer), policy.config
    one_camera.model.config = dataclasses.replace(original, cameras={reach.CAMERA: [112, 112]})
    try:
        client = TestClient(create_app(one_camera))
        image = encode_image(obs["image"])
        good = {"images": [image], "state": obs["state"].tolist(), "instruction": "go"}
        floats = {**image, "dtype": "float32"}
        cases = {
            "two images": ({**good, "images": [image, image]},
                           "images: got 2; expected 1 camera image(s) in this order: observation.images.top (112x112)"),
            "float32": ({**good, "images": [floats]}, "images[0].dtype: expected uint8"),
            "bad png": ({**good, "images": [base64.b64encode(b"\x89PNG not really").decode()]},
                        "images[0]: not a PNG or JPEG image"),
            "short buffer": ({**good, "images": [{**image, "shape": [112, 112, 4]}]}, "images[0].shape"),
            "wrong size": ({**good, "images": [{**image, "shape": [100, 112, 3]}]},
                           "images[0].data: 37632 bytes, but shape [100, 112, 3] of uint8 needs 33600"),
            "state type": ({**good, "state": "zero"}, "state: Input should be a valid list"),
            "image type": ({**good, "images": [123]}, "images[0]: none of the allowed forms; expected 1 camera"),
            "no instruction": ({k: v for k, v in good.items() if k != "instruction"}, "instruction: missing"),
        }
        for name, (body, message) in cases.items():
            error = _refusal(client, body)
            assert message in error["message"], (name, error)
            assert image["data"][:40] not in error["message"] and "<" not in error["message"], name
        assert _refusal(client, "{not json")["message"].startswith("malformed JSON")
        assert _refusal(client, "[1, 2]")["message"].startswith("the body must be a JSON object")
    finally:
        policy.model.config = original


def test_non_finite_numbers_are_refused_and_never_answered(policy, observation, tmp_path):
    obs, noise = observation
    client = TestClient(create_app(policy))
    body = {"images": [encode_image(obs["image"])], "state": obs["state"].tolist(), "instruction": "go"}
    text = json.dumps({**body, "state": [float("nan"), 0.2]})  # what json.dumps sends by default
    assert _refusal(client, text)["message"].startswith("state[0] is not a finite number")
    text = json.dumps({**body, "noise": [[0.0, float("inf")]] + [[0.0, 0.0]] * 3})
    assert _refusal(client, text)["message"].startswith("noise[0][1] is not a finite number")
    assert client.post("/act", json={**body, "state": [0.5, 1e300]}).status_code == 200  # quantile: clipped
    demos = reach.write_demonstrations(tmp_path / "demos", 2, seed=1)
    unclipped = VLAPolicy(policy.model, policy.tokenizer,
                          Normalizer(LeRobotDataset(demos).stats, mode="mean_std", gripper_dims={}))
    message = _refusal(TestClient(create_app(unclipped)), {**body, "state": [0.5, 1e300]})["message"]
    assert message.startswith("state[1] is over 10000 once normalised")
    with pytest.raises(ValueError, match=r"state\[0\] is not a finite number"):
        PolicyClient("http://127.0.0.1:1").act([obs["image"]], [float("nan"), 0.2], "go")
    with pytest.raises(ValueError, match=r"noise\[1\]\[0\] is not a finite number"):
        PolicyClient("http://127.0.0.1:1").act([obs["image"]], [0.1, 0.2], "go", noise=[[0, 0], [float("inf"), 0]])


def test_info_says_what_the_policy_expects_and_the_stack_is_the_main_servers(policy, observation):
    obs, _ = observation
    client = TestClient(create_app(policy, name="tiny", api_key="k", max_body_bytes=4096))
    assert client.get("/health").status_code == 200  # open, as the main server's
    assert client.get("/info").status_code == 401 and "API key" in client.get("/info").json()["error"]["message"]
    info = client.get("/info", headers={"Authorization": "Bearer k"}).json()
    assert {k: info[k] for k in ("cameras", "image_size", "state_dim", "action_dim", "chunk_size", "act_steps")} == {
        "cameras": None, "image_size": 56, "state_dim": 2, "action_dim": 2, "chunk_size": 4, "act_steps": 4}
    assert "2 finite numbers" in info["expects"]["state"]
    body = {"images": [encode_image(obs["image"])], "state": obs["state"].tolist(), "instruction": "go"}
    assert client.post("/act", json=body).status_code == 401
    big = client.post("/act", json=body, headers={"Authorization": "Bearer k"})  # 37 kB of pixels over 4 kB
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    schema = client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()
    assert "422" not in schema["paths"]["/act"]["post"]["responses"]


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
    with pytest.raises(PolicyError, match="answered 400: state: 1 values; expected a list of 2 finite numbers"):
        client.act([np.zeros((8, 8, 3), dtype=np.uint8)], [0.0], "go")
    with pytest.raises(PolicyError, match="cannot reach the policy server"):
        PolicyClient(f"http://127.0.0.1:{free_port()}", timeout=2).health()
    with pytest.raises(TypeError, match="pixel array or encoded bytes"):
        encode_image([[1, 2, 3]])
    assert base64.b64decode(encode_image(b"\x89PNG")) == b"\x89PNG"

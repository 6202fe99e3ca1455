"""Contract: the request bodies vLLM, LMDeploy, vlaser's own eval client and EmbodiedBench send to an InternVL
server, replayed against ``vlaser serve``'s app on the tiny model, get the response a client written for those
engines reads, and the answer ``model.chat`` gives for the same prompt and tiles.

Bodies follow the engines' documentation: vLLM's OpenAI-compatible server (its multimodal client example: text,
then an ``image_url`` part; ``max_completion_tokens``; the request-level ``mm_processor_kwargs`` its InternVL
processor reads ``max_dynamic_patch`` from; ``min_tokens``, ``top_k``, ``stream_options``) and LMDeploy's
``api_server`` (image parts before the text, ``max_dynamic_patch`` inside each ``image_url``, ``top_p``/``top_k``,
a system message; its InternVL video example's ``Frame1: <IMAGE_TOKEN>`` lines)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import tagged
from media import data_url
from vlaser.api import Media
from vlaser.eval.backends import from_response, to_payload
from vlaser.inference import GenerationParams
from vlaser.model.template import INTERNVL2_5_SYSTEM_MESSAGE

NAME = "tiny-vlaser"
NEW = 6  # new tokens per answer: enough to tell prompts apart on a random model


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    """A random picture: every tile differs, so a different tiling gives a different answer."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


WIDE = noise((224, 56), 0)  # 4:1 at the tiny model's 56 px tiles: 4 tiles + thumbnail, or 1 tile
TALL = noise((56, 112), 1)


def build_app(checkpoint, name: str, **options):
    """``vlaser serve``'s app on ``checkpoint`` (float32, CPU), as the CLI builds it by default."""
    from vlaser.api import VLM
    from vlaser.serve.app import create_app
    from vlaser.serve.scheduler import Scheduler

    vlm = VLM.from_pretrained(checkpoint, dtype=torch.float32, device="cpu")
    engine = Scheduler(vlm, max_batch_size=8, max_wait_ms=5, max_tiles=vlm.max_tiles)
    return create_app(engine, name, **options)


@pytest.fixture(scope="module")
def client(tiny_original):
    from fastapi.testclient import TestClient

    with TestClient(build_app(tiny_original, NAME)) as test_client:
        yield test_client


def local(vlm, images: list[tuple[Image.Image, int]], question: str, system: str | None = None, **generation) -> str:
    """``model.chat``'s greedy answer: each image with its own tile limit, ``Image-i`` lines for several."""
    media = [vlm.media(image, max_tiles=tiles) for image, tiles in images]
    joined = Media(torch.cat([m.pixel_values for m in media]), [m.num_patches[0] for m in media],
                   [m.sizes[0] for m in media], [m.pictures[0] for m in media])
    return vlm.generate_answers([joined], [question], {"max_new_tokens": NEW, **generation},
                                system_messages=[system])[0].text


def chat(client, body: dict) -> dict:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def check_completion(body: dict, answer: str) -> None:
    """What the OpenAI client (and vLLM's and LMDeploy's users) read from a non-streamed answer."""
    assert isinstance(body["id"], str) and body["id"]
    assert body["object"] == "chat.completion" and isinstance(body["created"], int) and body["model"] == NAME
    choice = body["choices"][0]
    assert len(body["choices"]) == 1 and choice["index"] == 0
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == answer
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= NEW
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def stream(client, body: dict) -> list[dict]:
    """The server-sent events of a streamed request, ending with ``[DONE]``."""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return [json.loads(event) for event in events[:-1]]


def test_vllm_single_image_body(client, vlm):
    """vLLM's documented multimodal request: text then image, ``max_completion_tokens``; its extra sampling
    fields; tiles from ``mm_processor_kwargs``."""
    body = {"model": NAME, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": {"url": data_url(WIDE)}}]}],
        "max_completion_tokens": NEW, "temperature": 0.0, "top_k": -1, "min_tokens": 0,
        "mm_processor_kwargs": {"max_dynamic_patch": 1}}
    # vlaser keeps an image part where the client put it, after the text here (vLLM and LMDeploy move images
    # that their text does not place in front of it)
    expected = vlm.ask(WIDE, "What's in this image?\n<image>", max_tiles=1, max_new_tokens=NEW)
    check_completion(chat(client, body), expected)


def test_vllm_tiles_change_the_prompt(client, vlm):
    """The tile limit is honoured: 12 tiles (4 + thumbnail here) vs 1 give different prompts, each the local one."""
    def body(tiles: int) -> dict:
        return {"model": NAME, "max_tokens": NEW, "temperature": 0, "mm_processor_kwargs": {"max_dynamic_patch": tiles},
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(WIDE)}},
                                                          {"type": "text", "text": "Where is the cup?"}]}]}
    many, one = chat(client, body(12)), chat(client, body(1))
    per_tile = vlm.model.num_image_token
    assert many["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"] == 4 * per_tile
    for tiles, answer in ((12, many), (1, one)):
        assert answer["choices"][0]["message"]["content"] == vlm.ask(WIDE, "Where is the cup?", max_tiles=tiles,
                                                                     max_new_tokens=NEW)


def test_lmdeploy_body_with_per_image_tiles(client, vlm):
    """LMDeploy's InternVL request: a system message, ``max_dynamic_patch`` inside each ``image_url``, its
    sampling fields, and two images (``Image-i`` lines as ``model.chat`` builds them)."""
    system = "You are a helpful assistant."
    body = {"model": NAME, "max_tokens": NEW, "temperature": 0, "top_p": 0.8, "top_k": 1,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(WIDE), "max_dynamic_patch": 1}},
                {"type": "image_url", "image_url": {"url": data_url(TALL), "max_dynamic_patch": 2}},
                {"type": "text", "text": "What changed?"}]}]}
    expected = local(vlm, [(WIDE, 1), (TALL, 2)], "What changed?", system)
    check_completion(chat(client, body), expected)


def test_lmdeploy_video_example_body(client, vlm):
    """LMDeploy's InternVL video example: one text part whose ``<IMAGE_TOKEN>`` markers place the frames, then
    the frames as image parts with ``max_dynamic_patch`` 1; the prompt is ``model.chat``'s ``Frame-i`` one."""
    frames = [noise((112, 56), seed) for seed in (2, 3, 4)]
    question = "".join(f"Frame{i + 1}: <IMAGE_TOKEN>\n" for i in range(3)) + "What is the robot doing?"
    body = {"model": NAME, "max_tokens": NEW, "top_k": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question},
        *({"type": "image_url", "image_url": {"url": data_url(f), "max_dynamic_patch": 1}} for f in frames)]}]}
    expected = local(vlm, [(f, 1) for f in frames], question.replace("<IMAGE_TOKEN>", "<image>"))
    check_completion(chat(client, body), expected)


def test_vlaser_eval_client_body(client, vlm, tmp_path):
    """``OpenAIBackend``'s payload (InternVL's system message, both engines' tile fields, ``min_tokens``) is
    answered as the local backend answers the same request, and read back by ``from_response``."""
    WIDE.save(tmp_path / "wide.png")
    request = tagged("<image>\nFind free space on the table.", [tmp_path / "wide.png"], [2])
    payload = to_payload(request, NAME, GenerationParams(NEW, min_new_tokens=1), INTERNVL2_5_SYSTEM_MESSAGE)
    assert payload["mm_processor_kwargs"] == {"max_dynamic_patch": 2} and payload["min_tokens"] == 1
    body = chat(client, payload)
    expected = vlm.ask(WIDE, "<image>\nFind free space on the table.", max_tiles=2, max_new_tokens=NEW,
                       min_new_tokens=1)
    check_completion(body, expected)
    assert from_response(body).text == expected


def test_embodiedbench_body(client, vlm):
    """EmbodiedBench's InternVL request (``_call_intern38b``): the image part first, the prompt, ``temperature`` 0
    and no system message; then the next step with the earlier answer as an assistant turn."""
    from test_embodiedbench import eb_request

    first = eb_request(TALL, "Put an apple in the fridge.", max_tokens=NEW)
    first["model"] = NAME
    body = chat(client, first)
    check_completion(body, vlm.ask(TALL, "Put an apple in the fridge.", max_new_tokens=NEW))
    answer = body["choices"][0]["message"]["content"]
    history = first["messages"] + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    second = {**eb_request(TALL, "The human instruction is: go on.", history, max_tokens=NEW), "model": NAME}
    body2 = chat(client, second)
    check_completion(body2, body2["choices"][0]["message"]["content"])
    tall_tiles = vlm.media(TALL).num_patches[0]  # the history's image comes back as well
    assert body2["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"] + tall_tiles * vlm.model.num_image_token


def test_streaming_chunks_as_openai_clients_read_them(client):
    """``stream`` with ``stream_options.include_usage`` (vLLM, OpenAI): chunk objects with one id, the role
    first, text deltas that add up to the non-streamed answer, a finish reason, a usage chunk, then ``[DONE]``."""
    body = {"model": NAME, "max_tokens": NEW, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(TALL), "max_dynamic_patch": 1}},
        {"type": "text", "text": "Describe the scene."}]}]}
    whole = chat(client, body)
    chunks = stream(client, {**body, "stream_options": {"include_usage": True}})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == NAME and isinstance(c["created"], int) for c in chunks)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[0]["delta"].get("role") == "assistant"
    assert "".join(c["delta"].get("content") or "" for c in choices) == whole["choices"][0]["message"]["content"]
    assert [c["finish_reason"] for c in choices if c.get("finish_reason")] == \
        [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["usage"] == whole["usage"]


def test_the_openai_client_reads_the_answers(client, vlm):
    """The official ``openai`` client (what EmbodiedBench and most agent code use), validating every response
    strictly against its own models: the model list, an answer, and a stream with usage; vLLM's tile field goes
    in ``extra_body`` as vLLM's docs send it."""
    from openai import OpenAI

    api = OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client, max_retries=0,
                 _strict_response_validation=True)
    assert [model.id for model in api.models.list()] == [NAME]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(WIDE)}},
                                             {"type": "text", "text": "Where is the cup?"}]}]
    expected = vlm.ask(WIDE, "Where is the cup?", max_tiles=2, max_new_tokens=NEW)
    answer = api.chat.completions.create(model=NAME, messages=messages, max_tokens=NEW, temperature=0,
                                         extra_body={"mm_processor_kwargs": {"max_dynamic_patch": 2}})
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason in ("stop", "length")
    chunks = list(api.chat.completions.create(model=NAME, messages=messages, max_tokens=NEW, temperature=0,
                                              stream=True, stream_options={"include_usage": True},
                                              extra_body={"mm_processor_kwargs": {"max_dynamic_patch": 2}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage == answer.usage


def test_models_and_health(client):
    """What an OpenAI client lists (``client.models.list().data[0].id``, LMDeploy's docs pick the model so)."""
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]
    assert models["data"][0]["object"] == "model"
    assert client.get("/health").status_code == 200

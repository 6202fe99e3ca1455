"""``vlaser serve``'s HTTP API: greedy answers equal ``model.chat`` on the tiny model (text, one image, two
images, multi-turn, a system message), streaming equals non-streaming, concurrent equals sequential, every bad
input is a 4xx with an OpenAI-style error naming the problem, the key, the queue, disconnects and SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("fastapi", reason="the server's tests need fastapi (pip install 'vlaser[serve]')")
pytest.importorskip("uvicorn", reason="the server's tests need uvicorn (pip install 'vlaser[serve]')")

from fastapi.testclient import TestClient
from PIL import Image

from fakes import end_token_first, free_port, scripted_sampling, served, wait_for_health
from media import data_url
from vlaser.errors import UserInputError
from vlaser.inference import engine as core
from vlaser.serve.app import create_app
from vlaser.serve.messages import SERVER_LIMITS, MediaLimits, is_public, parse_chat_request
from vlaser.serve.scheduler import Completion, QueueFull, Scheduler

GREEDY = {"max_new_tokens": 12, "do_sample": False}
MAX_NUM = 2  # tiles per image: enough to tile, few enough to stay fast


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


RED, BLUE = Image.new("RGB", (90, 60), (220, 30, 30)), Image.new("RGB", (40, 80), (20, 40, 200))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` and holds no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def bytes_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# ---- a model-free engine: what the app hands it, answered at once --------------------------------------------


class EchoEngine:
    """Answers each job with a JSON summary of it (question, system, history, tiles, sampling)."""

    def __init__(self, max_tiles=None):
        self.jobs, self.max_tiles = [], max_tiles  # the tile limit a scheduler gives pictures without their own

    async def start(self):
        pass

    async def stop(self):
        pass

    def submit(self, job):
        self.jobs.append(job)
        request = job.request
        text = json.dumps({"question": request.question, "system": request.system,
                           "history": [[turn.user, turn.assistant] for turn in request.history],
                           "images": [p.source.size for p in request.pictures],
                           "tiles": [self.max_tiles if p.max_tiles is None else p.max_tiles for p in request.pictures],
                           "max_tokens": job.params.max_new_tokens, "stop": list(job.params.stop)})
        return _Done(Completion(text, "stop", 3, 2))


class _Done:
    def __init__(self, completion):
        self.completion = completion

    async def prepared(self):
        pass

    async def _deltas(self):
        yield self.completion.text

    def __aiter__(self):
        return self._deltas()

    async def result(self):
        return self.completion

    def cancel(self):
        pass


class RefusingEngine(EchoEngine):
    """Every job fails in preparation with a user error, as a prompt over the model's context does."""

    def submit(self, job):
        return _Refused()


class _Refused:
    async def prepared(self):
        raise UserInputError("the prompt is 40000 tokens, over the model's context")

    async def result(self):
        await self.prepared()

    def cancel(self):
        pass


class HeldEngine:
    """Holds every job until :meth:`release`; records which jobs were cancelled. ``max_queue`` as the engine's."""

    def __init__(self, max_queue: int = 8):
        self.max_queue, self.streams = max_queue, []

    async def start(self):
        self.loop = asyncio.get_running_loop()

    async def stop(self):
        pass

    def submit(self, job):
        if sum(not s.over for s in self.streams) >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are waiting or running")
        stream = _Held(asyncio.Event())
        self.streams.append(stream)
        return stream

    def release(self):
        for stream in self.streams:
            self.loop.call_soon_threadsafe(stream.gate.set)

    def wait_for_jobs(self, n: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while len(self.streams) < n:
            assert time.monotonic() < deadline, f"{len(self.streams)} jobs arrived, expected {n}"
            time.sleep(0.02)


class _Held:
    def __init__(self, gate):
        self.gate, self.cancelled = gate, threading.Event()

    async def prepared(self):  # generating at once, and held there
        pass

    @property
    def over(self):
        return self.cancelled.is_set() or self.gate.is_set()

    async def _deltas(self):
        await self.gate.wait()
        yield "held"

    def __aiter__(self):
        return self._deltas()

    async def result(self):
        await self.gate.wait()
        return Completion("held", "stop", 1, 1)

    def cancel(self):
        self.cancelled.set()


def post(port: int, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- fixtures ----------------------------------------------------------------------------------------------------


VLM_SETTINGS = {"max_tiles": MAX_NUM}  # the conftest ``vlm``'s


@pytest.fixture(scope="module")
def model_app(vlm):
    """The app on the tiny model. Grounding tags are dropped as ``model.chat`` drops them, so answers compare
    exactly whatever the random model emits."""
    engine = Scheduler(vlm, max_batch_size=8, max_wait_ms=20, max_tiles=MAX_NUM)
    return create_app(engine, "tiny", limits=replace(SERVER_LIMITS, max_new_tokens=64))


@pytest.fixture(scope="module")
def client(model_app):
    with TestClient(model_app) as client:
        yield client


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    RED.save(root / "red.png")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    BLUE.save(outside)
    (root / "link.png").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def echo(media_dir):
    """A model-free app with small limits, for the request rules (answers are JSON summaries of the job)."""
    engine = EchoEngine(max_tiles=5)
    limits = MediaLimits(max_images=3, max_new_tokens=64, max_tiles=6, max_pixels=20_000, local_root=media_dir)
    app = create_app(engine, "echo", limits=limits, max_body_bytes=200_000)
    with TestClient(app) as client:
        client.engine = engine
        yield client


def ask(client, messages, **fields) -> dict:
    response = client.post("/v1/chat/completions", json={"messages": messages, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def answer(client, messages, **fields) -> str:
    return ask(client, messages, max_tokens=GREEDY["max_new_tokens"], **fields)["choices"][0]["message"]["content"]


def echoed(client, messages, **fields) -> dict:
    return json.loads(ask(client, messages, **fields)["choices"][0]["message"]["content"])


# ---- answers equal model.chat -----------------------------------------------------------------------------------


def test_text_only_equals_model_chat(client, vlm):
    expected = vlm.model.chat(vlm.tokenizer, None, "What is on the table?", dict(GREEDY))
    body = ask(client, [{"role": "user", "content": "What is on the table?"}], max_tokens=12, model="anything")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int) and body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 20


def test_one_image_equals_model_chat(client, vlm):
    media = vlm.media(RED, max_tiles=MAX_NUM)
    expected = vlm.model.chat(vlm.tokenizer, media.pixel_values, "Describe it.", dict(GREEDY))
    assert answer(client, [user(image_part(data_url(RED)), text_part("Describe it."))]) == expected


def test_two_images_are_model_chats_multi_image_prompt(client, vlm):
    """[image, image, text] is ``Image-1: <image>\\nImage-2: <image>\\n`` + text, with num_patches_list."""
    media = vlm.media([RED, BLUE], max_tiles=MAX_NUM)
    question = "Image-1: <image>\nImage-2: <image>\nWhich is red?"
    expected = vlm.model.chat(vlm.tokenizer, media.pixel_values, question, dict(GREEDY),
                              num_patches_list=media.num_patches)
    got = answer(client, [user(image_part(data_url(RED)), image_part(data_url(BLUE)), text_part("Which is red?"))])
    assert got == expected
    # the client may write the labels itself (vlaser's own OpenAI backend does): the same prompt
    labelled = answer(client, [user(text_part("Image-1: "), image_part(data_url(RED)), text_part("Image-2: "),
                                    image_part(data_url(BLUE)), text_part("Which is red?"))])
    assert labelled == expected


def test_multi_turn_with_history_equals_model_chat(client, vlm):
    media = vlm.media(RED, max_tiles=MAX_NUM)
    first, history = vlm.model.chat(vlm.tokenizer, media.pixel_values, "What colour?", dict(GREEDY),
                                    return_history=True)
    second = vlm.model.chat(vlm.tokenizer, media.pixel_values, "And the shape?", dict(GREEDY), history=history)
    messages = [user(image_part(data_url(RED)), text_part("What colour?"))]
    assert answer(client, messages) == first
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And the shape?"}]
    assert answer(client, messages) == second


def test_system_message_replaces_the_default(client, vlm):
    from vlaser.model.template import build_chat_prompt

    model, system = vlm.model, "You answer in one word."
    prompt = build_chat_prompt("Hello", model.conv_template, [], model.num_image_token, history=[("Hi", "Yes")],
                               system_message=system)[1]
    expected = model.generate_text(vlm.tokenizer, [prompt], None, dict(GREEDY))[0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yes"}, {"role": "user", "content": "Hello"}]
    assert answer(client, messages) == expected
    default = answer(client, messages[1:])
    assert default == vlm.model.chat(vlm.tokenizer, None, "Hello", dict(GREEDY), history=[("Hi", "Yes")])


def test_sampling_with_a_seed_repeats(client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    texts = [ask(client, messages, max_tokens=10, temperature=1.5, top_p=0.95, seed=7)["choices"][0]["message"]
             ["content"] for _ in range(2)]
    assert texts[0] == texts[1]


@pytest.fixture
def ends_first(vlm):
    with end_token_first(vlm) as end:
        yield end


def test_min_tokens_equals_local_min_new_tokens(client, vlm, ends_first):
    messages = [user(image_part(data_url(RED)), text_part("Point to the cup."))]
    media = vlm.media(RED, max_tiles=MAX_NUM)
    local = vlm.model.chat(vlm.tokenizer, media.pixel_values, "Point to the cup.", {**GREEDY, "min_new_tokens": 3})
    plain = ask(client, messages, max_tokens=12)
    assert plain["choices"][0]["message"]["content"] == "" and plain["usage"]["completion_tokens"] == 1
    for fields in ({"min_tokens": 3}, {"min_new_tokens": 3}, {"min_tokens": 3, "min_new_tokens": 3}):
        held = ask(client, messages, max_tokens=12, **fields)
        assert held["choices"][0]["message"]["content"] == local and held["usage"]["completion_tokens"] == 4, fields


def test_skip_special_tokens_chooses_the_grounding_tags_per_request(client, vlm, monkeypatch):
    """On a server that drops the tags (as model.chat), ``skip_special_tokens: false`` keeps them; streamed too."""
    tokenizer = vlm.tokenizer
    boxed = "<ref>cup</ref><box>[[100, 100, 500, 600]]</box>"
    ids = [*tokenizer(boxed)["input_ids"], tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer.convert_tokens_to_ids("<box>") in ids

    monkeypatch.setattr(core.Engine, "_sample", scripted_sampling(lambda row: ids))
    messages = [user(image_part(data_url(RED)), text_part("Where is the cup?"))]

    def text(**fields) -> str:
        return ask(client, messages, max_tokens=64, **fields)["choices"][0]["message"]["content"]

    assert text() == text(skip_special_tokens=True) == "cup[[100, 100, 500, 600]]"
    assert text(skip_special_tokens=False) == boxed
    chunks = events(client.post("/v1/chat/completions", json={"messages": messages, "stream": True, "max_tokens": 64,
                                                              "skip_special_tokens": False}).text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == boxed


# ---- streaming and concurrency ----------------------------------------------------------------------------------


def events(text: str) -> list:
    lines = [line for line in text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), text
    assert lines[-1] == "data: [DONE]", text
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_streaming_gives_the_same_text_as_not_streaming(client):
    messages = [user(image_part(data_url(BLUE)), text_part("Where is the cup?"))]
    plain = ask(client, messages, max_tokens=12)
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 12, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    final, usage = chunks[-2], chunks[-1]
    assert final["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    quiet = events(client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 12,
                                                              "stream": True}).text)
    assert "usage" not in quiet[-1] and quiet[-1]["choices"][0]["finish_reason"]


def test_eight_concurrent_requests_equal_eight_sequential(vlm):
    bodies = [{"messages": [user(image_part(data_url(image)), text_part(f"Question {k}: where?"))] if k % 2 else
               [{"role": "user", "content": f"Tell me {k} things."}], "max_tokens": 6 + k} for k, image in
              enumerate([RED, BLUE] * 4)]
    app = create_app(Scheduler(vlm, max_batch_size=8, max_wait_ms=200, max_tiles=MAX_NUM), "tiny")
    with served(app) as port:
        sequential = [post(port, body) for body in bodies]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(partial(post, port), bodies))
    assert [status for status, _ in sequential + concurrent] == [200] * 16
    assert [body["choices"][0]["message"] for _, body in concurrent] == \
        [body["choices"][0]["message"] for _, body in sequential]


# ---- the request rules (model-free) -----------------------------------------------------------------------------


def test_tiles_from_max_num_vllm_and_lmdeploy_fields(echo):
    two = [user(image_part(data_url(RED)), image_part(data_url(BLUE), max_dynamic_patch=1), text_part("?"))]
    assert echoed(echo, two)["tiles"] == [5, 1]  # the server's default, then LMDeploy's per-image field
    assert echoed(echo, two, max_num=3)["tiles"] == [3, 1]
    assert echoed(echo, two, mm_processor_kwargs={"max_dynamic_patch": 4})["tiles"] == [4, 1]
    schema = echo.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "tiles per image" in schema["max_num"]["description"]


def test_prompt_arrangement(echo):
    job = echoed(echo, [{"role": "system", "content": "Be brief."}, user(text_part("Compare"),
                 image_part(data_url(RED)), image_part(data_url(BLUE)))])
    assert job["system"] == "Be brief." and job["question"] == "Compare\n<image>\n<image>"
    tagged = echoed(echo, [user(text_part("left <image> right <image>"), image_part(data_url(RED)),
                                image_part(data_url(BLUE)))])
    assert tagged["question"] == "left <image> right <image>" and tagged["images"] == [[90, 60], [40, 80]]
    assert echoed(echo, [{"role": "user", "content": "hi"}])["system"] is None  # the model's default applies


def test_defaults_and_stop(echo):
    assert echoed(echo, [{"role": "user", "content": "x"}])["max_tokens"] == 64  # min(1024, the cap)
    assert echoed(echo, [{"role": "user", "content": "x"}], stop="END", max_completion_tokens=5, max_tokens=60,
                  unknown_field={"kept": True})["stop"] == ["END"]
    assert echo.engine.jobs[-1].params.max_new_tokens == 5
    sampling = echo.engine.jobs[-1].params
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.0, 1.0, None)  # greedy unless asked
    echoed(echo, [{"role": "user", "content": "x"}], n=None, stream=None, temperature=0.7, top_p=0.9, seed=3)
    assert echo.engine.jobs[-1].params == type(sampling)(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=3)
    assert sampling.min_new_tokens == 0 and not sampling.keep_grounding_tokens  # the server's choice (off)
    for fields, least in [({"min_tokens": 4}, 4), ({"min_new_tokens": 2}, 2), ({"min_tokens": 5, "min_new_tokens": 5},
                                                                                 5), ({"min_tokens": 64}, 64)]:
        echoed(echo, [{"role": "user", "content": "x"}], **fields)
        assert echo.engine.jobs[-1].params.min_new_tokens == least, fields
    for skip, keep in [(True, False), (False, True)]:
        echoed(echo, [{"role": "user", "content": "x"}], skip_special_tokens=skip)
        assert echo.engine.jobs[-1].params.keep_grounding_tokens is keep


@pytest.mark.parametrize(("body", "message"), [
    ('{"messages": [', "malformed JSON"),
    ("[1, 2]", "the body: Input should be a valid dictionary"),
    ("", "the request needs a JSON body"),
    ({"messages": []}, "messages: List should have at least 1 item"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature: Input should be a valid "
                                                                               "number"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens: Input should be a valid "
                                                                           "integer"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream: Input should be a valid boolean"),
    ({"messages": [user(image_part(5))]}, "messages.0.content.0.image_url.url: Input should be a valid string"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role: Input should be 'system'"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n must be 1"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": 2**64}, "seed: Input should be less than"),
    ('{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', "message 0: the text holds a lone UTF-16 "
                                                                   "surrogate"),
    ({"messages": [{"role": "user", "content": "x"}], "max_num": 7}, "max_num 7 is over this server's limit of 6 "
                                                                      "tiles"),
    ({"messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"max_dynamic_patch": 99}},
     "mm_processor_kwargs.max_dynamic_patch 99 is over this server's limit of 6"),
    ({"messages": [user(image_part(data_url(RED), max_dynamic_patch=7))]},
     "message 0, part 0: image_url.max_dynamic_patch 7 is over"),
    ({"messages": [{"role": "user", "content": "x"}], "max_num": 0}, "max_num: Input should be greater than or "
                                                                      "equal to 1"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, "max_tokens 65 is over this server's cap "
                                                                          "of 64"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["ok", ""]}, "stop strings must not be empty"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "min_tokens": 6},
     "min_tokens 6 is over max_tokens 5"),
    ({"messages": [{"role": "user", "content": "x"}], "min_new_tokens": 65}, "min_new_tokens 65 is over max_tokens 64"),
    ({"messages": [{"role": "user", "content": "x"}], "min_tokens": 1, "min_new_tokens": 2},
     "min_tokens 1 and min_new_tokens 2 disagree"),
    ({"messages": [{"role": "user", "content": "x"}], "min_tokens": -1}, "min_tokens: Input should be greater than "
                                                                          "or equal to 0"),
    ({"messages": [{"role": "user", "content": "x"}], "min_tokens": 1.5}, "min_tokens: Input should be a valid "
                                                                           "integer"),
    ({"messages": [{"role": "user", "content": "x"}], "skip_special_tokens": "no"}, "skip_special_tokens: Input "
                                                                                     "should be a valid boolean"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
     "response_format 'json_object' is not supported"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "the conversation must start with a user message"),
    ({"messages": [user(image_part(bytes_url(b"not an image")))]},
     "message 0, part 0: the data: URL does not hold a readable image"),
    ({"messages": [user(image_part("data:image/png;base64,@@@"))]}, "message 0, part 0: bad base64"),
    ({"messages": [user(*[image_part(data_url(RED))] * 4)]}, "the request has 4 images; this server accepts at "
                                                             "most 3"),
    ({"messages": [user(image_part(data_url(Image.new("RGB", (200, 101)))))]},
     "message 0, part 0: the image is 200x101 = 20200 pixels, over the server's limit of 20000"),
    ({"messages": [user(image_part(bytes_url(png_header(100_000, 100_000))))]}, "too large to decode safely"),
    ({"messages": [user(image_part(bytes_url(png_header(10_000, 10_000))))]}, "too large to decode safely"),
    ({"messages": [user(text_part("a <image> b <image>"), image_part(data_url(RED)))]},
     "message 0: the text contains a literal '<image>' 2 time(s) but the message has 1 image part(s)"),
    ({"messages": [user(image_part("https://example.com/a.png"))]}, "remote image URLs are not fetched"),
    ({"messages": [user(image_part("ftp://example.com/a.png"))]}, "unsupported image URL scheme 'ftp'"),
    ({"messages": [user(image_part("link.png"))]}, "is outside the folder the server reads images from"),
    ({"messages": [user(image_part("../elsewhere/secret.png"))]}, "image file not found"),
])
def test_bad_input_is_a_400_naming_the_problem(echo, body, message):
    content = body if isinstance(body, str) else json.dumps(body)
    response = echo.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error", error
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": [user({"type": "input_audio", "input_audio": {}})]},
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]},
    {"messages": [{"role": "user", "content": "x"}], "min_tokens": 1, "min_new_tokens": 2},
    {"messages": [user(image_part("data:image/png,abc"))]},
])
def test_a_request_is_parsed_once_with_one_wording(echo, body):
    """The server and a direct call read a body through the one schema, so a problem is worded the same."""
    response = echo.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    with pytest.raises(ValueError) as direct:
        parse_chat_request(body)
    assert response.json()["error"]["message"] == str(direct.value)


def test_body_over_the_limit_is_a_413(echo):
    big = {"messages": [{"role": "user", "content": "x" * 300_000}]}
    response = echo.post("/v1/chat/completions", json=big)
    assert response.status_code == 413 and "over this server's limit of 200000 bytes" in \
        response.json()["error"]["message"]
    chunks = (b"x" * 50_000 for _ in range(6))  # no Content-Length: counted as it streams in
    response = echo.post("/v1/chat/completions", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_local_media_inside_the_folder(echo, media_dir):
    assert echoed(echo, [user(image_part("red.png"))])["images"] == [[90, 60]]
    assert echoed(echo, [user(image_part((media_dir / "red.png").as_uri()))])["images"] == [[90, 60]]
    with pytest.raises(ValueError, match="larger than the server's limit of 10 bytes per image file"):
        parse_chat_request({"messages": [user(image_part("red.png"))]}, MediaLimits(local_root=media_dir,
                                                                                   max_fetch_bytes=10))
    outside = (media_dir / "link.png").resolve()
    response = echo.post("/v1/chat/completions", json={"messages": [user(image_part(str(outside)))]})
    assert response.status_code == 400 and "is outside the folder" in response.json()["error"]["message"]


def test_local_and_remote_media_are_refused_unless_enabled(media_dir):
    with TestClient(create_app(EchoEngine(), "echo")) as client:
        for url, flag in [(str(media_dir / "red.png"), "--allow-local-media"),
                          ((media_dir / "red.png").as_uri(), "--allow-local-media"),
                          ("http://127.0.0.1:9/a.png", "--allow-remote-media")]:
            response = client.post("/v1/chat/completions", json={"messages": [user(image_part(url))]})
            assert response.status_code == 400 and flag in response.json()["error"]["message"], response.text


class _Files(SimpleHTTPRequestHandler):
    """Serves a folder; ``/away`` redirects to an ftp: URL."""

    def do_GET(self):  # noqa: N802
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/red.png")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_remote_media_when_enabled(media_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Files, directory=str(media_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with TestClient(create_app(EchoEngine(), "echo", limits=replace(SERVER_LIMITS, allow_remote=True))) as client:
            refused = client.post("/v1/chat/completions", json={"messages": [user(image_part(url + "/red.png"))]})
            assert refused.status_code == 400, refused.text
            assert "127.0.0.1 is at 127.0.0.1, not a public address" in refused.json()["error"]["message"]
            assert "--allow-private-media-hosts" in refused.json()["error"]["message"]
            local = url.replace("127.0.0.1", "localhost")
            refused = client.post("/v1/chat/completions", json={"messages": [user(image_part(local + "/red.png"))]})
            assert refused.status_code == 400 and "localhost is at" in refused.json()["error"]["message"]
        with TestClient(create_app(EchoEngine(), "echo", limits=replace(SERVER_LIMITS, allow_remote=True,
                                                                         allow_private_hosts=True))) as client:
            assert echoed(client, [user(image_part(url + "/red.png"))])["images"] == [[90, 60]]
            missing = client.post("/v1/chat/completions", json={"messages": [user(image_part(url + "/no.png"))]})
            assert missing.status_code == 400 and "could not fetch" in missing.json()["error"]["message"]
            away = client.post("/v1/chat/completions", json={"messages": [user(image_part(url + "/away"))]})
            assert away.status_code == 400 and "not an http(s) URL" in away.json()["error"]["message"]
        with pytest.raises(ValueError, match="larger than the server's limit of 100 bytes"):
            parse_chat_request({"messages": [user(image_part(url + "/red.png"))]},
                               MediaLimits(allow_remote=True, allow_private_hosts=True, max_fetch_bytes=100))
    finally:
        server.shutdown()


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("172.16.0.9", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:8.8.8.8", True)])
def test_only_public_addresses_count_as_public(address, public):
    """What the remote-media guard lets a connection go to (checked on the address, no connection made)."""
    assert is_public(address) is public


# ---- models, health, the key ------------------------------------------------------------------------------------


def test_models_health_and_schema(echo):
    models = echo.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo"]
    assert models["data"][0]["object"] == "model"
    assert echo.get("/v1/models/echo").json() == models["data"][0]
    other = echo.get("/v1/models/gpt-4o")
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    assert echo.get("/health").json() == {"status": "ok"}
    schema = echo.get("/openapi.json").json()
    responses = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "413", "429"} <= set(responses) and "422" not in responses
    missing = echo.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_api_key(media_dir):
    with TestClient(create_app(EchoEngine(), "echo", api_key="sesame")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            for method, path in [("get", "/v1/models"), ("post", "/v1/chat/completions"), ("get", "/openapi.json")]:
                response = getattr(client, method)(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/health").status_code == 200  # no key needed
        assert client.get("/").status_code == 200  # the page (it sends the key it is given with each call)
        good = {"Authorization": "Bearer sesame"}
        assert client.get("/v1/models", headers=good).status_code == 200
        response = client.post("/v1/chat/completions", headers=good, json={"messages": [{"role": "user",
                                                                                         "content": "x"}]})
        assert response.status_code == 200


# ---- the queue, disconnects, SIGTERM ----------------------------------------------------------------------------


def test_a_full_queue_answers_429():
    engine = HeldEngine(max_queue=1)
    with served(create_app(engine, "held")) as port, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, port, {"messages": [{"role": "user", "content": "x"}]})
        engine.wait_for_jobs(1)
        status, body = post(port, {"messages": [{"role": "user", "content": "y"}]})
        assert status == 429 and body["error"]["code"] == "queue_full" and body["error"]["type"] == "rate_limit_error"
        assert "the server's queue is full: 1 requests are waiting or running" in body["error"]["message"]
        engine.release()
        assert first.result(timeout=30)[0] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_frees_its_slot(stream):
    engine = HeldEngine()
    with served(create_app(engine, "held")) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", json.dumps(
            {"messages": [{"role": "user", "content": "x"}], "stream": stream}), {"Content-Type": "application/json"})
        engine.wait_for_jobs(1)
        if stream:  # the role chunk is out: the response has started
            assert connection.getresponse().status == 200
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        assert engine.streams[0].cancelled.wait(30), "the job was not cancelled when its client went away"


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tiny_original, tmp_path):
    port, log = free_port(), (tmp_path / "serve.log").open("w")
    env = {**os.environ, "VLASER_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "vlaser", "serve", "--model", str(tiny_original), "--port",
                             str(port), "--max-num", "1", "--dtype", "float32", "--device", "cpu"], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_health(proc, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
        with pytest.raises(urllib.error.HTTPError) as refused:  # the key came from VLASER_API_KEY
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert refused.value.code == 401
        connections = []
        for k in range(2):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("POST", "/v1/chat/completions", json.dumps(
                {"messages": [{"role": "user", "content": f"Tell a long story {k}."}], "max_tokens": 60,
                 "stream": True}), {"Content-Type": "application/json", "Authorization": "Bearer k"})
            connections.append(connection)
        responses = [connection.getresponse() for connection in connections]
        first_lines = [response.readline() for response in responses]  # every request is in flight
        assert all(line.startswith(b"data: ") for line in first_lines), first_lines
        proc.send_signal(signal.SIGTERM)
        for response in responses:
            rest = response.read().decode()
            assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason": "' in rest, rest[-500:]
        assert proc.wait(120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_job_refused_in_preparation_is_a_400_even_when_streaming(stream):
    with TestClient(create_app(RefusingEngine(), "refusing")) as client:
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                              "stream": stream})
    assert response.status_code == 400 and "over the model's context" in response.json()["error"]["message"]


def test_engine_failure_is_a_500_with_an_openai_body():
    class Broken(EchoEngine):
        def submit(self, job):
            raise RuntimeError("boom")

    with TestClient(create_app(Broken(), "broken"), raise_server_exceptions=False) as client:
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"


def test_cli_help_lists_the_flags():
    from vlaser.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.max_batch_size, args.max_wait_ms, args.max_tiles) == ("127.0.0.1", 8000, 8, 10,
                                                                                          None)
    assert not args.keep_grounding_tokens  # answers decoded as model.chat and vlaser eval decode them

"""The web page of ``vlaser serve``: its routes and offline assets, and a real browser (Playwright driving
Debian's ``chromium``, headless) that uploads images, asks, and finds the answer's points and boxes drawn at
their pixel positions. ``./install.sh`` installs both; a missing browser is a failure, not a skip."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's tests need fastapi (pip install 'vlaser[serve]')")
pytest.importorskip("uvicorn", reason="the server's tests need uvicorn (pip install 'vlaser[serve]')")

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient
from PIL import Image

from fakes import scripted_sampling
from vlaser.api import VLM
from vlaser.inference import engine as core
from vlaser.points import POINT_PROMPT, parse_boxes, parse_points, point_question, to_pixels
from vlaser.serve.app import create_app
from vlaser.serve.page import STATIC_DIR, mount_page
from vlaser.serve.scheduler import Scheduler

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright downloads no browser of its own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MARK = (255, 64, 64)  # the point marker's fill in style.css (--mark)


def test_page_routes_and_config():
    app = FastAPI()
    mount_page(app, "tiny-vlaser", POINT_PROMPT)
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text and 'href="static/style.css"' in page.text
    assert client.get("/ui/config").json() == {"model": "tiny-vlaser", "point_prompt": POINT_PROMPT}
    assert client.get("/static/app.js").headers["content-type"].split(";")[0] in ("text/javascript",
                                                                                 "application/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/missing.js").status_code == 404
    assert not {route.path for route in app.routes} & set(app.openapi()["paths"])  # the page stays out of the API


def test_a_keyed_server_serves_the_page_without_the_key():
    """A browser cannot send the key when it loads a page: the page is open, the API behind it is not."""
    client = TestClient(create_app(scheduler=None, model_name="tiny-vlaser", api_key="sekret"))  # no lifespan run
    for path in ("/", "/ui/config", "/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200, path
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 401
    assert client.get("/ui/config").json() == {"model": "tiny-vlaser", "point_prompt": POINT_PROMPT}


def test_assets_fetch_nothing_from_outside():
    """Every asset is served by vlaser: no absolute URL, protocol-relative URL or @import in the page."""
    for path in sorted(STATIC_DIR.iterdir()):
        text = path.read_text()
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text, re.IGNORECASE), path.name
        assert "url(" not in text, path.name


# --- a real browser against a served app --------------------------------------------------------------------


class FakeChat:
    """``POST /v1/chat/completions`` answering a script of texts in OpenAI's format (streamed or not)."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.requests: list[dict] = []  # each request's JSON body plus its Authorization header

    def mount(self, app: FastAPI) -> None:
        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append({"body": body, "authorization": request.headers.get("authorization")})
            if not self.answers:
                return JSONResponse({"error": {"message": "no answer scripted", "type": "invalid_request_error"}},
                                    status_code=400)
            text = self.answers.pop(0)
            if body.get("stream"):
                return StreamingResponse(self._chunks(text), media_type="text/event-stream")
            return {"object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}]}

    @staticmethod
    async def _chunks(text: str):
        pieces = [text[i:i + 7] for i in range(0, len(text), 7)]  # several deltas that cut the tags apart
        for piece in pieces:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        last = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"


def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class FixedAnswers:
    """Fixes the tiny model's answers under the real engine: each row generates the test's next answer token
    by token; keeps the prompt and image tiles the engine prepared."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.answers: list[str] = []
        self.calls: list[tuple[str, torch.Tensor | None]] = []
        self.sample = scripted_sampling(self._answer)

    def _answer(self, row) -> list[int]:
        self.calls.append((row.item.prompt, row.item.pixel_values))
        tokenizer = self.tokenizer
        return [*tokenizer(self.answers.pop(0))["input_ids"], tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise AssertionError("the browser tests need the `playwright` package (the dev extra installs it)") from error
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"the browser tests need Debian's chromium at {CHROMIUM} (./install.sh apt-installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def chat_server():
    fake = FakeChat()
    app = FastAPI()
    mount_page(app, "tiny-vlaser", POINT_PROMPT)
    fake.mount(app)
    for url in serve(app):
        yield url, fake


@pytest.fixture(scope="module")
def real_server(loaded):
    """``create_app`` around the real engine on the tiny model, whose answers the test fixes; grounding tags
    dropped unless a request keeps them, as ``vlaser serve`` runs without ``--keep-grounding-tokens``."""
    model, tokenizer = loaded
    vlm = VLM(model, tokenizer)
    fixed = FixedAnswers(tokenizer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core.Engine, "_sample", fixed.sample)
        for url in serve(create_app(Scheduler(vlm, max_wait_ms=0), "tiny-vlaser")):
            yield url, fixed, vlm


@pytest.fixture
def page(browser, chat_server):
    url, fake = chat_server
    fake.answers.clear()
    fake.requests.clear()
    yield from open_page(browser, url, fake)


@pytest.fixture
def real_page(browser, real_server):
    url, fixed, vlm = real_server
    fixed.answers.clear()
    fixed.calls.clear()
    yield from open_page(browser, url, (fixed, vlm))


def open_page(browser, url: str, server):
    """A fresh browser tab on the page, checked afterwards for JavaScript errors and requests to elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    outside: list[str] = []  # every request must go to the vlaser server (data: URLs never reach the network)
    tab.on("request", lambda request: request.url.startswith((url, "data:")) or outside.append(request.url))
    missing: list[str] = []  # every file the page loads exists (its assets, its config)
    tab.on("response", lambda response: response.request.method != "GET" or response.ok
           or missing.append(f"{response.status} {response.url}"))
    tab.goto(url)
    tab.wait_for_function("document.getElementById('model-name').textContent === 'tiny-vlaser'")
    yield tab, server
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page reached outside the server: {outside}"
    assert not missing, f"the page asked for files the server does not have: {missing}"


def png(path: Path, size: tuple[int, int], color=(40, 120, 90)) -> Path:
    """A plain PNG (no red in it, so the red marker stands out in a screenshot)."""
    Image.new("RGB", size, color).save(path)
    return path


def ask(tab, question: str, files: list[Path] = (), point: bool = False, turn: int = 1) -> None:
    """Attach ``files``, type the question, send, and wait for the ``turn``-th answer to finish."""
    if files:
        tab.set_input_files("#file-input", [str(f) for f in files])
        tab.wait_for_function(f"document.querySelectorAll('#pending .thumb').length === {len(files)}")
    tab.set_checked("#point-mode", point)
    tab.fill("#question", question)
    tab.click("#send")
    tab.wait_for_selector(f".message.assistant:nth-of-type({2 * turn})[data-state=done]")


def markers(tab, kind: str) -> list[dict]:
    script = "els => els.map(e => ({...e.dataset, text: e.textContent}))"
    return tab.eval_on_selector_all(f"#overlay .marker.{kind}", script)


def image_part(message: dict) -> list[str]:
    return [part["image_url"]["url"] for part in message["content"] if part["type"] == "image_url"]


def test_point_question_draws_the_marker_at_its_pixel(real_page, tmp_path):
    """The real server (app, request parsing, engine, tiling) on the tiny model, whose answer the test fixes."""
    tab, (fixed, vlm) = real_page
    image = tmp_path / "scene.png"
    Image.merge("RGB", [Image.new("L", (640, 480), 0), Image.linear_gradient("L").resize((640, 480)),
                        Image.linear_gradient("L").rotate(90).resize((640, 480))]).save(image)  # no red in it
    fixed.answers.append("<point>[[250, 500]]</point>")
    ask(tab, "Where should the cup go?", [image], point=True)

    ((prompt, tiles),) = fixed.calls  # what the server made of the page's request: the point prompt, the image
    assert point_question("Where should the cup go?") in prompt and "<img>" in prompt
    with Image.open(image) as sent:
        assert torch.equal(tiles, vlm.media([sent.convert("RGB")], max_tiles=12).pixel_values)
    (marker,) = markers(tab, "point")
    assert (marker["x"], marker["y"], marker["text"]) == ("160", "240", "1")
    shown = tab.eval_on_selector("#stage-image", "img => [img.clientWidth, img.clientHeight]")
    assert float(marker["left"]) == pytest.approx(160 * shown[0] / 640, abs=0.01)
    assert float(marker["top"]) == pytest.approx(240 * shown[1] / 480, abs=0.01)
    box = tab.locator("#stage-image").bounding_box()
    dot = tab.locator("#overlay .marker.point").bounding_box()
    center = (dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
    assert center == pytest.approx((box["x"] + 160 * shown[0] / 640, box["y"] + 240 * shown[1] / 480), abs=0.5)
    assert tab.inner_text("#coords") == "1 (160, 240) px"

    shot = tmp_path / "page.png"
    tab.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as screenshot:
        pixels = screenshot.convert("RGB").load()
    red = [(x, y) for x in range(int(center[0]) - 14, int(center[0]) + 15)
           for y in range(int(center[1]) - 14, int(center[1]) + 15) if pixels[x, y] == MARK]
    assert len(red) > 100  # the dot is visible in the screenshot ...
    mean = (sum(x for x, _ in red) / len(red), sum(y for _, y in red) / len(red))
    assert mean == pytest.approx(center, abs=1.5)  # ... where the DOM says it is


def test_two_points_and_a_box_numbered_and_listed(real_page, tmp_path):
    """On a server that drops grounding tags by default, the page asks to keep them: the box keeps its label."""
    tab, (fixed, _) = real_page
    fixed.answers.append("<point>[[100, 200], [ 900.5 ,750 ]]</point>"
                         " and <ref>cup</ref><box>[[100, 100, 500, 600]]</box>")
    ask(tab, "Point and box", [png(tmp_path / "a.png", (640, 480))])
    ((prompt, _),) = fixed.calls
    assert "Point and box<|im_end|>" in prompt and point_question("Point and box") not in prompt  # point off
    answer = tab.inner_text(".message.assistant .text")
    assert answer == "<point>[[100, 200], [ 900.5 ,750 ]]</point> and <ref>cup</ref><box>[[100, 100, 500, 600]]</box>"
    points = markers(tab, "point")
    assert [(p["text"], p["x"], p["y"]) for p in points] == [("1", "64", "96"), ("2", "576", "360")]
    (box,) = markers(tab, "box")
    assert (box["x1"], box["y1"], box["x2"], box["y2"], box["text"]) == ("64", "48", "320", "288", "B1 cup")
    style = "e => [getComputedStyle(e).borderTopColor, getComputedStyle(e.firstChild).backgroundColor]"
    assert tab.eval_on_selector("#overlay .marker.box", style) == ["rgb(255, 64, 64)"] * 2  # drawn in its colour
    scale = tab.eval_on_selector("#stage-image", "img => img.clientWidth / 640")
    assert float(box["width"]) == pytest.approx(256 * scale, abs=0.01)
    listed = tab.inner_text("#coords").splitlines()
    assert listed == ["1 (64, 96) px", "2 (576, 360) px", "B1 cup (64, 48) – (320, 288) px"]


def test_multi_turn_without_streaming_sends_the_conversation(real_page, tmp_path):
    tab, (fixed, _) = real_page
    tab.set_checked("#stream-mode", False)
    fixed.answers += ["A mug on a table.", "<point>[[500, 500]]</point>"]
    ask(tab, "What is this?", [png(tmp_path / "a.png", (300, 200))])
    assert not markers(tab, "point")
    ask(tab, "Where is the mug?", point=True, turn=2)

    (first, first_tiles), (second, second_tiles) = fixed.calls
    # the second prompt is the first exchange (its image included) followed by the new question
    assert second.startswith(first) and "A mug on a table." in second[len(first):]
    assert second.rstrip().endswith(point_question("Where is the mug?") + "<|im_end|>\n<|im_start|>assistant")
    assert torch.equal(first_tiles, second_tiles)
    (marker,) = markers(tab, "point")
    assert (marker["x"], marker["y"]) == ("150", "100")  # drawn on the first turn's image


def test_several_images_draw_on_the_last_and_send_the_key(page, tmp_path):
    tab, fake = page
    tab.fill("#api-key", "sekret")
    fake.answers.append("<point>[[500, 250]]</point>")
    first, last = png(tmp_path / "first.png", (640, 480)), png(tmp_path / "last.png", (2000, 1000))
    ask(tab, "Compare", [first, last], point=True)
    (request,) = fake.requests
    assert request["authorization"] == "Bearer sekret"
    assert request["body"]["skip_special_tokens"] is False  # the grounding tags stay in the answer
    urls = image_part(request["body"]["messages"][-1])
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [first.read_bytes(), last.read_bytes()]
    (marker,) = markers(tab, "point")
    assert (marker["x"], marker["y"]) == ("1000", "250")  # the last image's pixels
    shown = tab.eval_on_selector("#stage-image", "img => [img.naturalWidth, img.clientWidth]")
    assert shown[0] == 2000 and shown[1] < 2000  # displayed smaller: the marker follows the scaling
    assert float(marker["left"]) == pytest.approx(1000 * shown[1] / 2000, abs=0.01)
    assert "Image 2 of 2: last.png, 2000×1000 px" in tab.inner_text("#stage-caption")
    tab.set_viewport_size({"width": 700, "height": 800})  # a narrower window: the marker moves with the image
    tab.wait_for_function("""() => {
        const img = document.getElementById('stage-image'), dot = document.querySelector('.marker.point');
        return img.clientWidth < 700 && Math.abs(dot.dataset.left - 1000 * img.clientWidth / 2000) < 0.01;
    }""")


def test_an_error_answer_is_shown_and_not_kept(page, tmp_path):
    tab, fake = page
    tab.set_input_files("#file-input", [str(png(tmp_path / "a.png", (64, 64)))])
    tab.fill("#question", "Anything?")
    tab.click("#send")  # nothing scripted: the fake answers 400 with an OpenAI error body
    tab.wait_for_selector(".message.assistant[data-state=error]")
    assert "no answer scripted" in tab.inner_text(".message.assistant")
    fake.answers.append("fine")
    tab.click("#send")  # the question and image are still there, and the failed turn is not resent
    tab.wait_for_selector(".message.assistant[data-state=done]")
    assert len(fake.requests[-1]["body"]["messages"]) == 1 and image_part(fake.requests[-1]["body"]["messages"][0])


ANSWERS = [
    "<point>[[250, 500]]</point>",
    "<point>[[1,2],[3.5, 4.25]]</point> text <point>\n[[ 999 , 0 ]]\n</point>",
    "no tags but [12, 34] and [5,6]",
    "<point>[[-5, 1200]]</point>",
    "<point>[[1e2, .5], [+7, 8.]]</point>",
    "<box>[[10, 20, 30, 40], [0,0,1000,1000]]</box><box>[[1.5,2.5,3.5,4.5]]</box>",
    "<ref>a cup</ref> <box>[[100,100,200,200]]</box> and [7, 8]",
    "<point>[[1, 2, 3]]</point>",
]


@pytest.mark.parametrize("size", [(640, 480), (333, 517), (1, 1)])
def test_page_parsing_matches_vlaser_points(page, size):
    """The page's JavaScript reads answers exactly as vlaser.points does (tags, spacing, decimals, lists)."""
    tab, _ = page
    script = ("([text, w, h]) => [parsePoints(text).map(p => toPixels(p, w, h)),"
              " parseBoxes(text).map(b => toPixels(b.box, w, h))]")
    for answer in ANSWERS:
        points, boxes = tab.evaluate(script, [answer, *size])
        assert [tuple(p) for p in points] == to_pixels(parse_points(answer), *size), answer
        assert [tuple(b) for b in boxes] == to_pixels(parse_boxes(answer), *size), answer


def test_drop_remove_and_start_over(page, tmp_path):
    tab, fake = page
    dropped, chosen = png(tmp_path / "dropped.png", (200, 100)), png(tmp_path / "chosen.png", (120, 90))
    files = tab.evaluate_handle("""async (items) => {
        const transfer = new DataTransfer();
        for (const [name, type, b64] of items) {
            transfer.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type}));
        }
        return transfer;
    }""", [["dropped.png", "image/png", base64.b64encode(dropped.read_bytes()).decode()],
           ["notes.txt", "text/plain", base64.b64encode(b"not an image").decode()]])
    tab.dispatch_event("#drop-zone", "drop", {"dataTransfer": files})
    tab.wait_for_function("document.querySelectorAll('#pending .thumb').length === 1")
    assert tab.inner_text("#status") == "notes.txt is not an image (text/plain)"
    tab.set_input_files("#file-input", str(chosen))
    tab.wait_for_function("document.querySelectorAll('#pending .thumb').length === 2")
    assert "Image 2 of 2: chosen.png, 120×90 px" in tab.inner_text("#stage-caption")
    tab.click("#pending button[title='Remove dropped.png']")
    assert "Image 1 of 1: chosen.png" in tab.inner_text("#stage-caption")

    fake.answers += ["One image.", "Hi."]
    ask(tab, "How many?")
    (url,) = image_part(fake.requests[0]["body"]["messages"][0])
    assert base64.b64decode(url.split(",", 1)[1]) == chosen.read_bytes()
    tab.click("#new-chat")
    assert tab.locator(".message").count() == 0 and tab.locator("#stage").is_hidden()
    ask(tab, "Hello")
    assert fake.requests[1]["body"]["messages"] == [{"role": "user", "content": "Hello"}]

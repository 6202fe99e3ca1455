"""Stand-ins for a model: a scripted backend for the runner, and a loopback chat-completions server."""

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vlaser.inference import Completion, Picture, Request
from vlaser.inference.prepare import place_tags


def free_port() -> int:
    """A loopback port free right now (for a server started as a subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(app) -> Iterator[int]:
    """``app`` under a real uvicorn server in a thread, on a loopback port bound here (no race for it); yields the
    port, stops the server on exit (for disconnects, concurrency and schemathesis runs)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_for_health(proc: subprocess.Popen, base: str, log: Path, timeout: float = 180) -> None:
    """Return once ``{base}/health`` answers 200; fail with the end of the server's ``log`` if the process exits
    first or ``timeout`` seconds pass (a model loading on a busy CPU takes a while)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"vlaser serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"vlaser serve did not start:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)


@contextlib.contextmanager
def end_token_first(vlm):
    """The model with its end token's logit raised far above the rest: every greedy step picks the end token
    unless something masks it. Yields the end token's id."""
    end = vlm.tokenizer.convert_tokens_to_ids(vlm.model.conv_template.stop_token)

    def raise_end(module, inputs, output):
        output = output.clone()
        output[..., end] += 1e4
        return output

    handle = vlm.model.lm_head.register_forward_hook(raise_end)
    try:
        yield end
    finally:
        handle.remove()


def scripted_sampling(answer_for):
    """A stand-in for the inference engine's ``_sample``: each row generates the token ids
    ``answer_for(row)`` gives (asked once, at the row's first token), whatever the model's logits say."""
    answers = {}

    def sample(engine, rows, hidden) -> None:
        for row in rows:
            if row not in answers:
                answers[row] = answer_for(row)
            engine._advance(row, answers[row][min(len(row.tokens), len(answers[row]) - 1)])

    return sample


def tagged(prompt, pictures, max_tiles, frames=0, system=None) -> Request:
    """A request whose prompt places its pictures with its own tags; the first ``frames`` are video frames."""
    return Request(prompt, [Picture(p, n, frame=k < frames) for k, (p, n) in enumerate(zip(pictures, max_tiles))],
                   system=system, tagged=True)


class ScriptedBackend:
    """Answers every request with a fixed text; keeps the requests, their prompts and the settings."""

    overlap_io = tiles_locally = False

    def __init__(self, answer="<point>[[500, 500]]</point>"):
        self.answer, self.asked, self.requests = answer, [], []

    def info(self):
        return {"backend": "scripted", "model": "scripted"}

    def tiling(self, picture, max_tiles):
        raise AssertionError("a scripted backend does not tile")

    def prepare(self, request, pending=None):
        return request

    def generate(self, requests, params, max_batch_size=None):
        self.requests += list(requests)
        self.asked += [place_tags(request) for request in requests]
        self.generation = params
        return [Completion(self.answer)] * len(requests)


class ChatServer:
    """A loopback chat-completions server answering from a script of (status, body) pairs; ``GET /v1/models``
    lists ``models`` (404 without them)."""

    def __init__(self, script, models=None):
        self.script, self.seen, self.gets = list(script), [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.gets.append(self.path)
                found = self.path == "/v1/models" and models is not None
                data = json.dumps({"object": "list", "data": models} if found else {"error": "no"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                outer.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body = outer.script.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()

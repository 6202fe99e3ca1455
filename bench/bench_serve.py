"""`vlaser serve` under load: 16 concurrent clients vs one client in sequence, tiny model, CPU, loopback only.

Starts the server as a subprocess on a free 127.0.0.1 port with a tiny random checkpoint (or `--model`), then:
- one client sends `--requests` chat requests one after another (an image and a question each, greedy);
- `--clients` clients send the same requests together (each its share, one after another);
- the time to the first streamed token, alone and while the other clients keep the server busy.
Prints requests/s and completion tokens/s of both, their ratio (target >= 3x), p50/p95 latency, and whether the
concurrent answers equal the sequential ones. Bounded: every request has a timeout, and at `--max-seconds` the
server is stopped and the run ends.
Usage: python bench/bench_serve.py [--requests 64] [--clients 16] [--max-tokens 32] [--max-batch-size 16]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

MODEL_NAME = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch_size: int, max_wait_ms: int, threads: int, log: Path
                 ) -> subprocess.Popen:
    """``vlaser serve`` on loopback with ``threads`` intra-op threads (0: torch's default); its output goes to
    ``log`` (shown if it fails to start)."""
    cmd = [sys.executable, "-m", "vlaser", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--dtype", "float32",
           "--device", "cpu", "--served-model-name", MODEL_NAME]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def bodies(n: int, max_tokens: int) -> list[dict]:
    """``n`` distinct greedy requests, each a small image (its colour varies) and a question."""
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (40 * (i % 6), 200 - 10 * (i % 12), 90)).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        out.append({"model": MODEL_NAME, "temperature": 0, "max_tokens": max_tokens, "max_num": 1,
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": f"Question {i}: where is the cup{'?' * (1 + i % 4)}"}]}]})
    return out


def post(base: str, body: dict, timeout: float) -> tuple[float, str, int]:
    """Latency in seconds, the answer and its completion tokens."""
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        answer = json.loads(r.read())
    return time.perf_counter() - start, answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]


def first_token(base: str, body: dict, timeout: float) -> float:
    """Seconds from sending a streamed request to the first chunk that carries text."""
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            if json.loads(line[5:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - start
    raise RuntimeError("the stream ended without text")


def run_clients(base: str, work: list[dict], clients: int, timeout: float) -> tuple[float, list]:
    """Each of ``clients`` threads sends its share of ``work`` in sequence; wall time and results in order."""
    results: list = [None] * len(work)

    def client(k: int) -> None:
        for i in range(k, len(work), clients):
            results[i] = post(base, work[i], timeout)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return time.perf_counter() - start, results


def ttft_under_load(base: str, work: list[dict], others: int, samples: int, timeout: float) -> list[float]:
    """Time to the first streamed token while ``others`` clients keep sending requests until the samples are done."""
    stop = threading.Event()

    def keep_busy(k: int) -> None:
        i = k
        while not stop.is_set():
            post(base, work[i % len(work)], timeout)
            i += others

    with ThreadPoolExecutor(others) as pool:
        load = [pool.submit(keep_busy, k) for k in range(others)]
        time.sleep(0.5)  # let the others fill the queue first
        try:
            return [first_token(base, work[i % len(work)], timeout) for i in range(samples)]
        finally:
            stop.set()
            for future in load:
                future.result()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, wall: float, results: list) -> float:
    latencies, tokens = [r[0] for r in results], sum(r[2] for r in results)
    rate = len(results) / wall
    print(f"{name:<24} {wall:7.2f} s  {rate:6.2f} req/s  {tokens / wall:8.1f} tokens/s  "
          f"p50 {percentile(latencies, 0.5) * 1000:7.0f} ms  p95 {percentile(latencies, 0.95) * 1000:7.0f} ms")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint (default: a tiny random one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="the server's intra-op threads (0: torch's default, one per core). A tiny model gains nothing "
                         "from more, and on a machine whose cores are busy (the clients, other jobs) their waits for "
                         "each other swamp what the bench measures: 10x slower steps, ratios from 3x to 17x")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per request")
    ap.add_argument("--ttft-samples", type=int, default=8)
    ap.add_argument("--max-seconds", type=int, default=900, help="the whole run's deadline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vlaser.model.tiny import build_tiny_checkpoint

            model = str(build_tiny_checkpoint(Path(tmp) / "tiny"))
        port, log = free_port(), Path(tmp) / "server.log"
        base = f"http://127.0.0.1:{port}"
        proc = start_server(model, port, args.max_batch_size, args.max_wait_ms, args.threads, log)

        def out_of_time(signum, frame) -> None:
            proc.kill()  # requests in flight fail at once
            raise SystemExit(f"stopped at the {args.max_seconds} s deadline")

        signal.signal(signal.SIGALRM, out_of_time)
        signal.alarm(args.max_seconds)
        try:
            wait_healthy(base, proc, log, timeout=300)
            work = bodies(args.requests, args.max_tokens)
            post(base, work[0], args.timeout)  # warm-up
            print(f"requests={args.requests} clients={args.clients} max_tokens={args.max_tokens} "
                  f"max_batch_size={args.max_batch_size} max_wait_ms={args.max_wait_ms} threads={args.threads}")
            wall_1, one = run_clients(base, work, 1, args.timeout)
            wall_n, many = run_clients(base, work, args.clients, args.timeout)
            rate_1 = report("1 client, in sequence", wall_1, one)
            rate_n = report(f"{args.clients} concurrent clients", wall_n, many)
            print(f"throughput ratio: {rate_n / rate_1:.2f}x (target >= 3x)")
            print(f"answers identical: {[r[1] for r in one] == [r[1] for r in many]}")
            alone = [first_token(base, work[i], args.timeout) for i in range(args.ttft_samples)]
            print(f"time to first token, alone: median {statistics.median(alone) * 1000:.0f} ms")
            busy = ttft_under_load(base, work, args.clients - 1, args.ttft_samples, args.timeout)
            print(f"time to first token, {args.clients - 1} other clients busy: median "
                  f"{statistics.median(busy) * 1000:.0f} ms, max {max(busy) * 1000:.0f} ms")
        finally:
            signal.alarm(0)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

"""The harness with multi-image and video items: prompts, frame sampling, batching, errors, resume, sharding."""

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from fakes import ChatServer, tagged
from media import frame_index, write_counter_video
from vlaser.eval.backends import OpenAIBackend, TransformersBackend, to_payload
from vlaser.eval.benchmark import Benchmark, EvalProtocol, Item, Score
from vlaser.eval.runner import build_request, read_predictions, run
from vlaser.inference import Completion, GenerationParams, Picture, Request
from vlaser.inference.prepare import place_tags


class ClipQA(Benchmark):
    """A minimal video + image benchmark: ``items.json`` rows ``{id, video?, images, question, answer}``."""

    name = "clip_qa"
    pointing = False
    protocols = (EvalProtocol("official", max_tiles=2, max_new_tokens=6, frames=4),)

    def load(self, data_dir: Path) -> list[Item]:
        rows = json.loads((data_dir / "items.json").read_text())
        return [Item(id=r["id"], question=r["question"], official_prompt=r["question"],
                     images=[data_dir / name for name in r.get("images", [])],
                     video=data_dir / r["video"] if r.get("video") else None, meta={"answer": r["answer"]})
                for r in rows]

    def prompt(self, item: Item, style: str) -> str:
        return item.official_prompt

    def score(self, item: Item, response: str) -> Score:
        return Score(float(response.strip() == item.meta["answer"]), parsed=bool(response.strip()))


def clip_qa(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    Image.new("RGB", (300, 120), (200, 30, 30)).save(root / "wide.png")
    Image.new("RGB", (90, 90), (30, 30, 200)).save(root / "square.png")
    rows = []
    for i in range(n):
        video = f"clip{i}.mp4"
        write_counter_video(root / video, 20 + 7 * i)
        images = [[], ["wide.png"], ["wide.png", "square.png"]][i % 3]
        question = ["What happens?", "Where is <image> this?", "Compare."][i % 3]
        rows.append({"id": f"c{i}", "video": video if i % 2 == 0 else None, "images": images,
                     "question": question, "answer": "A"})
    (root / "items.json").write_text(json.dumps(rows))
    return root


def test_requests_place_frames_first_and_images_at_their_tags(tmp_path):
    bench = ClipQA()
    items = bench.load(clip_qa(tmp_path / "d"))
    frames = [Image.new("RGB", (8, 8))] * 2
    request = build_request(bench, items[0], "official", 6, frames)
    assert place_tags(request) == "Frame-1: <image>\nFrame-2: <image>\nWhat happens?"
    assert [(p.max_tiles, p.frame) for p in request.pictures] == [(1, True), (1, True)]
    assert place_tags(build_request(bench, items[1], "official", 6)) == "Where is <image> this?"
    with_frames = Request("Where is <image> this?", [*(Picture(f, 1, frame=True) for f in frames),
                                                     Picture(Path("a.png"), 6)], tagged=True)
    assert place_tags(with_frames) == "Frame-1: <image>\nFrame-2: <image>\nWhere is <image> this?"
    two = build_request(bench, items[2], "official", 6, frames)
    assert place_tags(two) == "Frame-1: <image>\nFrame-2: <image>\nImage-1: <image>\nImage-2: <image>\nCompare."
    assert [p.max_tiles for p in two.pictures] == [1, 1, 6, 6]
    assert [p.source for p in two.pictures[2:]] == items[2].images
    items[1].images.append(items[1].images[0])
    with pytest.raises(ValueError, match="c1: the request holds 1 <image> tag"):
        build_request(bench, items[1], "official", 6)
    with pytest.raises(ValueError, match="holds 0 <image> tag"):
        place_tags(Request("no tags", [Picture(Path("a.png"), 6)], tagged=True))


def test_openai_payload_interleaves_text_images_and_frames(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)
    frame = Image.new("RGB", (4, 4), (255, 0, 0))
    payload = to_payload(tagged("Frame-1: <image>\nLook at <image>\nand answer.", [frame, image], [1, 6], frames=1),
                         "m", GenerationParams(16))
    content = payload["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "text", "image_url", "text"]
    assert [content[k]["text"] for k in (0, 2, 4)] == ["Frame-1: ", "Look at ", "and answer."]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")  # decoded frames go as JPEG
    assert content[3]["image_url"]["url"].startswith("data:image/png;base64,")  # files go as they are
    assert (payload["max_tokens"], payload["temperature"]) == (16, 0.0)
    single = to_payload(tagged("<image>\nWhat is it?", [image], [6]), "m", GenerationParams(8))
    single = single["messages"][0]["content"]
    assert [p["type"] for p in single] == ["image_url", "text"] and single[1]["text"] == "What is it?"
    ready = OpenAIBackend("http://x/v1", "m").prepare(tagged("<image>", [frame], [1], frames=1))
    assert [p.source for p in ready.pictures] == [frame]


def test_frames_follow_the_benchmarks_choice(tmp_path):
    from vlaser.model.preprocess import decode_frames

    data = clip_qa(tmp_path / "d", n=1)
    bench = ClipQA()
    item = bench.load(data)[0]
    frames = decode_frames(item.video, lambda total: bench.frame_indices(item, total, 4))
    # 20 frames, 4 segments of 4.75 frames: InternVL's get_index takes the segment centres
    assert [frame_index(f) for f in frames] == [2, 7, 12, 16]


class CountingBackend(TransformersBackend):
    """The tiny model, recording each generate call's items and the rows decoding together."""

    def __init__(self, path):
        super().__init__(str(path), dtype=torch.float32, device="cpu")
        self.batches = []

    def generate(self, prepared, generation, max_batch_size=None):
        self.batches.append((len(prepared), max_batch_size))
        return super().generate(prepared, generation, max_batch_size)


@pytest.mark.slow
def test_batched_mixed_media_equals_one_by_one_and_errors_are_retried(tiny_original, tmp_path):
    data = clip_qa(tmp_path / "d")
    backend = CountingBackend(tiny_original)
    bench = ClipQA()
    one = run(bench, backend, data, tmp_path / "one", batch_size=1)
    many = run(bench, backend, data, tmp_path / "many", batch_size=6)
    assert backend.batches == [(4, 1), (2, 1), (6, 6)]  # windows of 4 batches; rows decode 1 or 6 at a time
    first = json.loads((tmp_path / "one" / "predictions.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "one" / "predictions.jsonl").read_text() == (tmp_path / "many" / "predictions.jsonl").read_text()
    assert first["prompt"].startswith("Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nFrame-4: <image>\n")
    assert one["n_errors"] == many["n_errors"] == 0
    assert json.loads((tmp_path / "one" / "run.json").read_text())["settings"]["frames"] == 4

    (data / "clip2.mp4").write_bytes(b"not a video")
    (data / "clip4.mp4").unlink()
    out = tmp_path / "broken"
    metrics = run(bench, backend, data, out, batch_size=3)
    assert metrics["n_errors"] == 2 and metrics["n_items"] == 6 and metrics["n"] == 6
    errors = {e.split(":")[0] for e in metrics["errors"]}
    assert errors == {"item c2", "item c4"}
    assert any("clip4.mp4" in e and "not found" in e for e in metrics["errors"])
    write_counter_video(data / "clip2.mp4", 34)
    write_counter_video(data / "clip4.mp4", 48)
    backend.batches.clear()
    again = run(bench, backend, data, out, batch_size=3)
    assert backend.batches == [(2, 3)] and again["n_errors"] == 0  # only the two failed items are asked again
    assert read_predictions(out / "predictions.jsonl") == read_predictions(tmp_path / "many" / "predictions.jsonl")
    with pytest.raises(ValueError, match="frames"):
        run(bench, backend, data, out, frames=8)
    with pytest.raises(ValueError, match="--frames must be an integer of at least 1, got 0"):
        run(bench, backend, data, out, frames=0)


def vsi_many(root: Path, n: int) -> Path:
    """A VSI-Bench set (the HF parquet + ``scannet/<scene>.mp4`` counter clips) with ``n`` counting questions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for k in range(3):
        write_counter_video(root / "scannet" / f"s{k}.mp4", 30 + 10 * k)
    rows = [{"id": i, "dataset": "scannet", "scene_name": f"s{i % 3}", "question_type": "object_counting",
             "question": f"How many chairs are in room {i}?", "options": None, "ground_truth": str(2 + i % 4)}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    return root


@pytest.mark.slow
def test_video_benchmark_sigkill_resume_and_two_processes(tiny_original, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from vlaser.cli import main

    data = vsi_many(tmp_path / "vsi", 24)
    args = [sys.executable, "-m", "vlaser", "eval", "run", "--model", str(tiny_original), "--benchmark", "vsi_bench",
            "--data", str(data), "--batch-size", "1", "--max-new-tokens", "12", "--dtype", "float32", "--frames", "3"]
    assert main(args[3:] + ["--out", str(tmp_path / "full")]) == 0
    full = (tmp_path / "full" / "predictions.jsonl").read_text()
    assert full.count("Frame3: <image>") == 24 and "Frame4" not in full
    assert json.loads((tmp_path / "full" / "run.json").read_text())["settings"]["frames"] == 3

    out = tmp_path / "killed"
    pred = out / "predictions.jsonl"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not pred.is_file() or pred.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= pred.read_text().count("\n") < 24, "the run must be killed midway"
    assert main(args[3:] + ["--out", str(out)]) == 0
    assert sorted(pred.read_text().splitlines()) == sorted(full.splitlines())

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args[1:], "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == full
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "killed", "two")]
    assert metrics[0]["vsi"] == metrics[1]["vsi"] == metrics[2]["vsi"]


def test_each_clip_is_decoded_once_and_answers_are_stored_in_item_order(tmp_path, monkeypatch):
    import vlaser.model.preprocess as preprocess
    from vlaser.eval.benchmark import get_benchmark

    class Echo:
        def info(self):
            return {"backend": "echo", "model": "echo"}

        overlap_io = tiles_locally = False

        def tiling(self, picture, max_tiles):
            raise AssertionError("echo does not tile")

        def prepare(self, request, pending=None):
            return request

        def generate(self, requests, params, max_batch_size=None):
            return [Completion(str(frame_index(r.pictures[-1].source))) for r in requests]

    decoded = []
    original = preprocess._decode_at
    monkeypatch.setattr(preprocess, "_decode_at", lambda path, *a: decoded.append(path.name) or original(path, *a))
    data = vsi_many(tmp_path / "vsi", 12)  # items 0, 3, 6, 9 ask about clip s0, and so on
    run(get_benchmark("vsi_bench"), Echo(), data, tmp_path / "out", batch_size=5)
    assert sorted(decoded) == ["s0.mp4", "s1.mp4", "s2.mp4"]
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [str(i) for i in range(12)]
    # each clip's last sampled frame (8 segment centres of 30, 40, 50 frames) came with its own questions
    assert [r["response"] for r in records[:3]] == ["26", "36", "46"] and records[3]["response"] == "26"


def test_reused_frames_and_tiles_give_the_answers_fresh_ones_give(tiny_original, tmp_path):
    from vlaser.eval.benchmark import get_benchmark

    class Fresh(TransformersBackend):
        """Tiles every picture anew, and gets frames decoded anew (no clip is kept between items)."""

        def prepare(self, request, pending=None):
            self.preparer._last = {}
            return super().prepare(request, pending)

    data = vsi_many(tmp_path / "vsi", 6)
    bench = get_benchmark("vsi_bench")
    shared = TransformersBackend(str(tiny_original), dtype=torch.float32, device="cpu")
    run(bench, shared, data, tmp_path / "shared", batch_size=4, frames=3)
    fresh = Fresh(str(tiny_original), dtype=torch.float32, device="cpu")
    for k in range(6):  # one item per run: nothing to share
        run(bench, fresh, data, tmp_path / "fresh", batch_size=1, frames=3, limit=k + 1)
    assert (tmp_path / "shared" / "predictions.jsonl").read_text() == (
        tmp_path / "fresh" / "predictions.jsonl").read_text()


def _vllm_reads(content) -> str:
    """vLLM's flattening with ``--chat-template-content-format string`` (``chat_utils``): text parts joined by
    newlines, tags the text holds kept, one ``<image>`` line per remaining image part put in front."""
    if isinstance(content, str):
        return content
    text = "\n".join(part["text"] for part in content if part["type"] == "text")
    missing = sum(part["type"] == "image_url" for part in content) - text.count("<image>")
    assert missing >= 0
    return "\n".join(["<image>"] * missing + [text])


def _lmdeploy_reads(content) -> str:
    """LMDeploy's InternVL ``proc_messages``: only the first text part; images at its ``<IMAGE_TOKEN>`` tags, else
    all in one ``<img>`` block in front. Written back with ``<image>`` for each image's place."""
    if isinstance(content, str):
        return content
    prompt = next(part["text"] for part in content if part["type"] == "text")
    if "<IMAGE_TOKEN>" not in prompt:
        n = sum(part["type"] == "image_url" for part in content)
        prompt = f"<img>{'<IMAGE_TOKEN>' * n}</img>\n" + prompt
    return prompt.replace("<img><IMAGE_TOKEN></img>", "<image>").replace("<IMAGE_TOKEN>", "<image>")


PROMPTS = ["Image-1: <image>\nImage-2: <image>\nWhich one is closer?",  # MMSI-Bench
           "Frame-1: <image>\nFrame-2: <image>\nHow many chairs?",  # VSI-Bench's frames
           "<image>\nPoint to the free space.",  # the pointing benchmarks
           "Is a cup a container?"]  # no image


@pytest.mark.parametrize("prompt", PROMPTS)
def test_each_engines_payload_reads_as_internvls_prompt(tmp_path, prompt):
    """Read as each engine documents its reading, its payload gives back the prompt exactly, images in place."""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    n = prompt.count("<image>")
    request = tagged(prompt, [tmp_path / "a.png"] * n, [6] * n)
    for engine, reads in (("vllm", _vllm_reads), ("vlaser", _vllm_reads), ("lmdeploy", _lmdeploy_reads)):
        content = to_payload(request, "m", GenerationParams(8), server=engine)["messages"][0]["content"]
        assert reads(content) == prompt, engine
        assert isinstance(content, str) == (n == 0)
    if prompt.startswith("Image-1"):  # why the engines need their own shape: interleaved parts move the images
        assert _vllm_reads(to_payload(request, "m", GenerationParams(8))["messages"][0]["content"]) != prompt
    with pytest.raises(ValueError, match="unknown server 'tgi'"):
        to_payload(request, "m", GenerationParams(8), server="tgi")


@pytest.mark.parametrize(("owner", "engine"), [("vllm", "vllm"), ("lmdeploy", "lmdeploy"), ("vlaser", "vlaser"),
                                               ("acme", "openai"), (None, "openai")])
def test_auto_engine_follows_the_servers_models_list(owner, engine, caplog):
    models = None if owner is None else [{"id": "other", "owned_by": "vllm"}, {"id": "m", "owned_by": owner}]
    server = ChatServer([(200, {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})], models)
    try:
        backend = OpenAIBackend(server.url, "m")
        with caplog.at_level(logging.WARNING, logger="vlaser.eval.backends"):
            answers = backend.generate([tagged("Image-1: <image>\nWhy?", [Image.new("RGB", (4, 4))], [1])],
                                       GenerationParams(8))
        assert answers[0].text == "ok" and backend.info()["server"] == engine and server.gets == ["/v1/models"]
        tag = "<IMAGE_TOKEN>" if engine == "lmdeploy" else "<image>"
        first = server.seen[0]["messages"][-1]["content"][0]
        assert first["text"] == ("Image-1: " if engine == "openai" else f"Image-1: {tag}\nWhy?")
        assert ("did not list its models" in caplog.text) == (owner is None)
    finally:
        server.close()


def test_a_chosen_engine_asks_the_server_nothing():
    server = ChatServer([(200, {"choices": [{"message": {"content": "ok"}}]})], [{"id": "m", "owned_by": "vllm"}])
    try:
        backend = OpenAIBackend(server.url, "m", server="lmdeploy")
        backend.generate([tagged("<image>\nWhy?", [Image.new("RGB", (4, 4))], [1])], GenerationParams(8))
        assert server.gets == [] and "<IMAGE_TOKEN>\nWhy?" in server.seen[0]["messages"][-1]["content"][0]["text"]
    finally:
        server.close()
    with pytest.raises(ValueError, match="unknown server"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", server="tgi")

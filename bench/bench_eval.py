"""`eval run` items/s at batch size 8 vs 1 on the tiny model (CPU), with identical predictions.

Two cases:
- image: a synthetic Where2Place set (640x480 images and masks in RoboPoint's layout), 100 new tokens;
  one run with the default 50 report pictures is timed too;
- video: a synthetic VSI-Bench set (the HF parquet + ``<dataset>/<scene>.mp4`` clips, 640x480, 300 frames
  at 30 fps, a key frame every 30) with 8 frames per item and VSI's 16 new tokens, twice: 16 questions per
  clip (VSI-Bench has 5,130 questions about 288 scans, 17.8 per clip; their frames are decoded once) and one
  question per clip (every item decodes); the time spent decoding frames is summed to give its share of the
  wall time.
(On a GPU the next batch's media are prepared on a thread during generation; on this CPU that thread only
competed with generation, so it is off here.)
Usage: python bench/bench_eval.py [--items 48] [--new-tokens 100] [--video-items 32]
"""

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlaser.eval.runner as runner_module
from vlaser.eval.backends import TransformersBackend
from vlaser.eval.benchmark import get_benchmark
from vlaser.eval.runner import run
from vlaser.model.tiny import build_tiny_checkpoint


def make_where2place(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(n):
        shade = np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None] + rng.integers(0, 30, (480, 1, 3), np.uint8)
        Image.fromarray(np.broadcast_to(shade, (480, 640, 3)).copy()).save(root / "images" / f"{i}.jpg")
        mask = np.zeros((480, 640), dtype=np.uint8)
        mask[150:330, 200:440] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.jpg")
        lines.append({"question_id": i, "image": f"{i}.jpg", "category": "seen",
                      "text": f"Find free space number {i} between the objects. Your answer should be formatted..."})
    (root / "point_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def make_vsi(root: Path, n: int, scenes: int) -> Path:
    """VSI-Bench's layout: a parquet of questions and one 10 s clip per scene (several questions per scene)."""
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "scannet").mkdir(parents=True)
    for k in range(scenes):
        with av.open(str(root / "scannet" / f"scene{k}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
            stream.options = {"g": "30"}
            for t in range(300):
                x = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
                frame = np.broadcast_to((x + 3 * t + 40 * k) % 256, (480, 640, 3)).astype(np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
    rows = []
    for i in range(n):
        mca = i % 2 == 0
        rows.append({"id": i, "dataset": "scannet", "scene_name": f"scene{i % scenes}",
                     "question_type": "object_rel_distance" if mca else "object_counting",
                     "question": f"Question {i} about the room?", "ground_truth": "A" if mca else "3",
                     "options": ["A. chair", "B. table", "C. lamp", "D. sofa"] if mca else None})
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    return root


def timed_runs(bench, backend, data: Path, root: Path, new_tokens: int) -> tuple[dict, dict, float]:
    """Wall time per batch size (pictures off), their predictions, and seconds spent decoding video frames
    (over both runs)."""
    decode_seconds = [0.0]
    original = runner_module.decode_frames

    @functools.wraps(original)
    def counting(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            decode_seconds[0] += time.perf_counter() - start

    runner_module.decode_frames = counting
    times, preds = {}, {}
    try:
        for batch in (1, 8):
            out = root / f"{bench.name}-b{batch}"
            start = time.perf_counter()
            run(bench, backend, data, out, batch_size=batch, max_new_tokens=new_tokens, pictures=0)
            times[batch] = time.perf_counter() - start
            preds[batch] = (out / "predictions.jsonl").read_text()
    finally:
        runner_module.decode_frames = original
    assert preds[1] == preds[8], "batched and single answers must be identical"
    return times, preds, decode_seconds[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=100)  # the pointing benchmarks' default
    ap.add_argument("--video-items", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend = TransformersBackend(str(build_tiny_checkpoint(root / "tiny")), dtype=torch.float32, device="cpu")
        print(f"threads={torch.get_num_threads()}")
        bench = get_benchmark("where2place")
        data = make_where2place(root / "w2p", args.items)
        times, _, _ = timed_runs(bench, backend, data, root, args.new_tokens)
        start = time.perf_counter()
        run(bench, backend, data, root / "pictures", batch_size=8, max_new_tokens=args.new_tokens)
        with_pictures = time.perf_counter() - start
        print(f"image (where2place): items={args.items} max_new_tokens={args.new_tokens}")
        for batch, t in times.items():
            print(f"  batch {batch}: {t:6.2f} s  {args.items / t:6.1f} items/s")
        print(f"  speed-up {times[1] / times[8]:.2f}x (target >= 3x); predictions identical")
        print(f"  batch 8 with 50 report pictures: {with_pictures:6.2f} s  {args.items / with_pictures:6.1f} items/s")

        vsi = get_benchmark("vsi_bench")
        for per_clip in (16, 1):
            data = make_vsi(root / f"vsi{per_clip}", args.video_items, max(1, args.video_items // per_clip))
            tokens = vsi.settings.max_new_tokens
            times, _, decoding = timed_runs(vsi, backend, data, root / f"v{per_clip}", tokens)
            print(f"video (vsi_bench): items={args.video_items} questions per clip={per_clip} "
                  f"frames={vsi.settings.frames} max_new_tokens={tokens}")
            for batch, t in times.items():
                print(f"  batch {batch}: {t:6.2f} s  {args.video_items / t:6.1f} items/s")
            print(f"  speed-up {times[1] / times[8]:.2f}x (target >= 2.5x); predictions identical")
            share = decoding / sum(times.values())
            print(f"  decoding video: {decoding:.2f} s over both runs ({share:.0%} of wall time)")


if __name__ == "__main__":
    main()

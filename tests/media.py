"""Test media: short mp4 clips whose frame index can be read back from the pixels.

Each frame shows its index as 8 bits, one 16-pixel-wide black or white column per bit (most significant
first), which survives lossy encoding; ``frame_index`` reads a decoded frame back.
"""

from pathlib import Path

import numpy as np
from PIL import Image

BITS = 8
WIDTH, HEIGHT = 16 * BITS, 48


def counter_frame(index: int) -> np.ndarray:
    """A ``HEIGHT x WIDTH`` RGB frame showing ``index`` (0-255) in binary."""
    bits = [(index >> (BITS - 1 - b)) & 1 for b in range(BITS)]
    row = np.repeat(np.array(bits, dtype=np.uint8) * 255, 16)
    return np.broadcast_to(row[None, :, None], (HEIGHT, WIDTH, 3)).copy()


def write_counter_video(path: Path, n_frames: int, fps: int = 10, gop: int | None = None) -> Path:
    """An H.264 mp4 of ``n_frames`` counter frames at ``fps`` (B-frames on; a key frame every ``gop`` frames)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "10", "bf": "2", **({"g": str(gop), "keyint_min": str(gop)} if gop else {})}
        for index in range(n_frames):
            frame = av.VideoFrame.from_ndarray(counter_frame(index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_index(image: Image.Image) -> int:
    """The index a decoded counter frame shows (read at each column's centre row)."""
    pixels = np.asarray(image.convert("L").resize((WIDTH, HEIGHT)))[HEIGHT // 2]
    return int("".join("1" if pixels[16 * b + 8] > 127 else "0" for b in range(BITS)), 2)

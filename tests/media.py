"""Test media: short mp4 clips whose frame index can be read back from the pixels.

Each frame shows its index as 8 bits, one 16-pixel-wide black or white column per bit (most significant
first), which survives lossy encoding; ``frame_index`` reads a decoded frame back.
"""

import base64
import io
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


def solid_image(color, size: tuple[int, int] = (120, 80)) -> Image.Image:
    """A one-colour RGB picture (default 120x80: one tile plus nothing to cut)."""
    return Image.new("RGB", size, color)


def data_url(image: Image.Image, mime: str = "image/png") -> str:
    """The picture saved as PNG in a ``data:`` URL (``local_image_to_data_url``'s form); ``mime`` is the type
    the URL claims, so a test can label PNG bytes as another type."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (10, 10),
               fmt: str | None = None) -> None:
    """A black ``size`` mask, white inside ``box`` (x0, y0, x1, y1), saved at ``path`` (folders made)."""
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)

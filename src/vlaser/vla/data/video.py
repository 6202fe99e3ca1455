"""Camera streams of a LeRobot v3 dataset: one MP4 holds several episodes back to back, and an episode's frames
are the ones whose presentation times fall in its ``[from_timestamp, to_timestamp)``.

LeRobot encodes AV1 (SVT-AV1, CRF 30, a key frame every 2 frames, yuv420p) by default; H.264 datasets also
occur. The writer takes AV1 where this PyAV has an AV1 encoder and H.264 otherwise; the reader decodes whatever
FFmpeg decodes (dav1d or libaom for AV1).
"""

from __future__ import annotations

import bisect
import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from vlaser.errors import UserInputError, require

ENCODERS = {"av1": "libsvtav1", "h264": "libx264"}
ENCODER_OPTIONS = {"crf": "30", "g": "2"}  # LeRobot's defaults
SVT_OPTIONS = {"preset": "12"}


def _av():
    return require("av", "video", "LeRobot video features", package="PyAV")


def default_codec() -> str:
    """``"av1"`` (LeRobot's default) when this PyAV can encode it, else ``"h264"``."""
    return "av1" if ENCODERS["av1"] in _av().codecs_available else "h264"


def encode_episode(frames: np.ndarray, fps: float, codec: str) -> bytes:
    """One episode's ``(T, H, W, 3)`` uint8 RGB frames as an MP4 of its own (starting on a key frame)."""
    av = _av()
    _quiet_svt()
    if codec not in ENCODERS:
        raise UserInputError(f"video codec {codec!r}: choose one of {', '.join(ENCODERS)}")
    if ENCODERS[codec] not in av.codecs_available:
        raise UserInputError(f"video codec {codec!r}: this PyAV has no {ENCODERS[codec]} encoder")
    rate = Fraction(fps).limit_denominator(1001)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(ENCODERS[codec], rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {**ENCODER_OPTIONS, **(SVT_OPTIONS if codec == "av1" else {})}
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts, frame.time_base = t, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def _quiet_svt() -> None:
    """SVT-AV1 prints its banner and settings (~25 lines) to stderr itself, not through FFmpeg's log, at every
    encoder it opens; ``SVT_LOG`` sets its level, read once per process when the first encoder opens. Errors
    only (1), unless the environment already sets one."""
    os.environ.setdefault("SVT_LOG", "1")


class VideoWriter:
    """One MP4 holding episodes back to back: each is encoded on its own, then its packets are appended with
    their times shifted to the end of the file so far (LeRobot concatenates episode videos the same way)."""

    def __init__(self, path: Path, fps: float, codec: str) -> None:
        self.path, self.fps, self.codec = path, Fraction(fps).limit_denominator(1001), codec
        self.frames, self.bytes = 0, 0
        self._container = self._stream = None

    @property
    def seconds(self) -> float:
        """Where the next episode starts (the end of what has been written)."""
        return float(self.frames / self.fps)

    def add(self, frames: np.ndarray) -> None:
        """Append an episode's ``(T, H, W, 3)`` uint8 RGB frames."""
        av = _av()
        data = encode_episode(frames, self.fps, self.codec)
        with av.open(io.BytesIO(data)) as source:
            stream = source.streams.video[0]
            if self._container is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._container = av.open(str(self.path), "w")
                self._stream = self._container.add_stream_from_template(stream, opaque=True)
            offset = round(self.frames / self.fps / stream.time_base)
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue  # the demuxer's final empty packet
                packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                packet.stream = self._stream
                self._container.mux(packet)
        self.frames += len(frames)
        self.bytes += len(data)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()


class VideoFile:
    """One MP4 of a dataset: its frame times (read once from the packets, without decoding) and time segments
    decoded on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._times: list[float] | None = None

    def _open(self):
        av = _av()
        if not self.path.is_file():
            raise UserInputError(f"{self.path}: missing")
        try:
            container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise UserInputError(f"{self.path}: not a readable video ({e})") from e
        if not container.streams.video:
            container.close()
            raise UserInputError(f"{self.path}: no video stream")
        return container, container.streams.video[0]

    def times(self) -> list[float]:
        """Presentation times (seconds, ascending) of every frame in the file."""
        if self._times is None:
            av = _av()
            container, stream = self._open()
            with container:
                try:
                    stamps = [float(p.pts * p.time_base) for p in container.demux(stream)
                              if p.size and p.pts is not None]
                except av.FFmpegError as e:
                    raise UserInputError(f"{self.path}: not a readable video ({e})") from e
            self._times = sorted(stamps)
        return self._times

    def count(self, start: float, end: float, fps: float) -> int:
        """How many frames the file has in ``[start, end)`` (times within half a frame count as in)."""
        tol = 0.5 / fps
        times = self.times()
        return bisect.bisect_left(times, end - tol) - bisect.bisect_left(times, start - tol)

    def segment(self, start: float, end: float, fps: float) -> list[np.ndarray | None]:
        """The frames of ``[start, end)`` as uint8 ``(H, W, 3)`` arrays, one slot per expected frame
        (``round((end - start) * fps)``); a slot the file has no frame for stays None."""
        av = _av()
        tol = 0.5 / fps
        slots: list[np.ndarray | None] = [None] * round((end - start) * fps)
        container, stream = self._open()
        with container:
            try:
                if start > tol:
                    container.seek(int((start - tol) / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    t = float(frame.pts * frame.time_base)
                    if t >= end - tol:
                        break
                    slot = round((t - start) * fps)
                    if 0 <= slot < len(slots):
                        slots[slot] = frame.to_ndarray(format="rgb24")
            except av.FFmpegError as e:
                raise UserInputError(f"{self.path}: cannot decode the frames in [{start:.3f}, {end:.3f}) s ({e})") \
                    from e
        return slots

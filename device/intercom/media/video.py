"""Video sources. The door's camera is behind `Camera`: one interface, backends chosen by config.

`TestPatternCamera` is the simulation: a moving pattern that changes every frame (so a
receiver can prove it decoded live video, not one still) produced at the configured rate.
"""

from __future__ import annotations

import fractions
import math
from typing import Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack

from .pacing import Pacer

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class Camera(Protocol):
    def track(self) -> MediaStreamTrack:
        """A new video track for one call."""

    def snapshot_jpeg(self) -> bytes | None:
        """A JPEG of what the camera sees now, sent with the dial; None if it cannot."""

    def close(self) -> None: ...


def encode_image(frame: av.VideoFrame, codec: str = "mjpeg") -> bytes:
    """Encode one frame as a still image (JPEG or PNG) with FFmpeg, already a dependency."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = frame.width, frame.height
    ctx.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
    if codec == "mjpeg":
        ctx.options = {"qscale": "4"}  # type: ignore[attr-defined]
    packets = ctx.encode(frame.reformat(format=ctx.pix_fmt)) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


class TestPattern:
    """Draws frame N of a moving pattern: sliding colour bars and a bouncing white square."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int, height: int) -> None:
        if width % 4 or height % 4:
            raise ValueError("test pattern size must be a multiple of 4")
        self.width, self.height = width, height
        xs = np.arange(2 * width)
        self._y_row = (np.where((xs // (width // 8)) % 2 == 0, 150, 90)).astype(np.uint8)
        cx = np.arange(width)  # chroma rows are half width, two of them per flattened row
        self._u_row = (128 + 100 * np.sin(cx / width * 4 * math.pi)).astype(np.uint8)
        self._v_row = (128 + 100 * np.cos(cx / width * 4 * math.pi)).astype(np.uint8)
        self.box = max(8, height // 8)

    def frame(self, n: int) -> av.VideoFrame:
        w, h, box = self.width, self.height, self.box
        off = (n * 4) % w
        y = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y[:h] = self._y_row[off:off + w]
        bx = (n * 6) % (w - box)
        by = int((h - box) / 2 * (1 + math.sin(n / 15)))
        y[by:by + box, bx:bx + box] = 235
        c_off = (n * 2) % (w // 2)
        y[h:h + h // 4] = np.roll(self._u_row, c_off)
        y[h + h // 4:] = np.roll(self._v_row, -c_off)
        return av.VideoFrame.from_ndarray(y, format="yuv420p")


class TestPatternTrack(MediaStreamTrack):
    __test__ = False
    kind = "video"

    def __init__(self, pattern: TestPattern, fps: float) -> None:
        super().__init__()
        self._pattern = pattern
        self._fps = fps
        self._pacer = Pacer(fps)

    async def recv(self) -> av.VideoFrame:
        n = await self._pacer.next()
        frame = self._pattern.frame(n)
        frame.pts = int(n * 90000 / self._fps)
        frame.time_base = VIDEO_TIME_BASE
        return frame


class TestPatternCamera:
    """The simulated camera: same interface as the real ones, no hardware."""

    __test__ = False

    def __init__(self, width: int = 640, height: int = 480, fps: float = 15.0) -> None:
        self.pattern = TestPattern(width, height)
        self.fps = fps

    def track(self) -> MediaStreamTrack:
        return TestPatternTrack(self.pattern, self.fps)

    def snapshot_jpeg(self) -> bytes | None:
        return encode_image(self.pattern.frame(0))

    def close(self) -> None:
        pass

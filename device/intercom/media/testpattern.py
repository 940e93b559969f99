"""The simulated camera: a moving pattern with its capture time drawn in, encoded by libx264,
so the tests and the demo run the same pass-through path as the Pi."""

from __future__ import annotations

import logging
import math
import threading

import av
import numpy as np

from .camera import EncodedCamera
from .pacing import RealTime
from .stamps import draw_stamp, monotonic_us
from .threads import name_thread
from .x264 import X264

log = logging.getLogger("intercom.camera")


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

    def frame(self, n: int, stamp_us: int | None = None) -> av.VideoFrame:
        """Frame N; with `stamp_us`, its capture time is drawn in a strip along the top, so a
        receiver can measure glass-to-glass delay from the picture alone (`read_stamp`)."""
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
        if stamp_us is not None:
            draw_stamp(y[:h], stamp_us)
        return av.VideoFrame.from_ndarray(y, format="yuv420p")




class TestPatternCamera(EncodedCamera):
    """The simulated camera: the test pattern in real time, through libx264."""

    __test__ = False
    name = "test_pattern"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 15.0, bitrate: int = 1_000_000,
                 iperiod: int = 60, encoding: str = "passthrough") -> None:
        super().__init__(encoding)
        self.pattern = TestPattern(width, height)
        self.fps = fps
        self._encoder = X264(width, height, fps, bitrate, iperiod)
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="camera-test-pattern", daemon=True)
        self._thread.start()

    def force_keyframe(self) -> None:
        self._encoder.force_keyframe()

    def _run(self) -> None:
        name_thread("camera")
        clock = RealTime(1 / self.fps)
        n = 0
        while self._running:
            captured = monotonic_us()
            frame = self.pattern.frame(n, stamp_us=captured)
            if self.passthrough:
                out = self._encoder.encode(frame)
                if out is not None:
                    self._publish(out[0], out[1], captured)
            else:
                self._publish_raw(frame, captured)
            n += 1
            clock.tick()

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)

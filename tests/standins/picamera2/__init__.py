"""A stand-in for picamera2, which cannot import on a machine without libcamera.

It behaves as picamera2's `Picamera2`, `H264Encoder` and `Output` do where the door uses them:
`start_recording(encoder, output)` starts the output, then an encoder thread calls
`output.outputframe(frame, keyframe, timestamp)` once per frame with one H.264 access unit
(bytes) and the sensor timestamp in microseconds; `encoder.force_key_frame()` makes the next
frame an IDR. The pictures are a moving square encoded by libx264 (not by our own encoder
code, so the tests do not grade our code against itself). As on the Pi, SPS/PPS come before
every IDR only with `repeat=True`.

Tests put this directory first on sys.path (or PYTHONPATH for the daemon) to use it.
"""

from __future__ import annotations

import fractions
import threading
import time
from typing import Any

import av
import numpy as np

from .encoders import H264Encoder

__all__ = ["Picamera2"]
STANDIN = True
instances: list[Picamera2] = []


class Picamera2:
    def __init__(self, camera_num: int = 0) -> None:
        self.config: dict[str, Any] | None = None
        self.encoder: H264Encoder | None = None
        self.output: Any = None
        self.closed = False
        self.frames = 0
        self._thread: threading.Thread | None = None
        self._running = False
        instances.append(self)

    def create_video_configuration(self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None,
                                   **_: Any) -> dict[str, Any]:
        main = {"size": (1280, 720), "format": "XBGR8888", **(main or {})}
        return {"use_case": "video", "main": main, "controls": {"FrameRate": 30.0, **(controls or {})}}

    def configure(self, config: dict[str, Any]) -> None:
        if self.closed:
            raise RuntimeError("Camera is closed")
        self.config = config

    def start_recording(self, encoder: H264Encoder, output: Any, **_: Any) -> None:
        if self.config is None:
            raise RuntimeError("Camera must be configured before recording")
        self.encoder, self.output = encoder, output
        output.start()
        self._running = True
        self._thread = threading.Thread(target=self._encode, name="standin-picamera2-encoder", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        assert self.config is not None and self.encoder is not None
        width, height = self.config["main"]["size"]
        fps = float(self.config["controls"]["FrameRate"])
        enc = self.encoder
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = fractions.Fraction(1, 1000)
        ctx.bit_rate = enc.bitrate or 2_000_000
        ctx.gop_size = enc.iperiod or 60
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast"}
        if enc.profile:
            ctx.profile = enc.profile.capitalize()
        start = time.monotonic()
        n = 0
        while self._running:
            delay = start + n / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            luma = np.full((height * 3 // 2, width), 60, np.uint8)
            x = (n * 8) % (width - 32)
            luma[height // 2 - 16:height // 2 + 16, x:x + 32] = 230
            frame = av.VideoFrame.from_ndarray(luma, format="yuv420p")
            frame.pts = n * 1000 // int(fps)
            if enc._take_key_request():
                frame.pict_type = av.video.frame.PictureType.I
            for packet in ctx.encode(frame):
                data = bytes(packet)
                if packet.is_keyframe and not enc.repeat and self.frames > 0:
                    data = _without_parameter_sets(data)
                self.frames += 1
                self.output.outputframe(data, packet.is_keyframe, int(time.monotonic() * 1e6))
            n += 1

    def stop_recording(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.output is not None:
            self.output.stop()

    def close(self) -> None:
        self.stop_recording()
        self.closed = True


def _without_parameter_sets(data: bytes) -> bytes:
    """Drop SPS (7) and PPS (8) NAL units, as the Pi's encoder does after the first IDR
    unless told `repeat=True`."""
    parts = data.split(b"\x00\x00\x01")
    kept = [p for p in parts[1:] if p and (p[0] & 0x1F) not in (7, 8)]
    return b"".join(b"\x00\x00\x01" + p.rstrip(b"\x00") for p in kept)

"""libx264 on a capture thread, for cameras without a hardware encoder (the test pattern, a
V4L2 camera giving raw or MJPEG frames): baseline H.264 with SPS/PPS before every IDR."""

from __future__ import annotations

import fractions
import threading

import av


class X264:
    """libx264 set up as the Pi's encoder is: baseline, zero latency, SPS/PPS on every IDR.

    Used where no hardware encoder exists (the test pattern, raw USB cameras). It runs on the
    capture thread; `force_keyframe` may be called from any thread.
    """

    def __init__(self, width: int, height: int, fps: float, bitrate: int, iperiod: int) -> None:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        rate = fractions.Fraction(fps).limit_denominator(1001)
        ctx.framerate = rate
        ctx.time_base = 1 / rate
        ctx.bit_rate = bitrate
        ctx.gop_size = iperiod
        # Without a global header libx264 repeats SPS/PPS before every IDR, as repeat=True
        # makes the Pi's encoder do: a viewer can start at any keyframe.
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast"}
        ctx.profile = "Baseline"
        self._ctx = ctx
        self._width, self._height = width, height
        self._count = 0
        self._key = threading.Event()

    def force_keyframe(self) -> None:
        self._key.set()

    def encode(self, frame: av.VideoFrame) -> tuple[bytes, bool] | None:
        if (frame.width, frame.height, frame.format.name) != (self._width, self._height, "yuv420p"):
            frame = frame.reformat(width=self._width, height=self._height, format="yuv420p")
        frame.pts = self._count
        self._count += 1
        if self._key.is_set():
            self._key.clear()
            frame.pict_type = av.video.frame.PictureType.I
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        packets = self._ctx.encode(frame)
        if not packets:
            return None
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)

"""The Pi camera and its hardware H.264 encoder. picamera2 is imported only here and only when
chosen, because it cannot import without libcamera."""

from __future__ import annotations

import logging
from typing import Any

from .camera import EncodedCamera
from .stamps import monotonic_us

log = logging.getLogger("intercom.camera")


class Picamera2Camera(EncodedCamera):
    """The Pi camera with its hardware H.264 encoder (picamera2).

    picamera2 calls `Output.outputframe` on its encoder thread with one access unit, whether
    it is a keyframe, and the sensor timestamp in microseconds.
    """

    name = "picamera2"

    def __init__(self, width: int, height: int, fps: float, bitrate: int, iperiod: int) -> None:
        super().__init__("passthrough")  # the hardware encoder's H.264 (the config allows nothing else)
        self.size, self.fps, self.bitrate, self.iperiod = (width, height), fps, bitrate, iperiod
        self._picam2: Any = None
        self._encoder: Any = None

    def start(self) -> None:
        super().start()
        from picamera2 import Picamera2  # only here: it cannot import without libcamera
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output

        publish = self._publish

        class CallOutput(Output):
            def outputframe(self, frame: bytes, keyframe: bool = True, timestamp: int | None = None,
                            packet: Any = None, audio: bool = False) -> None:
                if audio:
                    return
                # Copy now: the encoder reuses its buffer once this returns.
                publish(bytes(frame), bool(keyframe), timestamp if timestamp is not None else monotonic_us())

        self._picam2 = Picamera2()
        config = self._picam2.create_video_configuration(main={"size": self.size, "format": "YUV420"},
                                                         controls={"FrameRate": self.fps})
        self._picam2.configure(config)
        self._encoder = H264Encoder(bitrate=self.bitrate, repeat=True, iperiod=self.iperiod, profile="baseline")
        self._picam2.start_recording(self._encoder, CallOutput())
        log.info("picamera2 recording %dx%d at %g fps, H.264 %d bit/s", *self.size, self.fps, self.bitrate)

    def force_keyframe(self) -> None:
        if self._encoder is not None:
            self._encoder.force_key_frame()  # picamera2 >= 0.3.32

    def close(self) -> None:
        if self._picam2 is not None:
            self._picam2.stop_recording()
            self._picam2.close()
            self._picam2 = None

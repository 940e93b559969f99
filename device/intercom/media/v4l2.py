"""A USB camera through PyAV. When the camera gives H.264 it passes through; when it gives raw
or MJPEG frames, libx264 encodes them on the capture thread."""

from __future__ import annotations

import logging
import threading
import time

import av

from .camera import EncodedCamera
from .stamps import monotonic_us
from .threads import name_thread
from .x264 import X264

log = logging.getLogger("intercom.camera")


class V4l2Camera(EncodedCamera):
    """A USB (UVC) camera through PyAV: H.264 passes through; other formats are encoded.

    `container_format` is `v4l2` on a board. Any FFmpeg input works the same way (the tests use
    `lavfi` and an `h264` file); packets are paced to their timestamps, which for a live camera
    changes nothing. A UVC camera's own encoder cannot be asked for a keyframe through V4L2's
    streaming interface, so in pass-through a new viewer waits for the camera's next IDR.
    """

    name = "v4l2"

    def __init__(self, device: str, width: int, height: int, fps: float, bitrate: int, iperiod: int,
                 container_format: str = "v4l2", input_format: str = "h264", encoding: str = "passthrough") -> None:
        super().__init__(encoding)
        self.device, self.container_format = device, container_format
        self.size, self.fps = (width, height), fps
        self._options = {"video_size": f"{width}x{height}", "framerate": f"{fps:g}"} if container_format == "v4l2" else {}
        if container_format == "v4l2" and input_format:
            self._options["input_format"] = input_format
        self._bitrate, self._iperiod = bitrate, iperiod
        self._encoder: X264 | None = None
        self.passes_camera_h264: bool | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        super().start()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"camera-v4l2-{self.device}", daemon=True)
        self._thread.start()

    def force_keyframe(self) -> None:
        if self._encoder is not None:
            self._encoder.force_keyframe()

    def _run(self) -> None:
        name_thread("camera")
        try:
            container = av.open(self.device, format=self.container_format, options=self._options)
        except (av.FFmpegError, OSError) as exc:
            self.error = f"cannot open camera {self.device}: {exc}"
            log.error("%s", self.error)
            self._opened.set()
            return
        try:
            stream = container.streams.video[0]
            self.passes_camera_h264 = self.passthrough and stream.codec_context.name == "h264"
            if self.passthrough and not self.passes_camera_h264:
                self._encoder = X264(*self.size, self.fps, self._bitrate, self._iperiod)
            log.info("camera %s: %s, %s", self.device, stream.codec_context.name,
                     "passed through" if self.passes_camera_h264 else
                     "encoded with libx264" if self.passthrough else f"raw pictures for {self.encoding} per call")
            self._opened.set()
            start = time.monotonic()
            for packet in container.demux(stream):
                if not self._running:
                    break
                if packet.size == 0:
                    continue
                if packet.pts is not None and packet.time_base is not None:
                    delay = start + float(packet.pts * packet.time_base) - time.monotonic()
                    if 0 < delay < 2:
                        time.sleep(delay)
                if self.passes_camera_h264:
                    self._publish(bytes(packet), packet.is_keyframe, monotonic_us())
                    continue
                for frame in packet.decode():
                    if self._encoder is None:
                        self._publish_raw(frame, monotonic_us())
                        continue
                    out = self._encoder.encode(frame)
                    if out is not None:
                        self._publish(out[0], out[1], monotonic_us())
        except av.FFmpegError as exc:
            self.error = f"camera {self.device} stopped: {exc}"
            log.error("%s", self.error)
        finally:
            container.close()

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)

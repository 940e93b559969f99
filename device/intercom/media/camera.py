"""The door's camera: one interface, three backends chosen in the YAML.

Every backend produces H.264 access units (SPS/PPS inline, baseline profile) on a thread of
its own, the hardware edge, and hands them to the event loop with `call_soon_threadsafe`:

- `picamera2`: the Pi camera and its hardware encoder. picamera2 is imported only here and
  only when chosen, because it cannot import without libcamera.
- `v4l2`: a USB camera through PyAV. When the camera gives H.264 it passes through; when it
  gives raw or MJPEG frames, libx264 encodes them on the capture thread.
- `test_pattern`: the simulation, a moving pattern encoded by libx264, so the tests and the
  demo run the same pass-through path as the Pi.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import threading
import time
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack

from .pacing import RealTime
from .threads import name_thread
from .video import EncodedVideo, RawVideo, forward_keyframe_requests, prefer_codec

#: How calls get the camera's pictures (`hardware.camera.encoding`).
ENCODINGS = {"passthrough": "video/H264", "vp8": "video/VP8", "h264": "video/H264"}

log = logging.getLogger("intercom.camera")


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


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


#: The capture-time strip: 40 bits of CLOCK_MONOTONIC in 100 µs units (3.4 years of uptime)
#: and an 8-bit check, as black and white cells big enough to survive H.264 and VP8 at a
#: low bitrate: 24 cells a row, 2 rows.
_STAMP_BITS, _STAMP_COLS = 48, 24


def _stamp_cells(width: int, height: int) -> tuple[int, int]:
    return width // _STAMP_COLS, max(8, height // 30)


def _check_byte(value: int) -> int:
    return (sum(value.to_bytes(5, "big")) * 31 + 7) & 0xFF


def draw_stamp(luma: np.ndarray, stamp_us: int) -> None:
    value = (stamp_us // 100) & ((1 << 40) - 1)
    word = (value << 8) | _check_byte(value)
    cw, ch = _stamp_cells(luma.shape[1], luma.shape[0])
    for i in range(_STAMP_BITS):
        bit = (word >> (_STAMP_BITS - 1 - i)) & 1
        row, col = divmod(i, _STAMP_COLS)
        luma[row * ch:(row + 1) * ch, col * cw:(col + 1) * cw] = 235 if bit else 16


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The capture time (monotonic µs, to 100 µs) a test-pattern frame carries, or None when
    the frame has no readable stamp (another camera, or a picture damaged in transit)."""
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
    cw, ch = _stamp_cells(frame.width, frame.height)
    if cw < 4:
        return None
    word = 0
    for i in range(_STAMP_BITS):
        row, col = divmod(i, _STAMP_COLS)
        cell = luma[row * ch + ch // 4:(row + 1) * ch - ch // 4, col * cw + cw // 4:(col + 1) * cw - cw // 4]
        level = float(cell.mean())
        if 60 < level < 190:
            return None  # neither black nor white: not a stamp
        word = (word << 1) | (level >= 128)
    value = word >> 8
    if word & 0xFF != _check_byte(value):
        return None
    return value * 100


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


class EncodedCamera:
    """What every backend shares: the fan-out to calls and the snapshot.

    With `encoding: passthrough` (the default) the backend's H.264 goes to every call as it
    is. With `vp8` or `h264` the backend hands over raw pictures instead and aiortc encodes
    them for each call: the cost the benchmarks compare, kept for peers without H.264.
    """

    name = "camera"

    def __init__(self, encoding: str = "passthrough") -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown camera encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        self.encoding = encoding
        self.passthrough = encoding == "passthrough"
        self.video: EncodedVideo | RawVideo = EncodedVideo(self.force_keyframe) if self.passthrough else RawVideo()
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_to(self, pc: Any) -> None:
        """Give a call the camera: a send-only video transceiver offering only our codec."""
        transceiver = pc.addTransceiver(self.track(), direction="sendonly")
        prefer_codec(transceiver, ENCODINGS[self.encoding])
        if isinstance(self.video, EncodedVideo):
            forward_keyframe_requests(transceiver.sender, self.video)

    def start(self) -> None:
        """Start capturing; called on the event loop."""
        self._loop = asyncio.get_running_loop()

    def force_keyframe(self) -> None:
        raise NotImplementedError

    def _publish(self, data: bytes, keyframe: bool, timestamp_us: int) -> None:
        """From the capture thread: hand one access unit to the loop."""
        assert self._loop is not None and isinstance(self.video, EncodedVideo)
        try:
            self._loop.call_soon_threadsafe(self.video.publish, data, keyframe, timestamp_us)
        except RuntimeError:
            pass  # the loop has closed: the daemon is stopping

    def _publish_raw(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        """From the capture thread: hand one raw picture to the loop (encoding vp8/h264)."""
        assert self._loop is not None and isinstance(self.video, RawVideo)
        try:
            self._loop.call_soon_threadsafe(self.video.publish, frame, timestamp_us)
        except RuntimeError:
            pass

    def track(self) -> MediaStreamTrack:
        return self.video.track()

    async def snapshot_jpeg(self) -> bytes | None:
        return await self.video.snapshot_jpeg()

    def close(self) -> None:
        pass


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


def make_camera(config: dict[str, Any]) -> EncodedCamera:
    """The backend the installer chose (`hardware.camera` in the YAML)."""
    size = (config["width"], config["height"], config["fps"], config["bitrate"], config["iperiod"])
    backend = config["backend"]
    if backend == "picamera2":
        return Picamera2Camera(*size)
    encoding = config.get("encoding", "passthrough")
    if backend == "v4l2":
        return V4l2Camera(config["device"], *size, container_format=config["format"],
                          input_format=config["input_format"], encoding=encoding)
    return TestPatternCamera(*size, encoding=encoding)

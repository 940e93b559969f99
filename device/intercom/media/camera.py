"""The door's camera: one interface, three backends chosen in the YAML (`cameras.py` picks one).

Every backend produces H.264 access units (SPS/PPS inline, baseline profile) on a thread of
its own, the hardware edge, and hands them to the event loop with `call_soon_threadsafe`:

- `picamera2` (`picamera.py`): the Pi camera and its hardware encoder.
- `v4l2` (`v4l2.py`): a USB camera through PyAV, passed through or encoded by libx264 (`x264.py`).
- `test_pattern` (`testpattern.py`): the simulation, a moving pattern encoded by libx264, so
  the tests and the demo run the same pass-through path as the Pi.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import av
from aiortc import MediaStreamTrack

from .aiortc_hooks import forward_keyframe_requests
from .video import EncodedVideo, RawVideo, prefer_codec

#: How calls get the camera's pictures (`hardware.camera.encoding`).
ENCODINGS = {"passthrough": "video/H264", "vp8": "video/VP8", "h264": "video/H264"}

log = logging.getLogger("intercom.camera")


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

    def add_to(self, pc: Any, with_track: bool = True) -> None:
        """Give a call the camera: a send-only video transceiver offering only our codec.
        Without its track (a connection prepared ahead), `replaceTrack(camera.track())` at the
        call; until then nothing is queued for it."""
        transceiver = pc.addTransceiver(self.track() if with_track else "video", direction="sendonly")
        prefer_codec(transceiver, ENCODINGS[self.encoding])
        if isinstance(self.video, EncodedVideo):
            forward_keyframe_requests(transceiver.sender, self.video.keyframe_requested)

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

"""H.264 from the camera's encoder to every call, without re-encoding.

Every camera backend ends in an encoder (the Pi's hardware encoder, a UVC camera's own, or
libx264 for the test pattern) whose access units arrive here on the event loop. `EncodedVideo`
fans them out to one `H264Track` per call; aiortc packs `av.Packet`s into RTP without
touching the picture (measured on x86: 0.014 ms per frame instead of 5-11 ms to encode).

What pass-through gives up, this module puts back:
- A new viewer must start at a keyframe, so a track asks the encoder for one when the call
  connects and drops everything before it (joining mid-GOP waited ~1.8 s for the next IDR).
- The receiver's keyframe requests (PLI/FIR) end in aiortc's sender, which only tells its own
  encoder; `aiortc_hooks.forward_keyframe_requests` hands them to the camera's encoder instead.
- The offer must put H.264 first and only, or a peer could pick VP8 for packets that are H.264.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import av
from aiortc import MediaStreamTrack, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from av.video.codeccontext import VideoCodecContext

log = logging.getLogger("intercom.video")

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


def encode_image(frame: av.VideoFrame, codec: str = "mjpeg") -> bytes:
    """Encode one frame as a still image (JPEG or PNG) with FFmpeg, already a dependency."""
    ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
    ctx.width, ctx.height = frame.width, frame.height
    ctx.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
    if codec == "mjpeg":
        ctx.options = {"qscale": "4"}
    packets = ctx.encode(frame.reformat(format=ctx.pix_fmt)) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def decode_h264(access_unit: bytes) -> av.VideoFrame:
    """Decode a keyframe access unit (SPS and PPS inline, as every backend sends them)."""
    ctx = av.CodecContext.create("h264", "r")
    frames = ctx.decode(av.Packet(access_unit)) + ctx.decode(None)
    if not frames:
        raise ValueError("the access unit did not decode to a picture")
    return frames[-1]


@dataclass(frozen=True)
class AccessUnit:
    data: bytes
    keyframe: bool
    timestamp_us: int


class Viewer(Protocol):
    """Whatever takes the camera's access units as they come: a call's track, an RTSP stream."""

    def _offer(self, unit: AccessUnit) -> None: ...


@dataclass
class VideoStats:
    frames: int = 0
    keyframes: int = 0
    bytes: int = 0
    keyframe_requests: int = 0


class EncodedVideo:
    """One camera's encoded stream, shared by every call (on the event loop only).

    `request_keyframe` is the backend's way to make its encoder send an IDR soon; requests
    that arrive while one is already on its way are merged, so a burst of PLIs costs one IDR.
    """

    def __init__(self, request_keyframe: Callable[[], None]) -> None:
        self._request_keyframe = request_keyframe
        self._viewers: set[Viewer] = set()
        self._key_pending = False
        self._next_key: list[asyncio.Future[AccessUnit]] = []
        self.last_keyframe: AccessUnit | None = None
        self.stats = VideoStats()

    def publish(self, data: bytes, keyframe: bool, timestamp_us: int) -> None:
        """One access unit from the encoder; called on the loop (backends use call_soon_threadsafe)."""
        unit = AccessUnit(data, keyframe, timestamp_us)
        self.stats.frames += 1
        self.stats.bytes += len(data)
        if keyframe:
            self.stats.keyframes += 1
            self.last_keyframe = unit
            self._key_pending = False
            waiters, self._next_key = self._next_key, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(unit)
        for viewer in list(self._viewers):
            viewer._offer(unit)

    def keyframe_requested(self) -> None:
        """A viewer needs a complete picture: a new call, a lost packet (PLI), a resync."""
        self.stats.keyframe_requests += 1
        if self._key_pending:
            return
        self._key_pending = True
        try:
            self._request_keyframe()
        except Exception:  # a camera that cannot be asked still sends its GOP's IDR
            log.exception("the camera did not take a keyframe request")

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def track(self) -> H264Track:
        track = H264Track(self)
        self.subscribe(track)
        return track

    def subscribe(self, viewer: Viewer) -> None:
        """Give `viewer` every access unit from now on (it waits for a keyframe itself)."""
        self._viewers.add(viewer)

    def unsubscribe(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)

    async def next_keyframe(self, timeout_s: float) -> AccessUnit | None:
        """Ask for a keyframe and wait for it; the last one seen if none comes in time."""
        fut: asyncio.Future[AccessUnit] = asyncio.get_running_loop().create_future()
        self._next_key.append(fut)
        self.keyframe_requested()
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return self.last_keyframe

    async def snapshot_jpeg(self, timeout_s: float = 1.0) -> bytes | None:
        """A JPEG of what the camera sees now: its next keyframe, decoded off the loop."""
        unit = await self.next_keyframe(timeout_s)
        if unit is None:
            return None
        frame = await asyncio.to_thread(decode_h264, unit.data)
        return await asyncio.to_thread(encode_image, frame)


class H264Track(MediaStreamTrack):
    """One call's view of the camera: `av.Packet`s that aiortc packs without re-encoding.

    The queue is short. A sender that falls behind (a slow network, a busy Pi) loses what
    is queued and waits for the next keyframe, rather than showing the resident old video or
    a broken picture.
    """

    kind = "video"
    MAX_QUEUE = 30

    def __init__(self, source: EncodedVideo) -> None:
        super().__init__()
        self._source = source
        self._queue: asyncio.Queue[AccessUnit] = asyncio.Queue()
        self._waiting_for_key = True
        self._asked = False
        self._first_us: int | None = None
        self.resyncs = 0

    def _offer(self, unit: AccessUnit) -> None:
        if self._waiting_for_key and not unit.keyframe:
            return
        if self._queue.qsize() >= self.MAX_QUEUE:
            while not self._queue.empty():
                self._queue.get_nowait()
            self.resyncs += 1
            self._waiting_for_key = True
            self._source.keyframe_requested()
            if not unit.keyframe:
                return
        self._waiting_for_key = False
        self._queue.put_nowait(unit)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._asked:
            # The sender calls recv once the call's media has connected: that is when the
            # resident needs a complete picture, not at the encoder's next scheduled IDR.
            self._asked = True
            self._source.keyframe_requested()
        unit = await self._queue.get()
        if self._first_us is None:
            self._first_us = unit.timestamp_us
        packet = av.Packet(unit.data)
        packet.pts = (unit.timestamp_us - self._first_us) * 9 // 100  # µs to the 90 kHz clock
        packet.time_base = VIDEO_TIME_BASE
        return packet

    def stop(self) -> None:
        self._source.unsubscribe(self)
        super().stop()


class RawVideo:
    """One camera's raw pictures, each encoded by aiortc for each call (VP8 or H.264).

    The installer's `encoding: vp8` or `h264`, for peers that cannot take the camera's own
    H.264. Each sender encodes every frame for itself (3.7-11.6 ms a frame
    measured on x86, several times that on a Pi), which is why pass-through is the default. A sender
    that is busy encoding skips to the newest picture instead of queueing old ones.
    """

    def __init__(self) -> None:
        self._tracks: set[RawTrack] = set()
        self.latest: tuple[av.VideoFrame, int] | None = None
        self.stats = VideoStats()

    def publish(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        self.stats.frames += 1
        self.latest = (frame, timestamp_us)
        for track in list(self._tracks):
            track._offer(frame, timestamp_us)

    def keyframe_requested(self) -> None:
        self.stats.keyframe_requests += 1  # aiortc's own encoder answers PLI/FIR for raw frames

    @property
    def viewers(self) -> int:
        return len(self._tracks)

    def track(self) -> RawTrack:
        track = RawTrack(self)
        self._tracks.add(track)
        return track

    def _remove(self, track: RawTrack) -> None:
        self._tracks.discard(track)

    async def snapshot_jpeg(self, timeout_s: float = 1.0) -> bytes | None:
        """The newest picture: with raw frames there is no keyframe to wait for."""
        if self.latest is None:
            return None
        return await asyncio.to_thread(encode_image, self.latest[0])


class RawTrack(MediaStreamTrack):
    """One call's view of the raw pictures: always the newest one."""

    kind = "video"

    def __init__(self, source: RawVideo) -> None:
        super().__init__()
        self._source = source
        self._next: tuple[av.VideoFrame, int] | None = None
        self._ready = asyncio.Event()
        self._first_us: int | None = None

    def _offer(self, frame: av.VideoFrame, timestamp_us: int) -> None:
        self._next = (frame, timestamp_us)
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._ready.wait()
        self._ready.clear()
        assert self._next is not None
        frame, timestamp_us = self._next
        if self._first_us is None:
            self._first_us = timestamp_us
        # A fresh frame object: the same picture goes to every call, each with its own clock.
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name) \
            if self._source.viewers > 1 else frame
        out.pts = (timestamp_us - self._first_us) * 9 // 100
        out.time_base = VIDEO_TIME_BASE
        return out

    def stop(self) -> None:
        self._source._remove(self)
        super().stop()


def prefer_codec(transceiver: RTCRtpTransceiver, mime_type: str) -> None:
    """Offer one video codec (with its retransmission codec)."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in codecs if c.mimeType == mime_type]
    rtx = [c for c in codecs if c.mimeType == "video/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


def prefer_h264(transceiver: RTCRtpTransceiver) -> None:
    """Offer H.264 only (with its retransmission codec): the packets are H.264 already."""
    prefer_codec(transceiver, "video/H264")

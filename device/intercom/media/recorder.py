"""A visitor's message: the camera's own H.264, as it is, and the microphone in AAC, in an MP4.

Pass-through, as for calls: the board does not decode or encode a single picture, it only
writes the encoder's access units into the file (PyAV's MP4 muxer turns their start codes
into lengths). Audio is the microphone's track (echo-cancelled, as in a call) encoded to AAC,
about 1 % of a core. The file is written under a temporary name and renamed when complete, so
a power cut never leaves half a message to upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
from aiortc import MediaStreamTrack

from .audio import RATE
from .video import EncodedVideo

log = logging.getLogger("intercom.recorder")

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, RATE)


def slice_nal_units(data: bytes) -> list[bytes]:
    """The coded slices (NAL types 1 and 5) of an Annex B access unit, without start codes:
    what must reach the file unchanged for it to be the camera's own video."""
    units, i, n = [], 0, len(data)
    starts = []
    while i < n - 2:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            starts.append(i + 3)
            i += 3
        else:
            i += 1
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        unit = data[start:end].rstrip(b"\x00") if k + 1 < len(starts) else data[start:end]
        if unit and unit[0] & 0x1F in (1, 5):
            units.append(unit)
    return units


@dataclass
class Recording:
    path: Path
    duration_s: float = 0.0
    video_frames: int = 0
    audio_frames: int = 0
    bytes: int = 0
    #: SHA-256 of the camera's coded slices as written, for proving the file is pass-through.
    video_sha256: str = ""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)


async def record(video: EncodedVideo, microphone: MediaStreamTrack, path: Path, seconds: float,
                 width: int, height: int, fps: float) -> Recording:
    """Record `seconds` of the camera and the microphone into `path` (MP4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    result = Recording(path)
    track = video.track()
    out = av.open(str(partial), "w", format="mp4")
    try:
        vstream = out.add_stream("h264", rate=round(fps))
        vstream.width, vstream.height = width, height
        vstream.time_base = VIDEO_TIME_BASE
        astream = out.add_stream("aac", rate=RATE, layout="mono")
        astream.bit_rate = 48_000
        deadline = time.monotonic() + seconds
        samples = 0

        async def pictures() -> None:
            while True:
                packet = await track.recv()  # the first is a keyframe: the track asks for one
                if packet.pts is not None and packet.pts * VIDEO_TIME_BASE >= seconds:
                    return
                for unit in slice_nal_units(bytes(packet)):
                    result._hash.update(unit)
                packet.stream = vstream
                out.mux(packet)
                result.video_frames += 1

        async def sound() -> None:
            nonlocal samples
            while time.monotonic() < deadline:
                frame = cast(av.AudioFrame, await microphone.recv())
                frame.pts, frame.time_base = samples, AUDIO_TIME_BASE
                samples += frame.samples
                for packet in astream.encode(frame):
                    out.mux(packet)
                result.audio_frames += 1

        try:
            await asyncio.wait_for(asyncio.gather(pictures(), sound()), seconds + 5)
        except TimeoutError:
            log.warning("the camera or the microphone stopped while recording: the message is kept as it is")
        for packet in astream.encode(None):
            out.mux(packet)
    finally:
        track.stop()
        out.close()
    os.replace(partial, path)
    result.duration_s = samples / RATE
    result.bytes = path.stat().st_size
    result.video_sha256 = result._hash.hexdigest()
    return result

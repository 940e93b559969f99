"""The door's voice to a call: mono Opus, encoded where the samples are read.

Given raw frames, aiortc's sender hands every 20 ms frame to a thread pool to be encoded, after
computing its RTP audio level in a Python loop over every sample and turning the microphone's
mono into stereo, and encodes at 96 kbit/s stereo. Measured here per frame: 0.31 ms for the
level, 0.54 ms for the stereo encoding, and about 0.28 ms for the round trip through the pool;
together about 5 % of an x86 core for one call, several times that on a Pi.

A microphone has one channel and a visitor's voice needs no 96 kbit/s. So the thread that
already reads the microphone (ALSA's reader; the simulated tone is made on the loop) encodes
each frame in mono at `VOICE_BITRATE` (0.22 ms), computes its level with numpy, and hands aiortc an
`av.Packet`, which the sender only splits into RTP (as it does with the camera's H.264). The
phone's decoder has less to do as well: half the time for a mono stream.

A source encodes only once a sender has asked for audio (the call's media is up): a door
ringing for 30 s spends nothing on a voice nobody hears yet.
"""

from __future__ import annotations

import asyncio
import fractions
import math

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from av.audio.codeccontext import AudioCodecContext

from . import aiortc_hooks

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms, the packet time every WebRTC peer expects
AUDIO_TIME_BASE = fractions.Fraction(1, RATE)
#: Opus in mono for speech: 32 kbit/s is what browsers send for a voice by default.
VOICE_BITRATE = 32000
#: RFC 6465's range: 0 is the loudest, -127 digital silence.
MIN_AUDIO_LEVEL = -127


def audio_level_dbov(samples: np.ndarray) -> int:
    """The RTP audio level of s16 samples (RFC 6465, Appendix A: RMS against 32767, in dBov,
    rounded, clamped to [-127, 0]), computed by numpy in one pass."""
    if samples.size == 0:
        return MIN_AUDIO_LEVEL
    wide = samples.astype(np.float64)
    rms = math.sqrt(float(np.dot(wide, wide)) / (samples.size * 32767.0 * 32767.0))
    if rms <= 0:
        return MIN_AUDIO_LEVEL
    return round(min(0.0, max(float(MIN_AUDIO_LEVEL), 20 * math.log10(rms))))


def mono_frame(samples: np.ndarray, index: int) -> av.AudioFrame:
    """20 ms of mono s16 samples as an `av.AudioFrame`, stamped with its index."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = index * FRAME_SAMPLES
    frame.time_base = AUDIO_TIME_BASE
    return frame


class VoiceEncoder:
    """Mono s16 frames of 20 ms in, Opus packets out, each stamped with the frame's index
    (so the RTP timestamps run on even when a frame is dropped before the sender takes it)."""

    def __init__(self, bitrate: int = VOICE_BITRATE) -> None:
        codec: AudioCodecContext = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = RATE
        codec.time_base = AUDIO_TIME_BASE
        codec.options = {"application": "voip"}
        self._codec = codec

    def encode(self, samples: np.ndarray, index: int) -> av.Packet | None:
        packets = self._codec.encode(mono_frame(samples, index))
        if not packets:
            return None
        packet = packets[-1]  # libopus gives one packet per 20 ms frame
        packet.pts = index * FRAME_SAMPLES
        packet.time_base = AUDIO_TIME_BASE
        return packet


class VoiceTrack(MediaStreamTrack):
    """A microphone for one call: each 20 ms frame as an Opus packet (or, with `raw`, as the
    samples themselves, for the visitor's message's AAC). A source thread calls `_deliver`;
    the loop keeps the newest few, so latency stays bounded when the reader lags."""

    kind = "audio"
    MAX_QUEUE = 10

    def __init__(self, bitrate: int = VOICE_BITRATE, raw: bool = False) -> None:
        super().__init__()
        self._owner_loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[av.Packet | av.AudioFrame, int]] = asyncio.Queue()
        self._encoder = None if raw else VoiceEncoder(bitrate)
        self._index = 0
        #: Set by the first `recv`: from then on the source's frames are encoded.
        self.wanted = False
        #: The RTP audio level of the packet `recv` returned last (see `send_audio_levels`).
        self.level_dbov: int | None = None

    def _encode(self, samples: np.ndarray) -> tuple[av.Packet | av.AudioFrame, int] | None:
        """One frame's packet (or frame, when raw) and RTP audio level; None while the
        encoder fills up."""
        index, self._index = self._index, self._index + 1
        item = mono_frame(samples, index) if self._encoder is None else self._encoder.encode(samples, index)
        return None if item is None else (item, audio_level_dbov(samples))

    def _deliver(self, samples: np.ndarray) -> None:
        """On the source's thread: encode one frame and hand it to the loop."""
        if not self.wanted:
            return
        encoded = self._encode(samples)
        if encoded is None:
            return
        try:
            self._owner_loop.call_soon_threadsafe(self._offer, *encoded)
        except RuntimeError:
            pass  # the loop is gone: the daemon is stopping

    def _offer(self, item: av.Packet | av.AudioFrame, level: int) -> None:
        if self._queue.qsize() >= self.MAX_QUEUE:
            self._queue.get_nowait()  # drop the oldest
        self._queue.put_nowait((item, level))

    async def recv(self) -> av.Packet | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self.wanted = True
        item, self.level_dbov = await self._queue.get()
        return item


def send_audio_levels(sender: RTCRtpSender) -> None:
    """Give this sender's RTP packets the level of the voice they carry (RFC 6464), as aiortc
    does for frames it encodes itself, from whichever `VoiceTrack` it is sending."""
    aiortc_hooks.send_audio_levels(sender, lambda track: track.level_dbov if isinstance(track, VoiceTrack) else None)

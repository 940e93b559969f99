"""Audio at the door: microphone sources and the speaker, 48 kHz, 20 ms frames.

ALSA calls block, so each PCM lives on its own thread and frames cross to the event loop with
`call_soon_threadsafe` (capture) or a bounded queue (playback). The loop never waits on ALSA.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .pacing import Pacer

log = logging.getLogger("intercom.audio")

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
AUDIO_TIME_BASE = fractions.Fraction(1, RATE)


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of s16 samples in dBFS; -inf for digital silence."""
    if samples.size == 0:
        return float("-inf")
    rms = math.sqrt(float(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * math.log10(rms / 32768) if rms > 0 else float("-inf")


def packed_s16(frame: av.AudioFrame) -> bytes:
    """A packed s16 frame's samples, without the padding PyAV's plane buffer may carry."""
    return bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]


def _mono_frame(samples: np.ndarray, index: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = index * FRAME_SAMPLES
    frame.time_base = AUDIO_TIME_BASE
    return frame


class ToneTrack(MediaStreamTrack):
    """The simulated microphone: a two-note chime-like tone, never silent, in real time."""

    kind = "audio"

    def __init__(self, freqs: tuple[float, float] = (660.0, 550.0), amplitude: float = 0.3) -> None:
        super().__init__()
        self._pacer = Pacer(RATE / FRAME_SAMPLES)
        self._freqs = freqs
        self._amp = amplitude * 32767
        self._t = np.arange(FRAME_SAMPLES) / RATE

    async def recv(self) -> av.AudioFrame:
        n = await self._pacer.next()
        freq = self._freqs[(n // 25) % 2]  # change note every half second
        t = self._t + n * FRAME_SAMPLES / RATE
        samples = (self._amp * np.sin(2 * math.pi * freq * t)).astype(np.int16)
        return _mono_frame(samples, n)


def _open_pcm(kind: int, device: str, channels: int):  # type: ignore[no-untyped-def]
    import alsaaudio  # imported here so configs that never touch ALSA do not need it

    return alsaaudio.PCM(kind, device=device, channels=channels, rate=RATE,
                         format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=FRAME_SAMPLES, periods=4)


class AlsaCaptureTrack(MediaStreamTrack):
    """The microphone through ALSA: a reader thread hands 20 ms frames to the event loop."""

    kind = "audio"

    def __init__(self, device: str) -> None:
        super().__init__()
        import alsaaudio

        self._pcm = _open_pcm(alsaaudio.PCM_CAPTURE, device, 1)
        self._loop = asyncio.get_running_loop()
        self._frames: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=10)
        self._running = True
        self._index = 0
        self._thread = threading.Thread(target=self._read, name=f"alsa-capture-{device}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        start = time.monotonic()
        count = 0
        while self._running:
            length, data = self._pcm.read()
            if length < 0:
                log.warning("microphone overrun (%d); samples were lost", length)
                continue
            buf += data
            while len(buf) >= FRAME_SAMPLES * 2:
                chunk, buf = buf[:FRAME_SAMPLES * 2], buf[FRAME_SAMPLES * 2:]
                samples = np.frombuffer(chunk, dtype=np.int16)
                self._loop.call_soon_threadsafe(self._offer, samples)
                count += 1
                # Devices such as ALSA's null return at once; never run ahead of real time.
                ahead = start + count * FRAME_SAMPLES / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def _offer(self, samples: np.ndarray) -> None:
        if self._frames.full():
            self._frames.get_nowait()  # keep latency bounded: drop the oldest
        self._frames.put_nowait(samples)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = await self._frames.get()
        frame = _mono_frame(samples, self._index)
        self._index += 1
        return frame

    def stop(self) -> None:
        self._running = False
        super().stop()


@dataclass
class PlaybackStats:
    frames: int = 0
    dropped: int = 0
    level_dbfs: float = float("-inf")
    peak_dbfs: float = float("-inf")


class AlsaSpeaker:
    """Plays a remote audio track on an ALSA device from a writer thread.

    The queue between the loop and the thread is short: when the device falls behind, old
    audio is dropped instead of letting the delay grow, since a conversation wants low latency.
    """

    def __init__(self, device: str, max_queue: int = 5) -> None:
        self.device = device
        self.stats = PlaybackStats()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def play(self, track: MediaStreamTrack) -> None:
        import alsaaudio

        self.stop()
        self._pcm = _open_pcm(alsaaudio.PCM_PLAYBACK, self.device, 2)
        self._queue = queue.Queue(maxsize=self._queue.maxsize)
        self._thread = threading.Thread(target=self._write, args=(self._queue, self._pcm),
                                        name=f"alsa-playback-{self.device}", daemon=True)
        self._thread.start()
        self._task = asyncio.get_running_loop().create_task(self._pump(track))

    async def _pump(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
        try:
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):
                    data = packed_s16(out)
                    samples = np.frombuffer(data, dtype=np.int16)
                    self.stats.frames += 1
                    self.stats.level_dbfs = level_dbfs(samples)
                    self.stats.peak_dbfs = max(self.stats.peak_dbfs, self.stats.level_dbfs)
                    try:
                        self._queue.put_nowait(data)
                    except queue.Full:
                        self.stats.dropped += 1
        except MediaStreamError:
            pass

    @staticmethod
    def _write(q: "queue.Queue[bytes | None]", pcm) -> None:  # type: ignore[no-untyped-def]
        while (data := q.get()) is not None:
            pcm.write(data)
        pcm.close()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                self._queue.get_nowait()
                self._queue.put_nowait(None)
            self._thread = None

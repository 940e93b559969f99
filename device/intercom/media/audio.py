"""Audio at the door: microphone sources and the speaker, 48 kHz, 20 ms frames.

ALSA calls block, so each PCM lives on its own thread and frames cross to the event loop with
`call_soon_threadsafe` (capture) or a bounded queue (playback). The loop never waits on ALSA.

The speaker runs for the daemon's whole life, not per call: tones play outside calls (the
chime at a press), and the echo canceller must hear everything the speaker plays, tones
included, from the one thread that writes it.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .echo import EchoCanceller
from .pacing import Pacer, RealTime
from .threads import name_thread
from .tones import TONES

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


def _open_pcm(kind: int, device: str) -> Any:  # an alsaaudio.PCM
    import alsaaudio  # imported here so configs that never touch ALSA do not need it

    return alsaaudio.PCM(kind, device=device, channels=1, rate=RATE,
                         format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=FRAME_SAMPLES, periods=4)


class AlsaCaptureTrack(MediaStreamTrack):
    """The microphone through ALSA: a reader thread cleans each 20 ms frame (echo, noise)
    and hands it to the event loop."""

    kind = "audio"

    def __init__(self, device: str, echo: EchoCanceller | None = None) -> None:
        super().__init__()
        import alsaaudio

        self._pcm = _open_pcm(alsaaudio.PCM_CAPTURE, device)
        self._echo = echo
        self._loop = asyncio.get_running_loop()
        self._frames: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=10)
        self._running = True
        self._index = 0
        self.level_dbfs = float("-inf")
        self._thread = threading.Thread(target=self._read, name=f"alsa-capture-{device}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name_thread("alsa-capture")
        buf = b""
        clock = RealTime(FRAME_SAMPLES / RATE)
        while self._running:
            length, data = self._pcm.read()
            if length < 0:
                log.warning("microphone overrun (%d); samples were lost", length)
                continue
            buf += data
            while len(buf) >= FRAME_SAMPLES * 2:
                chunk, buf = buf[:FRAME_SAMPLES * 2], buf[FRAME_SAMPLES * 2:]
                samples = np.frombuffer(chunk, dtype=np.int16)
                if self._echo is not None:
                    samples = self._echo.near_end(samples)
                self.level_dbfs = level_dbfs(samples)
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._offer, samples)
                except RuntimeError:
                    return  # the loop is gone
                clock.tick()
        self._pcm.close()

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
    voice_frames: int = 0
    dropped: int = 0
    level_dbfs: float = float("-inf")
    peak_dbfs: float = float("-inf")
    tones: list[str] = field(default_factory=list)


class Speaker:
    """The door's speaker: one ALSA PCM and one writer thread for the daemon's life.

    Every 20 ms the thread mixes the resident's voice (if a call is on) with the current
    tone (if any), writes the mix, and gives the very same samples to the echo canceller.
    The voice queue is short: when the device falls behind, old audio is dropped instead of
    letting the delay grow, since a conversation wants low latency.
    """

    def __init__(self, device: str, echo: EchoCanceller | None = None, tone_volume: float = 0.5,
                 max_queue: int = 5) -> None:
        self.device = device
        self.stats = PlaybackStats()
        self._echo = echo
        self.tone_volume = tone_volume
        self._voice: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._tone: np.ndarray | None = None  # what is left of the tone playing now
        self._tone_name: str | None = None
        self._tone_loop: np.ndarray | None = None
        self._tone_done: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Open the device (raising ALSAAudioError naming it if it cannot) and start writing."""
        import alsaaudio

        self._loop = asyncio.get_running_loop()
        pcm = _open_pcm(alsaaudio.PCM_PLAYBACK, self.device)
        self._running = True
        self._thread = threading.Thread(target=self._write, args=(pcm,), name=f"alsa-playback-{self.device}",
                                        daemon=True)
        self._thread.start()

    # -- tones (loop thread) -------------------------------------------------------------------

    def tone(self, name: str, loop: bool = False, done: Callable[[], None] | None = None) -> None:
        """Play a tone now, replacing any other; `loop` repeats it until `stop_tone()`.
        `done` runs on the event loop when a tone that does not loop has finished."""
        self._play(name, (TONES[name]() * self.tone_volume * 32767).astype(np.int16), loop, done)

    def clip(self, name: str, samples: np.ndarray, done: Callable[[], None] | None = None) -> None:
        """Play recorded audio (16-bit mono at RATE) now, in the tone's place; `done` runs on
        the event loop when it has finished."""
        self._play(name, samples, False, done)

    def _play(self, name: str, samples: np.ndarray, loop: bool, done: Callable[[], None] | None) -> None:
        with self._lock:
            self._tone, self._tone_name = samples, name
            self._tone_loop = samples if loop else None
            self._tone_done = done
        self.stats.tones.append(name)

    def stop_tone(self, name: str | None = None) -> None:
        """Stop the tone playing (only if it is `name`, when given)."""
        with self._lock:
            if name is None or self._tone_name == name:
                self._tone = self._tone_loop = None
                self._tone_name = None
                self._tone_done = None

    @property
    def playing_tone(self) -> str | None:
        return self._tone_name

    def _next_tone(self) -> np.ndarray | None:
        with self._lock:
            if self._tone is None:
                return None
            chunk, self._tone = self._tone[:FRAME_SAMPLES], self._tone[FRAME_SAMPLES:]
            if not len(self._tone):
                self._tone = self._tone_loop
                if self._tone is None:
                    self._tone_name = None
                    done, self._tone_done = self._tone_done, None
                    if done is not None and self._loop is not None:
                        self._loop.call_soon_threadsafe(done)
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.pad(chunk, (0, FRAME_SAMPLES - len(chunk)))
        return chunk

    # -- the resident's voice ------------------------------------------------------------------

    def play(self, track: MediaStreamTrack) -> None:
        """Play a call's remote audio until it ends or `stop()`."""
        self.stop()
        self._task = asyncio.get_running_loop().create_task(self._pump(track))

    async def _pump(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        pending = np.zeros(0, np.int16)
        try:
            while True:
                frame = cast(av.AudioFrame, await track.recv())
                for out in resampler.resample(frame):
                    pending = np.concatenate([pending, np.frombuffer(packed_s16(out), dtype=np.int16)])
                while len(pending) >= FRAME_SAMPLES:
                    samples, pending = pending[:FRAME_SAMPLES], pending[FRAME_SAMPLES:]
                    self.stats.voice_frames += 1
                    self.stats.level_dbfs = level_dbfs(samples)
                    self.stats.peak_dbfs = max(self.stats.peak_dbfs, self.stats.level_dbfs)
                    try:
                        self._voice.put_nowait(samples)
                    except queue.Full:
                        self.stats.dropped += 1
        except MediaStreamError:
            pass

    def stop(self) -> None:
        """Stop playing the call's audio (tones go on)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        while not self._voice.empty():
            self._voice.get_nowait()

    # -- the writer thread ---------------------------------------------------------------------

    def _write(self, pcm: Any) -> None:
        name_thread("alsa-playback")
        clock = RealTime(FRAME_SAMPLES / RATE)
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        try:
            while self._running:
                try:
                    voice = self._voice.get_nowait()
                except queue.Empty:
                    voice = None
                tone = self._next_tone()
                if voice is None:
                    mix = silence if tone is None else tone
                elif tone is None:
                    mix = voice
                else:
                    mix = np.clip(voice.astype(np.int32) + tone, -32768, 32767).astype(np.int16)
                pcm.write(mix.tobytes())
                if self._echo is not None:
                    self._echo.far_end(mix)
                self.stats.frames += 1
                clock.tick()
        finally:
            pcm.close()

    def close(self) -> None:
        self.stop()
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

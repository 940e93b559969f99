"""Audio at the door: microphone sources and the speaker, 48 kHz, 20 ms frames.

ALSA calls block, so each PCM lives on its own thread and frames cross to the event loop with
`call_soon_threadsafe` (capture) or a bounded queue (playback). The loop never waits on ALSA.

The speaker runs for the daemon's whole life, not per call: tones play outside calls (the
chime at a press), and the echo canceller must hear everything the speaker plays, tones
included, from the one thread that writes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from .aiortc_hooks import decode_audio_elsewhere
from .echo import EchoCanceller
from .pacing import Pacer, RealTime
from .threads import name_thread
from .tones import TONES
from .voice import AUDIO_TIME_BASE, FRAME_SAMPLES, RATE, VoiceTrack

__all__ = ["AUDIO_TIME_BASE", "FRAME_SAMPLES", "RATE", "AlsaCaptureTrack", "Mixdown", "Speaker", "ToneTrack",
           "level_dbfs", "open_pcm", "packed_s16", "stereo_to_mono"]

log = logging.getLogger("intercom.audio")


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of s16 samples in dBFS; -inf for digital silence. One numpy pass (a dot
    product), no per-sample Python."""
    if samples.size == 0:
        return float("-inf")
    wide = samples.astype(np.float64)
    rms = math.sqrt(float(np.dot(wide, wide)) / samples.size)
    return 20 * math.log10(rms / 32768) if rms > 0 else float("-inf")


def packed_s16(frame: av.AudioFrame) -> bytes:
    """A packed s16 frame's samples, without the padding PyAV's plane buffer may carry."""
    return bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]


def stereo_to_mono(frame: av.AudioFrame) -> np.ndarray | None:
    """A call's decoded audio as the speaker's mono samples, without a resampler, when it is s16
    at the speaker's rate already (Opus always is: stereo, 48 kHz, 20 ms). The two channels are
    averaged with rounding, sample for sample what FFmpeg's resampler gives (the speaker test
    compares them). None for any other format: the caller resamples that."""
    if frame.format.name != "s16" or frame.sample_rate != RATE or frame.format.is_planar:
        return None
    channels = len(frame.layout.channels)
    if channels == 1:
        return np.frombuffer(memoryview(frame.planes[0]), np.int16, count=frame.samples).copy()
    if channels != 2:
        return None
    both = np.frombuffer(memoryview(frame.planes[0]), np.int16, count=frame.samples * 2).astype(np.int32)
    return ((both[0::2] + both[1::2] + 1) >> 1).astype(np.int16)


class Mixdown:
    """Received audio frames to the speaker's 20 ms mono frames: `stereo_to_mono` for what is
    already s16 at RATE (Opus), FFmpeg's resampler for anything else (G.711 at 8 kHz)."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._pending = np.zeros(0, np.int16)

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        samples = stereo_to_mono(frame)
        if samples is None:
            self._resampler = self._resampler or av.AudioResampler(format="s16", layout="mono", rate=RATE)
            samples = np.concatenate([np.frombuffer(packed_s16(out), dtype=np.int16)
                                      for out in self._resampler.resample(frame)] or [self._pending[:0]])
        if not len(self._pending) and len(samples) == FRAME_SAMPLES:
            return [samples]  # Opus: always one 20 ms frame, as the speaker wants
        self._pending = np.concatenate([self._pending, samples])
        whole = len(self._pending) // FRAME_SAMPLES * FRAME_SAMPLES
        frames = [self._pending[i:i + FRAME_SAMPLES] for i in range(0, whole, FRAME_SAMPLES)]
        self._pending = self._pending[whole:]
        return frames


def _tone_frame(freqs: tuple[float, float], amplitude: float, n: int) -> np.ndarray:
    freq = freqs[(n // 25) % 2]  # change note every half second
    t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / RATE
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


@functools.cache
def _tone_second(freqs: tuple[float, float], amplitude: float) -> tuple[np.ndarray, ...]:
    frames = tuple(_tone_frame(freqs, amplitude * 32767, n) for n in range(50))
    for frame in frames:
        frame.flags.writeable = False
    return frames


class ToneTrack(VoiceTrack):
    """The simulated microphone: a two-note chime-like tone, never silent, in real time.

    It is made on the event loop, paced by a timer, as the simulation always was: a frame is
    drawn and encoded when the sender asks for it. ALSA's microphone needs a reader thread
    (its reads block), which costs a thread's wake-up and a hand-over per frame more: about
    0.5 % of a core here."""

    def __init__(self, freqs: tuple[float, float] = (660.0, 550.0), amplitude: float = 0.3, raw: bool = False) -> None:
        super().__init__(raw=raw)
        self._freqs = freqs
        self._amp = amplitude * 32767
        #: Whole-hertz notes repeat every second (50 frames): drawn once per process, not every
        #: 20 ms (and not at a press, where the door makes this track).
        self._table = _tone_second(freqs, amplitude) if all(f == int(f) for f in freqs) else None
        self._pacer = Pacer(RATE / FRAME_SAMPLES)

    def samples(self, n: int) -> np.ndarray:
        """Frame `n` of the tone."""
        return self._table[n % 50] if self._table is not None else _tone_frame(self._freqs, self._amp, n)

    async def recv(self) -> av.Packet | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            n = await self._pacer.next()
            encoded = self._encode(self.samples(n))
            if encoded is not None:
                item, self.level_dbov = encoded
                return item


def open_pcm(kind: int, device: str) -> Any:  # an alsaaudio.PCM
    """A mono 48 kHz PCM in 20 ms periods: the call's own rate, so nothing is resampled."""
    import alsaaudio  # imported here so configs that never touch ALSA do not need it

    return alsaaudio.PCM(kind, device=device, channels=1, rate=RATE,
                         format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=FRAME_SAMPLES, periods=4)


def frames_of(pcm: Any) -> Iterator[np.ndarray]:
    """The 20 ms frames a capture PCM gives, whatever its reads' sizes; an overrun is logged."""
    buf = b""
    while True:
        length, data = pcm.read()
        if length < 0:
            log.warning("microphone overrun (%d); samples were lost", length)
            continue
        buf += data
        while len(buf) >= FRAME_SAMPLES * 2:
            chunk, buf = buf[:FRAME_SAMPLES * 2], buf[FRAME_SAMPLES * 2:]
            yield np.frombuffer(chunk, dtype=np.int16)


class AlsaCaptureTrack(VoiceTrack):
    """The microphone through ALSA: a reader thread cleans each 20 ms frame (echo, noise),
    measures it, and (once the call's media is up) encodes it for the call."""

    def __init__(self, device: str, echo: EchoCanceller | None = None, raw: bool = False) -> None:
        super().__init__(raw=raw)
        import alsaaudio

        self._pcm = open_pcm(alsaaudio.PCM_CAPTURE, device)
        self._echo = echo
        self._running = True
        self.level_dbfs = float("-inf")
        self._thread = threading.Thread(target=self._read, name=f"alsa-capture-{device}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name_thread("alsa-capture")
        clock = RealTime(FRAME_SAMPLES / RATE)
        try:
            for samples in frames_of(self._pcm):
                if not self._running:
                    break
                if self._echo is not None:
                    samples = self._echo.near_end(samples)
                self.level_dbfs = level_dbfs(samples)
                self._deliver(samples)
                clock.tick()
        finally:
            self._pcm.close()

    def stop(self) -> None:
        self._running = False
        super().stop()


def _take(pending: queue.Queue[np.ndarray]) -> np.ndarray | None:
    try:
        return pending.get_nowait()
    except queue.Empty:
        return None


def _drain(pending: queue.Queue[Any]) -> None:
    """Empty a queue the writer thread also takes from (it may take the last item first)."""
    while True:
        try:
            pending.get_nowait()
        except queue.Empty:
            return


@dataclass
class PlaybackStats:
    frames: int = 0
    voice_frames: int = 0
    talk_frames: int = 0
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
        self._tones: dict[tuple[str, float], np.ndarray] = {}
        self._voice: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queue)
        #: Someone talking through an NVR's backchannel (`talk`), from GStreamer's threads.
        self._talk: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queue)
        #: Encoded audio from the call's receiver, decoded by the writer thread (`receive`).
        self._received: queue.Queue[tuple[int, RTCRtpCodecParameters, JitterFrame]] = queue.Queue(maxsize=50)
        #: Which call is playing: anything delivered for an earlier one is dropped.
        self._call = 0
        self._decoding: tuple[tuple[int, str], Decoder, Mixdown] | None = None
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
        pcm = open_pcm(alsaaudio.PCM_PLAYBACK, self.device)
        self._tone_samples("chime")  # a press plays it first thing: synthesised before anyone presses
        self._running = True
        self._thread = threading.Thread(target=self._write, args=(pcm,), name=f"alsa-playback-{self.device}",
                                        daemon=True)
        self._thread.start()

    # -- tones (loop thread) -------------------------------------------------------------------

    def tone(self, name: str, loop: bool = False, done: Callable[[], None] | None = None) -> None:
        """Play a tone now, replacing any other; `loop` repeats it until `stop_tone()`.
        `done` runs on the event loop when a tone that does not loop has finished."""
        self._play(name, self._tone_samples(name), loop, done)

    def _tone_samples(self, name: str) -> np.ndarray:
        """A tone at the installer's volume, synthesised the first time it plays and kept: the
        chime synthesised at a press took 7.5 ms, more than the rest of the press's work."""
        key = (name, self.tone_volume)
        samples = self._tones.get(key)
        if samples is None:
            samples = self._tones[key] = (TONES[name]() * self.tone_volume * 32767).astype(np.int16)
            samples.flags.writeable = False  # shared by every time it plays
        return samples

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
        """Play a call's remote audio until it ends or `stop()`, as aiortc delivers it (decoded,
        on the loop). `receive` is the cheaper way for a call's own receiver."""
        self.stop()
        self._task = asyncio.get_running_loop().create_task(self._pump(track))

    def receive(self, receiver: RTCRtpReceiver, track: MediaStreamTrack) -> None:
        """Play a call's remote audio, decoded on the writer thread: call at the `track` event.

        Each encoded frame goes from the receiver's jitter buffer straight to the writer, which
        decodes it when it next wakes to write (see `aiortc_hooks.decode_audio_elsewhere`)."""
        self.stop()
        call = self._call

        def deliver(codec: RTCRtpCodecParameters, encoded: JitterFrame) -> None:  # on the loop
            if self._call == call:
                try:
                    self._received.put_nowait((call, codec, encoded))
                except queue.Full:
                    self.stats.dropped += 1

        if not decode_audio_elsewhere(receiver, deliver):
            self.play(track)

    def talk(self, samples: np.ndarray) -> None:
        """From any thread: one 20 ms frame of a voice from outside a call (an NVR's backchannel,
        see `nvr.talk`), mixed in like the resident's and heard by the echo canceller."""
        try:
            self._talk.put_nowait(samples)
        except queue.Full:
            self.stats.dropped += 1
        else:
            self.stats.talk_frames += 1

    async def _pump(self, track: MediaStreamTrack) -> None:
        mixdown = Mixdown()
        try:
            while True:
                for samples in mixdown.push(cast(av.AudioFrame, await track.recv())):
                    self._queue_voice(samples)
        except MediaStreamError:
            pass

    def _queue_voice(self, samples: np.ndarray) -> None:
        self.stats.voice_frames += 1
        self.stats.level_dbfs = level_dbfs(samples)
        self.stats.peak_dbfs = max(self.stats.peak_dbfs, self.stats.level_dbfs)
        try:
            self._voice.put_nowait(samples)
        except queue.Full:
            self.stats.dropped += 1

    def stop(self) -> None:
        """Stop playing the call's audio (tones go on)."""
        self._call += 1  # what the last call's receiver still delivers is ignored
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for pending in (self._voice, self._received):
            _drain(pending)

    # -- the writer thread ---------------------------------------------------------------------

    def _write(self, pcm: Any) -> None:
        name_thread("alsa-playback")
        clock = RealTime(FRAME_SAMPLES / RATE)
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        try:
            while self._running:
                self._decode_received()
                parts = [p for p in (_take(self._voice), _take(self._talk), self._next_tone()) if p is not None]
                if not parts:
                    mix = silence
                elif len(parts) == 1:
                    mix = parts[0]
                else:
                    mix = np.clip(np.sum(parts, axis=0, dtype=np.int32), -32768, 32767).astype(np.int16)
                pcm.write(mix.tobytes())
                if self._echo is not None:
                    self._echo.far_end(mix)
                self.stats.frames += 1
                clock.tick()
        finally:
            pcm.close()

    def _decode_received(self) -> None:
        """On the writer thread: decode what the call's receiver delivered since the last frame."""
        while True:
            try:
                call, codec, encoded = self._received.get_nowait()
            except queue.Empty:
                return
            if call != self._call:
                continue
            if self._decoding is None or self._decoding[0] != (call, codec.name):
                self._decoding = ((call, codec.name), get_decoder(codec), Mixdown())
            _, decoder, mixdown = self._decoding
            try:
                frames = decoder.decode(encoded)
            except av.FFmpegError as exc:  # keep the decoder's state, as aiortc does
                log.warning("could not decode the resident's audio: %s", exc)
                continue
            for frame in frames:
                for samples in mixdown.push(cast(av.AudioFrame, frame)):
                    self._queue_voice(samples)

    def close(self) -> None:
        self.stop()
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

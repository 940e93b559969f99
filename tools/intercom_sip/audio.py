"""Sound between the door's WebRTC call and a SIP phone: the door's Opus, decoded in mono by
the phone's writer, becomes the phone's PCM (G.722 at 16 kHz, G.711 at 8 kHz, as the phone
negotiated; the stack encodes it), and the phone's PCM becomes mono Opus for the door. The
gateway's own prompts (press 1, the door is open) are mixed into what the phone hears.

Nothing is re-encoded but the audio itself; video never passes here.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from intercom.media.pacing import Pacer
from intercom.media.voice import FRAME_SAMPLES, VoiceTrack
from intercom.media.voice import RATE as VOICE_RATE

from .engine import Leg

FRAME_S = 0.02


def tone(rate: int, freq: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * math.pi * freq * t) * amplitude * 32767).astype(np.int16)


def silence(rate: int, seconds: float) -> np.ndarray:
    return np.zeros(int(rate * seconds), np.int16)


def press_key_prompt(rate: int) -> np.ndarray:
    """"Press 1 to talk to the door": three rising beeps, then a pause, played until the key
    comes. A voicemail records it and never presses anything."""
    beeps = [np.concatenate([tone(rate, f, 0.15), silence(rate, 0.1)]) for f in (660.0, 880.0, 1100.0)]
    return np.concatenate([*beeps, silence(rate, 1.2)])


def door_open_prompt(rate: int) -> np.ndarray:
    """The door is open: a long high tone the caller cannot mistake for the ringback."""
    return np.concatenate([tone(rate, 1400.0, 0.6), silence(rate, 0.2)])


def refused_prompt(rate: int) -> np.ndarray:
    return np.concatenate([tone(rate, 300.0, 0.3), silence(rate, 0.1), tone(rate, 300.0, 0.3)])


class PhoneSound:
    """What the phone hears, written to its leg every 20 ms: the door's voice (once connected)
    with the gateway's prompts mixed in. One writer per leg, so two sources never race."""

    def __init__(self, leg: Leg) -> None:
        self.leg = leg
        self._voice: deque[np.ndarray] = deque()
        self._voice_samples = 0
        self._prompt: np.ndarray | None = None
        self._prompt_at = 0
        self._loop_prompt = False
        self._resampler: av.AudioResampler | None = None
        self._task: asyncio.Task[None] | None = None
        #: The door's Opus as the receiver's jitter buffer released it, decoded by the writer.
        self._packets: deque[bytes] = deque(maxlen=10)
        self._decoder: Any = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def prompt(self, samples: np.ndarray | None, loop: bool = False) -> None:
        self._prompt, self._prompt_at, self._loop_prompt = samples, 0, loop

    def door_packet(self, codec: RTCRtpCodecParameters, encoded: JitterFrame) -> None:
        """An Opus packet of the door's (`aiortc_hooks.decode_audio_elsewhere`): decoded in mono
        when the writer next wakes, not on aiortc's decoder thread in stereo and posted back."""
        self._packets.append(encoded.data)

    def _decode_packets(self) -> None:
        if self._decoder is None and self._packets:
            self._decoder = av.CodecContext.create("libopus", "r")
            self._decoder.layout = "mono"
            self._decoder.sample_rate = VOICE_RATE
        while self._packets:
            try:
                frames = self._decoder.decode(av.Packet(self._packets.popleft()))
            except av.FFmpegError:
                continue  # one bad packet: the decoder keeps its state, as aiortc's does
            for frame in frames:
                self.door_frame(frame)

    def door_frame(self, frame: av.AudioFrame) -> None:
        """A frame of the door's sound, decoded (48 kHz)."""
        rate = self.leg.sample_rate
        if not rate:
            return
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for out in self._resampler.resample(frame):
            samples = np.frombuffer(bytes(out.planes[0]), np.int16)[: out.samples]
            self._voice.append(samples)
            self._voice_samples += len(samples)
        while self._voice_samples > rate // 5:  # more than 200 ms behind: drop the oldest
            self._voice_samples -= len(self._voice.popleft())

    def _take_voice(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._voice:
            head = self._voice[0]
            take = min(n - filled, len(head))
            out[filled:filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._voice.popleft()
            else:
                self._voice[0] = head[take:]
            self._voice_samples -= take
        return out

    def _take_prompt(self, n: int) -> np.ndarray | None:
        prompt = self._prompt
        if prompt is None:
            return None
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n:
            take = min(n - filled, len(prompt) - self._prompt_at)
            out[filled:filled + take] = prompt[self._prompt_at:self._prompt_at + take]
            filled += take
            self._prompt_at += take
            if self._prompt_at >= len(prompt):
                if not self._loop_prompt:
                    self._prompt = None
                    break
                self._prompt_at = 0
        return out

    async def _run(self) -> None:
        pacer = Pacer(1 / FRAME_S)
        while True:
            await pacer.next()
            rate = self.leg.sample_rate
            if not rate:
                continue
            self._decode_packets()
            n = int(rate * FRAME_S)
            voice = self._take_voice(n)
            prompt = self._take_prompt(n)
            if prompt is not None:
                voice = np.clip(voice.astype(np.int32) // 2 + prompt, -32768, 32767).astype(np.int16)
            self.leg.write(voice.tobytes())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def door_to_phone(track: MediaStreamTrack, sound: PhoneSound) -> None:
    """Everything the door says, until its track ends."""
    try:
        while True:
            frame = await track.recv()
            if isinstance(frame, av.AudioFrame):
                sound.door_frame(frame)
    except MediaStreamError:
        return


class PhoneTrack(VoiceTrack):
    """The phone's voice to the door as mono Opus, encoded here on the loop as the door encodes
    its own (`intercom.media.voice`): no hop through aiortc's encoder pool, no stereo. Every
    20 ms it takes what the phone sent, at the leg's rate, brought to 48 kHz; missing sound (a
    late packet) is silence, never a wait."""

    def __init__(self, leg: Leg) -> None:
        super().__init__()
        self.leg = leg
        self._pacer = Pacer(1 / FRAME_S)
        self._pending = b""
        self._rate = 0
        self._resampler: av.AudioResampler | None = None
        self._out = np.zeros(0, np.int16)

    def _phone_samples(self) -> np.ndarray:
        """20 ms of the phone's sound at 48 kHz."""
        rate = self.leg.sample_rate or self._rate  # 0 once the leg has closed: keep the last
        if rate and rate != self._rate:
            self._rate, self._pending = rate, b""
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        if self._resampler is not None:
            need = int(rate * FRAME_S) * 2
            self._pending += self.leg.read(65536)
            if len(self._pending) > need * 10:  # the phone got ahead (a burst): keep the newest 200 ms
                self._pending = self._pending[-need * 10:]
            chunk, self._pending = self._pending[:need], self._pending[need:]
            frame = av.AudioFrame.from_ndarray(np.frombuffer(chunk.ljust(need, b"\0"), np.int16).reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate = rate
            for out in self._resampler.resample(frame):
                self._out = np.concatenate([self._out, out.to_ndarray().reshape(-1)])
        if len(self._out) < FRAME_SAMPLES:
            self._out = np.concatenate([self._out, np.zeros(FRAME_SAMPLES - len(self._out), np.int16)])
        samples, self._out = self._out[:FRAME_SAMPLES], self._out[FRAME_SAMPLES:]
        return samples

    async def recv(self) -> av.Packet | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            await self._pacer.next()
            encoded = self._encode(self._phone_samples())
            if encoded is not None:
                item, self.level_dbov = encoded
                return item

"""Echo cancellation and noise suppression for the door's microphone.

In a door panel the speaker sits a few centimetres from the microphone: without cancellation
the resident hears themselves back. WebRTC's audio processing (AEC3, noise suppression,
high-pass) through livekit's maintained bindings does the work; it needs the exact samples
the speaker played (`far_end`, fed by the speaker's own writer thread) and the microphone's
(`near_end`, from the capture thread), both in 10 ms frames. WebRTC's module locks its render
and capture sides separately, so the two threads may call it concurrently.

Each far-end block must reach the canceller before its echo reaches the microphone. Giving it
the block when the speaker thread writes it does that: the write is the ALSA buffer (80 ms)
ahead of the loudspeaker. Measured (tests/test_echo.py): 60 dB of echo removed that way; with
the microphone's block sometimes handled before its far end, 4 dB.
"""

from __future__ import annotations

import numpy as np

RATE = 48000
CHUNK = RATE // 100  # the module takes exactly 10 ms


class EchoCanceller:
    def __init__(self, echo_cancellation: bool = True, noise_suppression: bool = True) -> None:
        from livekit import rtc  # imported here: loading its native library takes a moment

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=echo_cancellation,
                                              noise_suppression=noise_suppression, high_pass_filter=True)
        self._apm.set_stream_delay_ms(0)  # AEC3 estimates the delay itself

    def far_end(self, samples: np.ndarray) -> None:
        """What the speaker is playing now (mono s16, a multiple of 10 ms)."""
        for start in range(0, len(samples) - CHUNK + 1, CHUNK):
            frame = self._rtc.AudioFrame(samples[start:start + CHUNK].tobytes(), RATE, 1, CHUNK)
            self._apm.process_reverse_stream(frame)

    def near_end(self, samples: np.ndarray) -> np.ndarray:
        """The microphone's samples with the speaker's echo and steady noise taken out."""
        out = np.empty_like(samples)
        for start in range(0, len(samples) - CHUNK + 1, CHUNK):
            frame = self._rtc.AudioFrame(samples[start:start + CHUNK].tobytes(), RATE, 1, CHUNK)
            self._apm.process_stream(frame)
            out[start:start + CHUNK] = np.frombuffer(bytes(frame.data), dtype=np.int16)
        return out

"""Echo cancellation at the door: the speaker's sound, picked up again by the microphone a few
centimetres away, must not go back to the resident.

The far-end signal is speech-like (band-limited noise in syllable-length bursts); the echo path
is a delay, a gain and two reflections, as in a small door panel. The canceller sees the far
end exactly as the speaker's writer thread gives it, in 20 ms blocks.
"""

import numpy as np

from intercom.media.audio import FRAME_SAMPLES, RATE
from intercom.media.echo import EchoCanceller

SECONDS = 6
SETTLE = 2 * RATE  # the adaptive filter converges within the first seconds


def speech_like(seed: int, seconds: int = SECONDS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(RATE * seconds)
    taps = np.hanning(24) * np.cos(np.pi * np.arange(24) / 6)  # a crude band-pass around 2 kHz
    voiced = np.convolve(noise, taps / np.abs(taps).sum(), mode="same")
    syllables = (np.sin(2 * np.pi * 3 * np.arange(len(noise)) / RATE) > -0.3).astype(float)
    shaped = voiced * syllables
    return shaped / np.max(np.abs(shaped)) * 0.5 * 32767


def echo_path(far: np.ndarray) -> np.ndarray:
    response = np.zeros(int(0.05 * RATE))
    delay = int(0.012 * RATE)
    response[delay], response[delay + 190], response[delay + 530] = 0.5, 0.2, -0.1
    return np.convolve(far, response)[: len(far)]


def run(canceller: EchoCanceller, far: np.ndarray, near: np.ndarray) -> np.ndarray:
    out = np.zeros(len(near), np.int16)
    for start in range(0, len(near) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        block = slice(start, start + FRAME_SAMPLES)
        canceller.far_end(far[block].astype(np.int16))
        out[block] = canceller.near_end(near[block].astype(np.int16))
    return out


def power_db(samples: np.ndarray) -> float:
    return 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-9)


def test_the_speakers_echo_is_attenuated_by_at_least_20_db():
    far = speech_like(1)
    near = echo_path(far)
    out = run(EchoCanceller(echo_cancellation=True, noise_suppression=False), far, near)
    attenuation = power_db(near[SETTLE:]) - power_db(out[SETTLE:])
    print(f"echo return loss enhancement: {attenuation:.1f} dB")
    assert attenuation >= 20


def test_the_visitors_own_voice_still_goes_through():
    """Cancelling the echo must not cancel the visitor: with the resident silent, a voice at
    the door keeps nearly all its level."""
    far = speech_like(1)
    far[SETTLE + RATE:] = 0  # the resident stops talking; the visitor talks
    visitor = np.zeros_like(far)
    visitor[SETTLE + RATE:] = speech_like(2)[SETTLE + RATE:] * 0.5
    out = run(EchoCanceller(echo_cancellation=True, noise_suppression=False), far, echo_path(far) + visitor)
    tail = slice(SETTLE + 2 * RATE, None)
    assert power_db(visitor[tail]) - power_db(out[tail]) < 6


def test_steady_noise_is_suppressed():
    """A fan or traffic hum at the door: noise suppression takes it down."""
    rng = np.random.default_rng(3)
    hum = rng.standard_normal(RATE * SECONDS) * 0.05 * 32767
    out = run(EchoCanceller(echo_cancellation=False, noise_suppression=True), np.zeros_like(hum), hum)
    attenuation = power_db(hum[SETTLE:]) - power_db(out[SETTLE:])
    print(f"noise suppression: {attenuation:.1f} dB")
    assert attenuation >= 6


def test_cancellation_holds_with_speaker_and_microphone_on_their_own_threads():
    """As in the daemon: the speaker's writer thread feeds the far end and the capture thread
    cleans the microphone, each at its own real-time pace, with no lock-step between them.

    The speaker's thread writes four 20 ms periods ahead of what the loudspeaker plays (the
    ALSA buffer the daemon opens), so the microphone hears each block 80 ms after the
    canceller was given it."""
    import threading
    import time

    from intercom.media.pacing import RealTime

    far = speech_like(4).astype(np.int16)
    near = echo_path(far.astype(np.float64)).astype(np.int16)
    canceller = EchoCanceller(echo_cancellation=True, noise_suppression=False)
    out = np.zeros_like(near)
    start = threading.Barrier(2)

    def speaker() -> None:
        start.wait()
        clock = RealTime(FRAME_SAMPLES / RATE)
        for i in range(0, len(far) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            canceller.far_end(far[i:i + FRAME_SAMPLES])
            clock.tick()

    def microphone() -> None:
        start.wait()
        time.sleep(4 * FRAME_SAMPLES / RATE)  # the speaker's ALSA buffer
        clock = RealTime(FRAME_SAMPLES / RATE)
        for i in range(0, len(near) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            out[i:i + FRAME_SAMPLES] = canceller.near_end(near[i:i + FRAME_SAMPLES])
            clock.tick()

    threads = [threading.Thread(target=speaker), threading.Thread(target=microphone)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS * 3)
    attenuation = power_db(near[SETTLE:]) - power_db(out[SETTLE:])
    print(f"echo return loss enhancement, two threads in real time: {attenuation:.1f} dB")
    assert attenuation >= 20

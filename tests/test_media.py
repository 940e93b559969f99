"""Media at the door: the test pattern moves, the tone is not silent, ALSA plays and captures."""

import asyncio
import math

import alsaaudio
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from intercom.media.audio import FRAME_SAMPLES, RATE, AlsaCaptureTrack, AlsaSpeaker, ToneTrack, level_dbfs
from intercom.media.video import TestPattern, TestPatternCamera


def test_test_pattern_changes_every_frame_and_makes_a_jpeg():
    pattern = TestPattern(320, 240)
    frames = [np.frombuffer(pattern.frame(n).planes[0], np.uint8).copy() for n in range(5)]
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    jpeg = TestPatternCamera(320, 240).snapshot_jpeg()
    assert jpeg is not None and jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")


async def test_test_pattern_track_is_paced_at_its_frame_rate():
    track = TestPatternCamera(160, 120, fps=50).track()
    loop = asyncio.get_running_loop()
    start = loop.time()
    pts = [(await track.recv()).pts for _ in range(11)]
    elapsed = loop.time() - start
    assert pts == [n * 1800 for n in range(11)]  # 90 kHz clock at 50 fps
    assert elapsed >= 0.19  # ten frame periods: it did not run ahead of real time


async def test_tone_is_20ms_frames_of_sound():
    track = ToneTrack()
    frame = await track.recv()
    samples = frame.to_ndarray()
    assert frame.sample_rate == RATE and frame.samples == FRAME_SAMPLES
    expected = 20 * math.log10(0.3 / math.sqrt(2))  # a sine of amplitude 0.3: RMS is 0.3/sqrt(2)
    assert abs(level_dbfs(samples) - expected) < 0.1


def test_level_of_silence_is_minus_infinity():
    assert level_dbfs(np.zeros(960, np.int16)) == float("-inf")


class FrameSource:
    """A remote track as aiortc hands it over: s16 stereo frames, then the end."""

    kind = "audio"

    def __init__(self, frames: int) -> None:
        self.tone = ToneTrack()
        self.left = frames

    async def recv(self):
        if self.left == 0:
            raise MediaStreamError
        self.left -= 1
        frame = await self.tone.recv()
        return frame


async def test_speaker_plays_a_remote_track_on_the_alsa_null_device():
    speaker = AlsaSpeaker("null")
    speaker.play(FrameSource(10))
    await asyncio.wait_for(speaker._task, 5)
    assert speaker.stats.frames == 10 and speaker.stats.dropped == 0
    assert speaker.stats.peak_dbfs > -20
    speaker.stop()


async def test_speaker_names_a_missing_device():
    with pytest.raises(alsaaudio.ALSAAudioError, match="nosuchdevice"):
        AlsaSpeaker("nosuchdevice").play(FrameSource(1))


async def test_microphone_capture_from_alsa_null_is_paced_20ms_frames():
    track = AlsaCaptureTrack("null")
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [await track.recv() for _ in range(6)]
    elapsed = loop.time() - start
    track.stop()
    assert [f.samples for f in frames] == [FRAME_SAMPLES] * 6
    assert [f.pts for f in frames] == [n * FRAME_SAMPLES for n in range(6)]
    assert elapsed >= 0.09  # null returns at once; the reader keeps real time

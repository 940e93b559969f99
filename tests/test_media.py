"""Media at the door: the test pattern moves, the tone is not silent, ALSA plays and captures."""

import asyncio
import math

import alsaaudio
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from intercom.media.audio import FRAME_SAMPLES, RATE, AlsaCaptureTrack, Speaker, ToneTrack, level_dbfs
from intercom.media.testpattern import TestPattern
from intercom.media.tones import TONES


def test_test_pattern_changes_every_frame():
    pattern = TestPattern(320, 240)
    frames = [np.frombuffer(pattern.frame(n).planes[0], np.uint8).copy() for n in range(5)]
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))


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


def written(path) -> np.ndarray:
    return np.fromfile(path, dtype=np.int16)


async def test_speaker_plays_a_remote_track_on_the_alsa_null_device():
    speaker = Speaker("null")
    speaker.start()
    speaker.play(FrameSource(10))
    await asyncio.wait_for(speaker._task, 5)
    speaker.close()
    assert speaker.stats.voice_frames == 10 and speaker.stats.dropped == 0
    assert speaker.stats.peak_dbfs > -20


async def test_speaker_names_a_missing_device():
    with pytest.raises(alsaaudio.ALSAAudioError, match="nosuchdevice"):
        Speaker("nosuchdevice").start()


async def test_a_tone_plays_whole_through_alsa_then_silence(tmp_path):
    """Through ALSA's file plugin: what the door's speaker would have played, sample by sample."""
    out = tmp_path / "speaker.raw"
    speaker = Speaker(f"file:FILE={out},FORMAT=raw", tone_volume=0.5)
    speaker.start()
    done = asyncio.Event()
    speaker.tone("warning", done=done.set)
    await asyncio.wait_for(done.wait(), 5)
    speaker.close()
    samples = written(out)
    expected = (TONES["warning"]() * 0.5 * 32767).astype(np.int16)
    start = int(np.flatnonzero(samples)[0]) - 1  # silence before it; the fade-in starts at 0
    assert np.array_equal(samples[start:start + len(expected)], expected)
    assert not samples[start + len(expected):].any()
    assert speaker.playing_tone is None and speaker.stats.tones == ["warning"]


async def test_ringback_loops_until_stopped_and_mixes_with_the_voice(tmp_path):
    out = tmp_path / "speaker.raw"
    speaker = Speaker(f"file:FILE={out},FORMAT=raw")
    speaker.start()
    speaker.tone("ringback", loop=True)
    speaker.play(FrameSource(300))  # six seconds of voice, longer than one ringback cycle
    await asyncio.wait_for(speaker._task, 15)
    assert speaker.playing_tone == "ringback"  # looped past its first 5 s cycle
    speaker.stop_tone("chime")  # not the tone playing: nothing changes
    assert speaker.playing_tone == "ringback"
    speaker.stop_tone("ringback")
    assert speaker.playing_tone is None
    speaker.close()
    samples = written(out).astype(np.int32)
    assert samples.size >= 300 * FRAME_SAMPLES and np.max(np.abs(samples)) > 0.3 * 32767


def test_every_tone_is_audible_short_and_clickless():
    for name, make in TONES.items():
        tone = make()
        assert 0.3 < len(tone) / RATE <= 5.0, name
        assert 0.2 < np.max(np.abs(tone)) <= 1.0, name
        assert abs(tone[0]) < 0.01 and abs(tone[-1]) < 0.01, name  # faded in and out


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


def test_a_quick_reply_clip_is_decoded_to_the_speaker_s_format_and_a_bad_one_says_why(tmp_path):
    import wave

    from intercom.media.clips import ClipError, Clips

    path = tmp_path / "coming.wav"
    t = np.arange(8000) / 8000  # one second at 8 kHz, stereo, as a phone might record it
    tone = (np.sin(2 * np.pi * 440 * t) * 0.5 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.repeat(tone, 2).tobytes())
    samples = Clips().get(str(path))
    assert samples.dtype == np.int16 and abs(len(samples) - RATE) < RATE // 50  # one second at 48 kHz, mono
    assert 0.4 * 32767 < np.max(np.abs(samples)) < 0.6 * 32767
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    with pytest.raises(ClipError) as exc:
        Clips().get(str(broken))
    assert "broken.wav" in str(exc.value)

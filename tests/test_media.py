"""Media at the door: the test pattern moves, the tone is not silent, ALSA plays and captures."""

import asyncio
import fractions
import math

import alsaaudio
import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from intercom.media.audio import FRAME_SAMPLES, RATE, AlsaCaptureTrack, Speaker, ToneTrack, level_dbfs
from intercom.media.pacing import Pacer
from intercom.media.testpattern import TestPattern
from intercom.media.tones import TONES

TIME_BASE = fractions.Fraction(1, RATE)


def test_test_pattern_changes_every_frame():
    pattern = TestPattern(320, 240)
    frames = [np.frombuffer(pattern.frame(n).planes[0], np.uint8).copy() for n in range(5)]
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))


def decoded(packets) -> np.ndarray:
    """Opus packets through aiortc's own decoder (what a phone running aiortc hears), left channel."""
    decoder = OpusDecoder()
    out = []
    for packet in packets:
        for frame in decoder.decode(JitterFrame(bytes(packet), packet.pts)):
            both = np.frombuffer(frame.planes[0], np.int16, count=frame.samples * 2)
            out.append(both[0::2])
    return np.concatenate(out)


async def test_the_simulated_microphone_sends_20ms_mono_opus_of_sound():
    track = ToneTrack()
    packets = [await track.recv() for _ in range(25)]
    track.stop()
    assert [p.pts for p in packets] == [n * FRAME_SAMPLES for n in range(25)]
    assert all(p.time_base == TIME_BASE for p in packets)
    expected = 20 * math.log10(0.3 / math.sqrt(2))  # a sine of amplitude 0.3: RMS is 0.3/sqrt(2)
    assert track.level_dbov == round(expected)  # the RTP header's level, of the samples sent
    heard = decoded(packets)[5 * FRAME_SAMPLES:]  # past the codec's start-up
    assert abs(level_dbfs(heard) - expected) < 0.5


def test_level_of_silence_is_minus_infinity():
    assert level_dbfs(np.zeros(960, np.int16)) == float("-inf")


def opus_stream(count: int, seed: int = 7) -> list[tuple[bytes, int]]:
    """What a phone sends: Opus payloads and RTP timestamps, 20 ms each, of a voice-like mix in
    which the two channels differ (so the speaker's mixdown is tested, not a copy of one channel)."""
    rng = np.random.default_rng(seed)
    encoder, payloads = OpusEncoder(), []
    t = np.arange(count * FRAME_SAMPLES) / RATE
    left = 0.25 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    both = (np.stack([left, right], axis=1).clip(-1, 1) * 32767).astype(np.int16)
    for n in range(count):
        chunk = both[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, n * FRAME_SAMPLES, TIME_BASE
        encoded, timestamp = encoder.encode(frame)
        payloads += [(payload, timestamp) for payload in encoded]
    return payloads


def stereo_frames(count: int) -> list[av.AudioFrame]:
    """A call's received audio as aiortc's decoder hands it over: s16 stereo at 48 kHz, 20 ms."""
    decoder = OpusDecoder()
    return [frame for payload, timestamp in opus_stream(count) for frame in decoder.decode(JitterFrame(payload, timestamp))]


class FrameSource:
    """A remote track: the given frames in real time (as the network delivers them), then the end."""

    kind = "audio"

    def __init__(self, frames: list[av.AudioFrame]) -> None:
        self.frames = list(frames)
        self.pacer = Pacer(RATE / FRAME_SAMPLES)

    async def recv(self):
        if not self.frames:
            raise MediaStreamError
        await self.pacer.next()
        return self.frames.pop(0)


def written(path) -> np.ndarray:
    return np.fromfile(path, dtype=np.int16)


async def test_speaker_plays_a_remote_track_on_the_alsa_null_device():
    speaker = Speaker("null")
    speaker.start()
    speaker.play(FrameSource(stereo_frames(10)))
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
    speaker.play(FrameSource(stereo_frames(300)))  # six seconds of voice, longer than one ringback cycle
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


async def test_microphone_capture_from_alsa_null_is_paced_20ms_opus_packets():
    track = AlsaCaptureTrack("null")
    loop = asyncio.get_running_loop()
    start = loop.time()
    packets = [await track.recv() for _ in range(6)]
    elapsed = loop.time() - start
    track.stop()
    assert [p.pts for p in packets] == [n * FRAME_SAMPLES for n in range(6)]
    assert decoded(packets).size == 6 * FRAME_SAMPLES
    assert -127 <= track.level_dbov <= 0  # the RTP header's level, of what was captured
    assert elapsed >= 0.09  # null returns at once; the reader keeps real time


async def feed_the_receiver(speaker: Speaker, stream: list[tuple[bytes, int]]) -> None:
    """The door's path: a call's audio receiver (aiortc's, of a real peer connection) hands each
    encoded frame its jitter buffer releases to the speaker, in real time, as the network would."""
    from aiortc import RTCPeerConnection, RTCRtpCodecParameters

    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("audio").receiver
    speaker.receive(receiver, receiver.track)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=RATE, channels=2, payloadType=111)
    pacer = Pacer(RATE / FRAME_SAMPLES)
    for payload, timestamp in stream:
        await pacer.next()
        receiver._RTCRtpReceiver__decoder_queue.put((opus, JitterFrame(payload, timestamp)))
    await pc.close()


@pytest.mark.parametrize("path", ["decoded by the speaker's thread", "decoded by aiortc"])
async def test_the_speaker_plays_what_the_old_path_played_sample_for_sample(tmp_path, path):
    """The speaker used to take each frame aiortc had decoded and turn it into mono with
    FFmpeg's resampler; now it decodes on its own thread and averages the two channels itself.
    What reaches the sound card must not change: the tolerance is 1 LSB (about -90 dBFS) per
    sample; measured, the two are identical."""
    stream = opus_stream(100)
    decoder, resampler = OpusDecoder(), av.AudioResampler(format="s16", layout="mono", rate=RATE)
    old_path = np.concatenate([np.frombuffer(out.planes[0], np.int16, count=out.samples)
                               for payload, timestamp in stream
                               for frame in decoder.decode(JitterFrame(payload, timestamp))
                               for out in resampler.resample(frame)])
    out = tmp_path / "speaker.raw"
    speaker = Speaker(f"file:FILE={out},FORMAT=raw", max_queue=len(stream))
    speaker.start()
    if path == "decoded by aiortc":
        speaker.play(FrameSource(stereo_frames(100)))
        await asyncio.wait_for(speaker._task, 10)
    else:
        await feed_the_receiver(speaker, stream)
    while speaker.stats.voice_frames < len(stream) or not speaker._voice.empty():
        await asyncio.sleep(0.01)  # the writer thread is still decoding or playing
    written_before = speaker.stats.frames
    while speaker.stats.frames <= written_before:  # and the last frame it took is written
        await asyncio.sleep(0.01)
    speaker.close()
    assert speaker.stats.voice_frames == len(stream) and speaker.stats.dropped == 0
    blocks = written(out).reshape(-1, FRAME_SAMPLES)
    played = np.concatenate([b for b in blocks if b.any()])  # the writer's silence between voice frames
    assert played.size == old_path.size
    assert np.max(np.abs(played.astype(np.int32) - old_path)) <= 1


def test_the_rtp_audio_level_is_aiortc_s_to_the_decibel():
    """The door computes RFC 6465's level with numpy; aiortc's own loop is the reference."""
    from aiortc.rtp import compute_audio_level_dbov

    from intercom.media.voice import audio_level_dbov

    rng = np.random.default_rng(3)
    cases = [np.zeros(FRAME_SAMPLES, np.int16), np.full(FRAME_SAMPLES, 32767, np.int16),
             np.full(FRAME_SAMPLES, -32768, np.int16), np.ones(FRAME_SAMPLES, np.int16)]
    cases += [(rng.standard_normal(FRAME_SAMPLES) * 10 ** (db / 20) * 32767).clip(-32768, 32767).astype(np.int16)
              for db in range(-100, 1, 7)]
    for samples in cases:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        assert audio_level_dbov(samples) == compute_audio_level_dbov(frame), samples[:4]


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


def test_audio_not_at_the_speaker_s_rate_is_resampled_into_whole_20ms_frames():
    """A peer that chose G.711 sends 8 kHz mono in 20 ms frames of 160 samples: the speaker
    still gets 20 ms frames at its own rate, with the tone's level kept."""
    from intercom.media.audio import Mixdown

    mixdown, out = Mixdown(), []
    t = np.arange(50 * 160) / 8000
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for n in range(50):
        frame = av.AudioFrame.from_ndarray(tone[n * 160:(n + 1) * 160].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, n * 160, fractions.Fraction(1, 8000)
        out += mixdown.push(frame)
    assert 48 <= len(out) <= 50 and all(len(f) == FRAME_SAMPLES for f in out)  # the resampler keeps a little back
    level = level_dbfs(np.concatenate(out[5:-5]))
    assert abs(level - 20 * math.log10(0.3 / math.sqrt(2))) < 0.5

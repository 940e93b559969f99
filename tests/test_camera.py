"""The camera's H.264 reaches a call without re-encoding, from every backend.

The Pi camera is the picamera2 stand-in in tests/standins (picamera2 cannot import here);
the USB camera path runs PyAV on FFmpeg inputs that exist here (lavfi, an H.264 file).
"""

import asyncio
import io
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection

from intercom.media.cameras import make_camera
from intercom.media.peer import rtc_configuration
from intercom.media.picamera import Picamera2Camera
from intercom.media.stamps import monotonic_us, read_stamp
from intercom.media.testpattern import TestPattern, TestPatternCamera
from intercom.media.v4l2 import V4l2Camera
from intercom.media.video import EncodedVideo, H264Track

STANDINS = Path(__file__).parent / "standins"
NAL_SPS, NAL_PPS, NAL_IDR = 7, 8, 5


def nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i:i + 3] == b"\x00\x00\x01"]


async def packets(track, count: int) -> list[av.Packet]:
    return [await asyncio.wait_for(track.recv(), 5) for _ in range(count)]


async def first_packets(camera, count: int) -> list[av.Packet]:
    """Start the camera, take the first `count` packets of a new call's track, stop it."""
    camera.start()
    try:
        return await packets(camera.track(), count)
    finally:
        camera.close()


def decode(packets: list[av.Packet]) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    return [f for p in packets for f in ctx.decode(av.Packet(bytes(p)))]


@pytest.fixture
def picamera2(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    for name in [n for n in sys.modules if n.startswith("picamera2")]:
        monkeypatch.delitem(sys.modules, name)
    import picamera2

    picamera2.instances.clear()
    return picamera2


async def test_test_pattern_track_starts_at_a_keyframe_with_its_parameter_sets():
    camera = TestPatternCamera(320, 240, fps=30, iperiod=600)
    camera.start()
    try:
        await camera.video.next_keyframe(timeout_s=2)  # running, as it is long before any call
        got = await packets(camera.track(), 10)
    finally:
        camera.close()
    first = bytes(got[0])
    assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(nal_types(first))
    assert all(NAL_IDR not in nal_types(bytes(p)) for p in got[1:])  # the GOP is 600: no more IDRs
    pts = [p.pts for p in got]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert all(p.time_base.denominator == 90000 for p in got)
    frames = decode(got)
    assert len(frames) == 10 and (frames[0].width, frames[0].height) == (320, 240)


async def test_a_keyframe_request_gets_an_idr_long_before_the_gop_would():
    camera = TestPatternCamera(160, 120, fps=30, iperiod=600)
    camera.start()
    try:
        await packets(camera.track(), 3)
        before = camera.video.stats.keyframes
        unit = await camera.video.next_keyframe(timeout_s=2)
    finally:
        camera.close()
    assert unit is not None and NAL_SPS in nal_types(unit.data)
    assert camera.video.stats.keyframes == before + 1


async def test_snapshot_is_a_jpeg_of_the_current_picture():
    camera = TestPatternCamera(320, 240, fps=15)
    camera.start()
    try:
        jpeg = await camera.snapshot_jpeg()
    finally:
        camera.close()
    assert jpeg is not None and jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
    image = next(av.open(io.BytesIO(jpeg)).decode(video=0))
    assert (image.width, image.height) == (320, 240)


def test_a_slow_sender_drops_to_the_next_keyframe_instead_of_showing_old_video():
    asked = []
    video = EncodedVideo(lambda: asked.append(1))
    track = video.track()
    video.publish(b"\x00\x00\x01\x01p", False, 0)  # before any keyframe: useless to a new viewer
    assert track._queue.qsize() == 0
    video.publish(b"\x00\x00\x01\x05k", True, 1)
    for n in range(H264Track.MAX_QUEUE + 5):
        video.publish(b"\x00\x00\x01\x01p", False, 2 + n)
    assert track._queue.qsize() == 0 and track.resyncs == 1 and asked == [1]
    video.publish(b"\x00\x00\x01\x05k", True, 100)
    video.publish(b"\x00\x00\x01\x05k", True, 101)
    assert track._queue.qsize() == 2
    video.keyframe_requested()
    video.keyframe_requested()  # merged with the one on its way
    video.publish(b"\x00\x00\x01\x05k", True, 102)
    video.keyframe_requested()
    assert len(asked) == 3 and video.stats.keyframe_requests == 4


async def test_picamera2_backend_sets_up_the_hardware_encoder_for_calls(picamera2):
    camera = make_camera({"backend": "picamera2", "width": 640, "height": 480, "fps": 30.0,
                          "bitrate": 1_500_000, "iperiod": 60})
    assert isinstance(camera, Picamera2Camera)
    camera.start()
    try:
        got = await packets(camera.track(), 5)
        cam = picamera2.instances[0]
        assert cam.config["main"] == {"size": (640, 480), "format": "YUV420"}
        assert cam.config["controls"]["FrameRate"] == 30.0
        enc = cam.encoder
        assert (enc.bitrate, enc.repeat, enc.iperiod, enc.profile) == (1_500_000, True, 60, "baseline")
        assert cam.output.recording
        assert enc.forced_key_frames == 1  # the new viewer asked for its first picture
        assert len(decode(got)) == 5
    finally:
        camera.close()
    assert cam.closed and not cam.output.recording


async def test_a_viewer_joining_later_starts_clean_because_sps_pps_repeat(picamera2):
    """Without repeat=True the Pi's encoder sends SPS/PPS once: a second call could never decode."""
    camera = Picamera2Camera(320, 240, 30, 1_000_000, 600)
    camera.start()
    try:
        await packets(camera.track(), 3)
        late = await packets(camera.track(), 3)
    finally:
        camera.close()
    assert {NAL_SPS, NAL_PPS} <= set(nal_types(bytes(late[0])))
    assert len(decode(late)) == 3


async def loopback_call(camera):
    """A real aiortc call over loopback, the camera given to it as the door does; yields the
    offer and a queue of the resident's decoded frames, and the resident's connection."""
    door, resident = RTCPeerConnection(rtc_configuration([])), RTCPeerConnection(rtc_configuration([]))
    camera.add_to(door)
    frames: asyncio.Queue = asyncio.Queue()

    @resident.on("track")
    def on_track(track):
        async def pull():
            while True:
                try:
                    frames.put_nowait(await track.recv())
                except Exception:  # noqa: BLE001 - the track stopped, however it says so
                    return
        asyncio.ensure_future(pull())

    await door.setLocalDescription(await door.createOffer())
    offer_sdp = door.localDescription.sdp
    await resident.setRemoteDescription(door.localDescription)
    await resident.setLocalDescription(await resident.createAnswer())
    await door.setRemoteDescription(resident.localDescription)
    return door, resident, offer_sdp, frames


async def call_and_send_pli(camera) -> tuple[str, int]:
    """The receiver decodes video, then sends a PLI."""
    door, resident, offer_sdp, frames = await loopback_call(camera)
    try:
        for _ in range(3):
            await asyncio.wait_for(frames.get(), 10)
        receiver = resident.getTransceivers()[0].receiver
        ssrc = next(iter(receiver._RTCRtpReceiver__active_ssrc))
        before = camera.video.stats.keyframe_requests
        await receiver._send_rtcp_pli(ssrc)
        deadline = asyncio.get_running_loop().time() + 5
        while camera.video.stats.keyframe_requests == before and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait_for(frames.get(), 5)  # each decoded frame is a chance for RTCP to arrive
        return offer_sdp, camera.video.stats.keyframe_requests - before
    finally:
        await door.close()
        await resident.close()


@pytest.mark.parametrize("encoding, codec", [("passthrough", "H264"), ("vp8", "VP8"), ("h264", "H264")])
async def test_each_encoding_sends_its_codec_and_the_pictures_carry_their_capture_time(encoding, codec):
    """Pass-through sends the camera's H.264; vp8 and h264 hand raw pictures to aiortc, which
    encodes them for the call. Whichever way, the resident reads each picture's capture time
    from the test pattern (what the glass-to-glass benchmark measures)."""
    camera = TestPatternCamera(320, 240, 30, 500_000, 30, encoding=encoding)
    camera.start()
    door, resident, offer_sdp, frames = await loopback_call(camera)
    try:
        got = [await asyncio.wait_for(frames.get(), 10) for _ in range(10)]
        arrived_us = monotonic_us()
    finally:
        await door.close()
        await resident.close()
        camera.close()
    video_section = offer_sdp[offer_sdp.index("m=video"):]
    offered = {c for c in ("H264", "VP8") if f"{c}/90000" in video_section}
    assert offered == {codec}
    assert {(f.width, f.height) for f in got} == {(320, 240)}
    stamps = [read_stamp(f) for f in got]
    assert None not in stamps and stamps == sorted(stamps) and len(set(stamps)) == 10
    assert 0 < arrived_us - stamps[-1] < 1_000_000  # captured moments ago, on this machine's clock
    assert camera.video.viewers == 0  # the call's view ended with it
    assert read_stamp(TestPattern(320, 240).frame(0)) is None  # no stamp drawn, none read


async def test_a_residents_keyframe_request_reaches_the_pi_encoder(picamera2):
    camera = Picamera2Camera(320, 240, 30, 1_000_000, 600)
    camera.start()
    try:
        offer_sdp, requests = await call_and_send_pli(camera)
        encoder = picamera2.instances[0].encoder
        forced = encoder.forced_key_frames
    finally:
        camera.close()
    video_section = offer_sdp[offer_sdp.index("m=video"):]
    assert "H264/90000" in video_section and "VP8" not in video_section
    assert requests == 1
    # One when the call connected and one for the PLI. On a busy machine a viewer that fell
    # behind may also have asked (a resync), and a PLI that comes while that request is still
    # pending is served by the same keyframe: never fewer than two, sometimes more.
    assert forced >= 2


async def test_v4l2_backend_passes_h264_through(tmp_path):
    """An FFmpeg input that gives H.264 (as a UVC camera with input_format=h264 does)."""
    source = tmp_path / "camera.h264"
    with av.open(str(source), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"g": "10", "tune": "zerolatency"}
        for n in range(60):
            frame = av.VideoFrame.from_ndarray(np.full((180, 160), n * 4 % 256, np.uint8),
                                               format="yuv420p")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    camera = V4l2Camera(str(source), 160, 120, 30, 500_000, 30, container_format="h264")
    got = await first_packets(camera, 12)
    assert camera.passes_camera_h264 is True
    assert NAL_IDR in nal_types(bytes(got[0])) and len(decode(got)) == 12


async def test_v4l2_backend_encodes_a_raw_camera():
    camera = V4l2Camera("testsrc2=size=160x120:rate=30,realtime", 160, 120, 30, 500_000, 600,
                        container_format="lavfi")
    got = await first_packets(camera, 5)
    assert camera.passes_camera_h264 is False
    assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(nal_types(bytes(got[0])))
    assert len(decode(got)) == 5


async def test_a_missing_camera_is_named_and_does_not_crash_the_door(tmp_path):
    camera = V4l2Camera(str(tmp_path / "video9"), 160, 120, 30, 500_000, 30)
    camera.start()
    await asyncio.to_thread(camera._opened.wait, 5)
    camera.close()
    assert "video9" in (camera.error or "")
    assert await camera.video.snapshot_jpeg(timeout_s=0.1) is None

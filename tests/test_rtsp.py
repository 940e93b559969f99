"""RTSP from the door, tested with independent clients: ffmpeg, GStreamer, and a client in
go2rtc's order for the backchannel. The server is the door's own module, fed by the real
test-pattern camera (libx264, the same pass-through path as the Pi's encoder)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gi")

from intercom.media.audio import ToneTrack
from intercom.media.recorder import slice_nal_units
from intercom.media.testpattern import TestPatternCamera
from intercom.media.video import AccessUnit
from intercom.nvr.rtsp import RtspServer
from intercom.nvr.settings import NvrSettings
from intercom.nvr.talk import TalkGate
from intercom_sim.postgres import free_port
from intercom_sim.rtspclient import RtspClient, RtspError
from intercom_sim.sipsite import band_share

from .test_standby import until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")]

ACCOUNTS = {"frigate": "watch-the-door", "hass": "talk-to-the-door"}


class Kept:
    """Every access unit the camera produced, as a viewer sees them."""

    def __init__(self) -> None:
        self.units: list[AccessUnit] = []

    def _offer(self, unit: AccessUnit) -> None:
        self.units.append(unit)


class Door:
    def __init__(self, server: RtspServer, camera: TestPatternCamera, played: list[np.ndarray],
                 in_call: list[bool]) -> None:
        self.server, self.camera, self.played, self.in_call = server, camera, played, in_call
        self.port = server.settings.port

    def url(self, account: str = "frigate", path: str = "/door", password: str | None = None) -> str:
        return f"rtsp://{account}:{password or ACCOUNTS[account]}@127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def _door(audio: str = "off") -> AsyncIterator[Door]:
    settings = NvrSettings(free_port(), 0, "127.0.0.1", Path("/dev/null"), ACCOUNTS, audio, frozenset({"hass"}))
    camera = TestPatternCamera(320, 240, 15, 400_000, 30)
    camera.start()
    played: list[np.ndarray] = []
    in_call = [False]
    talk = TalkGate(lambda: in_call[0], played.append)
    server = RtspServer(settings, camera.video, talk, lambda: ToneTrack(raw=True))  # the simulated microphone
    server.start()
    try:
        yield Door(server, camera, played, in_call)
    finally:
        await server.stop()
        camera.close()


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    async with _door() as made:
        yield made


async def test_the_microphone_reaches_viewers_only_when_the_installer_allows_it(tmp_path):
    async with _door() as door:
        code, log = await run_tool("ffprobe", "-hide_banner", "-rtsp_transport", "tcp", door.url())
    assert code == 0 and "Video: h264" in log and "Audio" not in log  # off by default: video only
    for audio, codec in (("opus", "opus"), ("pcmu", "pcm_mulaw")):
        async with _door(audio) as talking:
            heard = tmp_path / f"{audio}.raw"
            code, log = await run_tool("ffmpeg", "-hide_banner", "-rtsp_transport", "tcp", "-timeout", "20000000",
                                   "-i", talking.url(), "-vn",
                                   "-t", "3", "-f", "s16le", "-ac", "1", "-ar", "8000", "-y", str(heard))
            assert code == 0 and f"Audio: {codec}" in log, log
            samples = np.fromfile(heard, np.int16)
            # The simulated microphone's two notes, 660 and 550 Hz, half a second each.
            assert band_share(samples, 8000, 660) + band_share(samples, 8000, 550) > 0.8


async def run_tool(*argv: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


async def _pull(url: str, out: Path, frames: int, transport: str = "tcp") -> tuple[int, str]:
    return await run_tool("ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", transport,
                      "-analyzeduration", "0", "-i", url, "-frames:v", str(frames), "-c", "copy", "-f", "h264",
                      "-y", str(out))


async def test_ffmpeg_receives_the_cameras_own_h264_byte_for_byte_and_a_wrong_password_gets_401(door, tmp_path):
    kept = Kept()
    door.camera.video.subscribe(kept)
    out = tmp_path / "pulled.h264"
    code, log = await _pull(door.url(), out, 40)
    assert code == 0, log
    received = slice_nal_units(out.read_bytes())
    sent = [s for unit in kept.units for s in slice_nal_units(unit.data)]
    assert len(received) >= 40
    start = sent.index(received[0])  # a new viewer starts at a keyframe...
    assert received[0][0] & 0x1F == 5
    assert received == sent[start:start + len(received)]  # ...and gets the camera's slices unchanged

    code, log = await run_tool("ffprobe", "-hide_banner", "-rtsp_transport", "tcp", door.url(password="wrong-password"))
    assert code != 0 and "401" in log
    code, log = await run_tool("ffprobe", "-hide_banner", "-rtsp_transport", "tcp",
                           f"rtsp://127.0.0.1:{door.port}/door")
    assert code != 0 and "401" in log
    await until(lambda: door.server.viewers == 0)


async def test_two_clients_over_udp_and_tcp_decode_frames_at_once_and_viewers_return_to_zero(door, tmp_path):
    seen: list[int] = []
    counting = asyncio.get_running_loop().create_task(_count_viewers(door.server, seen))
    (a, log_a), (b, log_b) = await asyncio.gather(
        run_tool("ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", door.url(),
             "-frames:v", "30", "-f", "null", "-"),
        run_tool("ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "udp", "-i", door.url("hass"),
             "-frames:v", "30", "-f", "null", "-"))
    counting.cancel()
    assert (a, b) == (0, 0), log_a + log_b
    assert max(seen) == 2
    await until(lambda: door.server.viewers == 0)


async def _count_viewers(server: RtspServer, seen: list[int]) -> None:
    while True:
        seen.append(server.viewers)
        await asyncio.sleep(0.05)


def tone(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * 32767 * np.sin(2 * math.pi * freq * t)).astype(np.int16)


async def test_a_talking_client_in_go2rtcs_order_is_heard_at_the_door(door):
    client = RtspClient(door.url("hass", "/talk"))
    await client.connect()
    try:
        assert client.talk_channel is not None
        assert "a=sendonly" in client.sdp and "PCMU" in client.sdp
        await client.talk(tone(1000, 2.0))
        await until(lambda: len(door.played) >= 80)
        assert client.received.first_keyframe_s is not None  # it was watching, too
        assert door.server.status()["talk"]["talking"] == ["hass"]
    finally:
        await client.close()
    heard = np.concatenate(door.played)
    assert band_share(heard, 48000, 1000) > 0.8
    await until(lambda: door.server.status()["talk"]["last"] is not None)
    assert door.server.status()["talk"]["last"]["account"] == "hass"


async def test_talk_is_muted_while_a_residents_call_is_on(door):
    door.in_call[0] = True
    client = RtspClient(door.url("hass", "/talk"))
    await client.connect()
    try:
        await client.talk(tone(1000, 1.0))
    finally:
        await client.close()
    await until(lambda: door.server.status()["talk"]["last"] is not None)
    last = door.server.status()["talk"]["last"]
    assert door.played == [] and last["muted_s"] > 0.5 and last["played_s"] == 0


async def test_who_may_not_talk_gets_no_backchannel(door):
    viewer = RtspClient(door.url("frigate", "/talk"))
    with pytest.raises(RtspError) as refused:
        await viewer.connect()
    assert refused.value.status == 404
    await viewer.close()
    # On /door nobody gets a backchannel: asking is refused (go2rtc then asks without it)...
    asking = RtspClient(door.url("hass"))
    with pytest.raises(RtspError) as unsupported:
        await asking.connect()
    assert unsupported.value.status == 551
    await asking.close()
    # ...and a client that does not ask sees no backchannel in the description.
    plain = RtspClient(door.url("frigate"), backchannel=False)
    await plain.connect()
    try:
        assert plain.talk_channel is None and "sendonly" not in plain.sdp
        await until(lambda: plain.received.first_keyframe_s is not None)
    finally:
        await plain.close()

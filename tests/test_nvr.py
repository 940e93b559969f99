"""The door daemon as a camera for NVRs, end to end: its YAML, RTSP beside a call, two-way
talk onto its speaker, and Home Assistant's own ONVIF library walking its services."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gi")

from intercom_sim.harness import INTERCOM, Installation
from intercom_sim.postgres import free_port
from intercom_sim.rtspclient import RtspClient
from intercom_sim.sipsite import band_share

from .test_rtsp import run_tool, tone

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")]

ACCOUNTS = "frigate:watch-the-door\nhass:talk-to-the-door\n"


def _accounts(root: Path, text: str = ACCOUNTS, mode: int = 0o600) -> Path:
    path = root / "rtsp-accounts"
    path.write_text(text)
    path.chmod(mode)
    return path


def _rtsp(root: Path, **extra: Any) -> dict[str, Any]:
    return {"rtsp": {"port": free_port(), "onvif_port": free_port(), "listen": "127.0.0.1",
                     "accounts_file": str(_accounts(root)), "talk": ["hass"], **extra}}


def _frames(url: str, count: int, transport: str = "tcp") -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", transport, "-i", url,
            "-frames:v", str(count), "-f", "null", "-"]


async def test_two_rtsp_viewers_and_a_webrtc_call_all_decode_frames_at_once(site):
    settings = _rtsp(site.root)
    port = settings["rtsp"]["port"]
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "90")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}], settings=settings)
    await door.ring()
    await alice.wait_for_event("answered")
    await door.wait_status(lambda s: s["state"] == "connected")
    (a, log_a), (b, log_b) = await asyncio.gather(
        run_tool(*_frames(f"rtsp://frigate:watch-the-door@127.0.0.1:{port}/door", 60)),
        run_tool(*_frames(f"rtsp://hass:talk-to-the-door@127.0.0.1:{port}/door", 60, "udp")))
    assert (a, b) == (0, 0), log_a + log_b
    ended = await alice.wait_for_event("ended", timeout=60)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 90 and ended["distinct_frames"] >= 30
    status = await door.wait_status(lambda s: s["rtsp"]["viewers"] == 0 and s["camera"]["viewers"] == 0)
    assert status["rtsp"]["streams_made"] >= 1


async def test_a_dashboard_talks_through_the_backchannel_onto_the_doors_speaker(site):
    speaker = site.root / "speaker.raw"
    settings = _rtsp(site.root)
    settings["hardware"] = {"speaker": {"device": f"file:FILE={speaker},FORMAT=raw"}}
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}], settings=settings)
    client = RtspClient(f"rtsp://hass:talk-to-the-door@127.0.0.1:{settings['rtsp']['port']}/talk")
    await client.connect()
    try:
        await door.wait_status(lambda s: s["rtsp"]["talk"]["talking"] == ["hass"])
        await client.talk(tone(1000, 2.0))
        await door.wait_status(lambda s: s["speaker"]["talk_frames"] >= 90)
    finally:
        await client.close()
    status = await door.wait_status(lambda s: s["rtsp"]["talk"]["last"] is not None and s["rtsp"]["viewers"] == 0)
    assert status["rtsp"]["talk"]["last"]["account"] == "hass" and status["rtsp"]["talk"]["last"]["played_s"] >= 1.8
    heard = np.fromfile(speaker, np.int16)
    assert band_share(heard[-48000 * 3:], 48000, 1000) > 0.5  # the door played the dashboard's 1 kHz
    assert "talk session opened by hass" in door.process.log_tail()


async def test_home_assistants_onvif_library_finds_the_stream_and_the_snapshot(site):
    onvif = pytest.importorskip("onvif")
    settings = _rtsp(site.root)
    port = settings["rtsp"]["onvif_port"]
    await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}], settings=settings)

    camera = onvif.ONVIFCamera("127.0.0.1", port, "hass", "talk-to-the-door")
    await camera.update_xaddrs()  # GetSystemDateAndTime (time offset), then GetServices
    try:
        device = await camera.create_devicemgmt_service()
        capabilities = await device.GetCapabilities({"Category": "All"})
        assert capabilities.Media.XAddr.endswith("/onvif/media_service")
        info = await device.GetDeviceInformation()
        assert info.Manufacturer == "Intercom" and info.SerialNumber == "frontdoor"
        interfaces = await device.GetNetworkInterfaces()
        assert interfaces[0].Info.HwAddress
        assert (await device.GetServiceCapabilities()).Security.UsernameToken is True
        media = await camera.create_media_service()
        assert (await media.GetServiceCapabilities()).SnapshotUri is True
        profiles = await media.GetProfiles()
        encoder = profiles[0].VideoEncoderConfiguration
        assert (encoder.Encoding, encoder.Resolution.Width, encoder.Resolution.Height) == ("H264", 640, 480)
        request = media.create_type("GetStreamUri")
        request.ProfileToken = profiles[0].token
        request.StreamSetup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        uri = (await media.GetStreamUri(request)).Uri
        assert uri == f"rtsp://127.0.0.1:{settings['rtsp']['port']}/door"
        jpeg = await camera.get_snapshot(profiles[0].token)  # Digest first, as Home Assistant does
        assert jpeg is not None and jpeg.startswith(b"\xff\xd8")
    finally:
        await camera.close()
    snapshot = f"http://127.0.0.1:{port}/snapshot.jpg"
    for scheme in ("--basic", "--digest"):  # a FritzBox's way, and curl's Digest beside aiohttp's
        picture = site.root / f"snapshot{scheme}.jpg"
        code, out = await run_tool("curl", "-s", scheme, "-u", "frigate:watch-the-door", "-o", str(picture),
                               "-w", "%{http_code}", snapshot)
        assert out == "200" and picture.read_bytes().startswith(b"\xff\xd8")
    code, out = await run_tool("curl", "-s", "-D", "-", "-o", "/dev/null", "-u", "frigate:wrong-password", snapshot)
    assert out.startswith("HTTP/1.1 401")
    assert [line.split()[1] for line in out.splitlines() if line.lower().startswith("www-authenticate")] == \
        ["Digest", "Basic"]
    with_password = uri.replace("rtsp://", "rtsp://hass:talk-to-the-door@")
    code, log = await run_tool("ffprobe", "-hide_banner", "-rtsp_transport", "tcp", with_password)
    assert code == 0 and "h264" in log, log

    from zeep.exceptions import Fault

    stranger = onvif.ONVIFCamera("127.0.0.1", port, "hass", "not-the-password")
    with pytest.raises(Fault, match="not authorized"):
        await stranger.update_xaddrs()  # GetServices is refused, then GetCapabilities
    await stranger.close()


async def test_a_door_without_rtsp_never_imports_gstreamer(site, tmp_path):
    poisoned = tmp_path / "poisoned"
    (poisoned / "gi").mkdir(parents=True)
    (poisoned / "gi" / "__init__.py").write_text("raise ImportError('the door imported GStreamer without rtsp:')\n")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}],
                                 env={"PYTHONPATH": f"{poisoned}:{':'.join(sys.path)}"})
    status = await door.ctl("status")
    assert status["rtsp"] is None and status["server"]["connected"]


def _offline_door(root: Path) -> dict[str, Any]:
    """A door's YAML for the installer's commands that need no server."""
    token = root / "token"
    token.write_text("ict_x\n")
    token.chmod(0o600)
    config = Installation(root).door_config("frontdoor", token, [{"residents": ["alice"]}])
    config["server"]["url"] = "ws://127.0.0.1:9/v1/ws"
    return config


async def test_rtsp_without_gstreamer_installed_is_one_line_naming_the_packages(tmp_path):
    import yaml

    poisoned = tmp_path / "poisoned"
    (poisoned / "gi").mkdir(parents=True)
    (poisoned / "gi" / "__init__.py").write_text("raise ImportError('no PyGObject here')\n")
    config = {**_offline_door(tmp_path), **_rtsp(tmp_path)}
    path = tmp_path / "door.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(*INTERCOM, "check-config", str(path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, "PYTHONPATH": f"{poisoned}:{':'.join(sys.path)}"})
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 1 and len(out.strip().splitlines()) == 1, out
    assert "rtsp is configured, but the gi (PyGObject) library is not installed" in out
    assert "gir1.2-gst-rtsp-server-1.0" in out


async def test_rtsp_mistakes_are_one_line_each(tmp_path):
    base = _offline_door(tmp_path)

    async def check(rtsp: dict[str, Any]) -> str:
        import yaml

        path = tmp_path / "door.yaml"
        path.write_text(yaml.safe_dump({**base, "rtsp": rtsp}))
        code, out = await run_tool(*INTERCOM, "check-config", str(path))
        assert code != 0 and len(out.strip().splitlines()) == 1, out
        return out

    missing = await check({"accounts_file": str(tmp_path / "nothing-here")})
    assert "rtsp.accounts_file" in missing and "cannot read" in missing
    readable = _accounts(tmp_path, mode=0o644)
    out = await check({"accounts_file": str(readable)})
    assert "can be read by other users" in out and f"chmod 600 {readable}" in out
    _accounts(tmp_path)
    out = await check({"accounts_file": str(readable), "talk": ["nobody"]})
    assert "rtsp.talk" in out and "nobody is not an account" in out
    _accounts(tmp_path, "frigate:short\n")
    assert "shorter than 8" in await check({"accounts_file": str(readable)})


async def test_a_taken_rtsp_port_stops_the_door_with_one_line(site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = _rtsp(site.root)
        settings["rtsp"]["port"] = taken.getsockname()[1]
        token = await site.add_user("frontdoor", "door", "Front door")
        import yaml

        config = {**site.door_config("frontdoor", token, [{"residents": ["alice"]}]), **settings}
        path = site.root / "door.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out = await run_tool(*INTERCOM, "run", "--config", str(path))
    assert code == 1
    assert f"rtsp.port {settings['rtsp']['port']} on 127.0.0.1 is taken" in out


async def test_selftest_names_a_taken_rtsp_port(tmp_path):
    import json

    import yaml

    config = _offline_door(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.update(_rtsp(tmp_path))
        config["rtsp"]["onvif_port"] = taken.getsockname()[1]
        path = tmp_path / "door.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out = await run_tool(*INTERCOM, "selftest", "--no-relay", "--config", str(path))
    report = json.loads(out[out.index("{"):])
    assert code == 1 and report["rtsp"]["ok"] is False
    assert report["rtsp"]["error"] == (f"RuntimeError: rtsp.onvif_port {config['rtsp']['onvif_port']} on 127.0.0.1 "
                                       "is taken by another program (Address already in use)")
    assert report["camera"]["ok"] is True  # the rest was still tested

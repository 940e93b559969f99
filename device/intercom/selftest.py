"""`intercom selftest`: the installer's check that every part of the door works, on the door.

Each step uses the same backend the daemon would (from the same YAML) and reports what it
measured, so "the LED blinked" and "the microphone hears -38 dBFS" are facts, not hopes. It
needs the hardware to itself: stop the daemon first.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from typing import Any

import av

from .config import DoorConfig
from .directory import site_users, unknown_residents
from .media.audio import FRAME_SAMPLES, RATE, Speaker, frames_of, level_dbfs, open_pcm
from .media.cameras import make_camera
from .media.pacing import RealTime
from .pins import Pins
from .signaling import tls_context

log = logging.getLogger("intercom.selftest")


async def run(config: DoorConfig, click_relay: bool = True, listen_s: float = 1.0,
              pin_factory: Any = None) -> dict[str, Any]:
    report: dict[str, Any] = {}
    steps = [("leds", _leds), ("relay", _relay), ("speaker", _speaker), ("microphone", _microphone),
             ("camera", _camera), ("ring_groups", _ring_groups), ("rtsp", _rtsp)]
    pins = Pins(config.pins, lambda: None, asyncio.get_running_loop(), factory=pin_factory)
    try:
        for name, step in steps:
            if name == "relay" and not click_relay:
                report[name] = {"ok": True, "skipped": "--no-relay"}
                continue
            try:
                report[name] = {"ok": True, **await step(config, pins, listen_s)}
            except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        pins.close()
    report["ok"] = all(step["ok"] for step in report.values())
    return report


async def _ring_groups(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    """Every ring-group name is a resident of the site on the server. A server that cannot be
    reached is reported, not failed: the hardware may be tested before the server exists."""
    try:
        users = await site_users(config.server_url, config.access_token, tls_context(config.ca_file))
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, or not a server of ours
        return {"checked": False, "note": f"could not ask the server: {exc}"}
    unknown = unknown_residents((g.residents for g in config.ring_groups), users)
    if unknown:
        raise RuntimeError(f"the ring groups name {', '.join(unknown)}, not residents of this site on the server")
    return {"checked": True, "residents": sorted({r for g in config.ring_groups for r in g.residents})}


async def _rtsp(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    """The ports NVRs will connect to are free (the daemon is stopped, so nobody else should
    hold them), and the accounts were read (the YAML's check did that)."""
    nvr = config.rtsp
    if nvr is None:
        return {"rtsp": "not configured"}
    for key, port in (("rtsp.port", nvr.port), ("rtsp.onvif_port", nvr.onvif_port)):
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in nvr.listen else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((nvr.listen, port))
            except OSError as exc:
                raise RuntimeError(f"{key} {port} on {nvr.listen} is taken by another program ({exc.strerror})") from None
    return {"port": nvr.port, "onvif_port": nvr.onvif_port or None, "accounts": len(nvr.accounts),
            "talk": sorted(nvr.talk), "audio": nvr.audio}


async def _leds(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    done = {}
    for name, led in (("status_led", pins.led), ("backlight_led", pins.backlight)):
        if led is None:
            done[name] = "not configured"
            continue
        led.blink(on_time=0.25, off_time=0.25, n=3, background=False)
        done[name] = "blinked 3 times"
    return done


async def _relay(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    if pins.relay is None:
        return {"relay": "not configured"}
    released = asyncio.Event()
    pins.relay_pulse_s = min(pins.relay_pulse_s, 0.5)  # a click, not a full opening
    pins.pulse_relay(on_done=released.set)
    await asyncio.wait_for(released.wait(), 5)
    return {"relay": f"clicked for {pins.relay_pulse_s:g}s", "pin": config.pins["relay"]}


async def _speaker(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    speaker = Speaker(config.speaker_device, tone_volume=config.tone_volume)
    speaker.start()
    done = asyncio.Event()
    try:
        speaker.tone("test", done=done.set)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        speaker.close()
    return {"device": config.speaker_device, "played": "1 s of 1 kHz", "frames": speaker.stats.frames}


def _listen(device: str, listen_s: float) -> list[float]:
    """The raw microphone's level, frame by frame (no echo canceller: the installer wants what
    the capsule hears), read on a thread of its own as the daemon's reader does."""
    import alsaaudio

    pcm = open_pcm(alsaaudio.PCM_CAPTURE, device)
    levels = []
    clock = RealTime(FRAME_SAMPLES / RATE)  # ALSA's null device returns at once
    try:
        deadline = time.monotonic() + listen_s
        for samples in frames_of(pcm):
            levels.append(level_dbfs(samples))
            if time.monotonic() >= deadline:
                break
            clock.tick()
    finally:
        pcm.close()
    return levels


async def _microphone(config: DoorConfig, pins: Pins, listen_s: float) -> dict[str, Any]:
    mic = config.microphone
    if mic["backend"] != "alsa":
        return {"backend": mic["backend"], "level_dbfs": None}
    levels = await asyncio.wait_for(asyncio.to_thread(_listen, mic["device"], listen_s), listen_s + 2)
    peak = max(levels, default=float("-inf"))
    return {"device": mic["device"], "frames": len(levels),
            "peak_dbfs": None if peak == float("-inf") else round(peak, 1),
            "hint": "silent: check the microphone's cable and mixer levels (alsamixer)" if peak < -70 else None}


async def _camera(config: DoorConfig, pins: Pins, _: float) -> dict[str, Any]:
    camera = make_camera(config.camera)
    camera.start()
    try:
        jpeg = await camera.video.snapshot_jpeg(timeout_s=5)
    finally:
        camera.close()
    if jpeg is None:
        raise RuntimeError(getattr(camera, "error", None) or "no picture within 5 s")
    picture = next(av.open(io.BytesIO(jpeg), "r").decode(video=0))
    return {"backend": camera.name, "width": picture.width, "height": picture.height, "jpeg_bytes": len(jpeg),
            "frames": camera.video.stats.frames}

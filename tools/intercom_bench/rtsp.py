"""The door as an NVR's camera: how soon an RTSP client gets its first keyframe, and what
RTSP viewers cost the door beside a call (CPU without the simulated camera's own encoding,
which a Pi's hardware encoder carries, and memory per viewer).

Viewers are clients in go2rtc's request order over interleaved TCP (`intercom_sim.rtspclient`)
in this process; their reading costs the bench, not the door.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from intercom_sim.postgres import free_port
from intercom_sim.rtspclient import RtspClient

from .figures import cpu_times, memory_kib, summary
from .media import answered, call_ended
from .scene import Bell, camera, installation

ACCOUNT, PASSWORD = "nvr", "bench-password"


async def run(root: Path, connects: int, seconds: float, width: int = 1280, height: int = 720,
              fps: float = 30) -> dict[str, Any]:
    async with installation(root) as site:
        accounts = root / "rtsp-accounts"
        accounts.write_text(f"{ACCOUNT}:{PASSWORD}\n")
        accounts.chmod(0o600)
        settings = camera(width, height, fps)
        settings["rtsp"] = {"port": free_port(), "onvif_port": 0, "listen": "127.0.0.1",
                            "accounts_file": str(accounts)}
        resident = await site.start_resident("alice", "--hangup-after", f"{4 * seconds + 30:g}",
                                             "--hangup-after-frames", "0")
        door = await site.start_door("door-rtsp", [{"residents": ["alice"]}], settings=settings)
        url = f"rtsp://{ACCOUNT}:{PASSWORD}@127.0.0.1:{settings['rtsp']['port']}/door"
        pid = door.process.proc.pid
        bell = Bell(door)
        try:
            first = await _first_keyframes(url, connects)
            mark, _ = await answered(bell, resident)
            cost = {n: await _cost(url, pid, n, seconds) for n in (0, 1, 3)}
            await resident.wait_for_event("hanging_up", 4 * seconds + 60, after=mark)
            await call_ended(bell, resident, mark)
        finally:
            bell.close()
    per_viewer = (cost[3]["rss_kib"] - cost[0]["rss_kib"]) / 3
    return {"camera": f"{width}x{height} at {fps:g} fps, pass-through", "connects": connects,
            "first_keyframe_ms": summary(first),
            "door_percent_beside_a_call": {str(n): c["door_percent"] for n, c in cost.items()},
            "rss_kib_per_viewer": round(per_viewer), "seconds": seconds}


async def _first_keyframes(url: str, connects: int) -> list[float]:
    """Connect, wait for the first IDR's first packet, hang up; `connects` times."""
    samples = []
    for _ in range(connects):
        client = RtspClient(url, backchannel=False)
        await client.connect()
        try:
            while client.received.first_keyframe_s is None:
                await asyncio.sleep(0.005)  # polling the client's own record of its arrival time
            samples.append(client.received.first_keyframe_s * 1000)
        finally:
            await client.close()
    return samples


async def _cost(url: str, pid: int, viewers: int, seconds: float) -> dict[str, float]:
    clients = [RtspClient(url, backchannel=False) for _ in range(viewers)]
    for client in clients:
        await client.connect()
    try:
        await asyncio.sleep(1.0)  # past the start of every stream
        before, started = cpu_times(pid), time.monotonic()
        await asyncio.sleep(seconds)  # the span measured
        after, elapsed = cpu_times(pid), time.monotonic() - started
        rss = memory_kib(pid)["VmRSS"]
    finally:
        for client in clients:
            await client.close()
    camera_s = after.by_thread.get("camera", 0.0) - before.by_thread.get("camera", 0.0)
    return {"door_percent": round(100 * (after.total - before.total - camera_s) / elapsed, 1), "rss_kib": rss}

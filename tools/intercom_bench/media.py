"""What a resident sees and what it costs the door: answer to first frame, the door's CPU and
memory during a call, and glass to glass.

The resident is `intercom-resident`, the aiortc client, in its own process; it reports each
step as a JSON line. Its times are taken in its own process (accept sent -> frame decoded),
and the glass-to-glass delay is read from the test pattern's capture-time strip against the
monotonic clock every process on this machine shares.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from intercom_sim.harness import Door, Installation, Process

from .figures import cpu_times, memory_kib, reset_peak_rss, summary
from .scene import Bell, camera, installation

#: The camera paths: per-call software encoding from raw pictures, and the camera's H.264.
ENCODINGS = ("passthrough", "vp8", "h264")
#: Frames left out of glass to glass at a call's start, while the receiver's jitter buffer settles.
SETTLE_FRAMES = 30


async def _door(site: Installation, name: str, width: int, height: int, fps: float, encoding: str) -> Door:
    return await site.start_door(name, [{"residents": ["alice"]}], settings=camera(width, height, fps, encoding))


async def answered(bell: Bell, resident: Process, timeout_s: float = 20) -> tuple[int, dict[str, Any]]:
    """Press and wait for the resident's first decoded frame; returns where the call's
    events begin in the resident's output, and the first_frame event."""
    mark = len(resident.lines)
    await bell.press()
    return mark, await resident.wait_for_event("first_frame", timeout_s, after=mark)


async def call_ended(bell: Bell, resident: Process, mark: int, timeout_s: float = 20) -> dict[str, Any]:
    """Wait for the resident's end of the call and the door's return to idle; release the bell."""
    ended = await resident.wait_for_event("ended", timeout_s, after=mark)
    await bell.until_idle()
    await bell.release()
    return ended


async def answer_to_first_frame(root: Path, calls: int, width: int = 640, height: int = 480,
                                fps: float = 30) -> dict[str, Any]:
    """`calls` answered calls per camera path; the resident hangs up at its fifth frame."""
    results: dict[str, Any] = {"calls": calls, "camera": f"{width}x{height} at {fps:g} fps"}
    async with installation(root) as site:
        resident = await site.start_resident("alice", "--hangup-after-frames", "5")
        for encoding in ("vp8", "passthrough"):
            door = await _door(site, f"door-{encoding}", width, height, fps, encoding)
            bell = Bell(door)
            samples = []
            try:
                for _ in range(calls):
                    mark, first = await answered(bell, resident)
                    await call_ended(bell, resident, mark)
                    samples.append(first["after_accept_s"] * 1000)
            finally:
                bell.close()
                await site.stop(door.process)
            results[encoding] = summary(samples)
    return results


async def call_cost(root: Path, seconds: float, sizes: list[tuple[int, int]], fps: float = 30,
                    idle_s: float = 2.0) -> dict[str, Any]:
    """For each camera path and size, one call of `seconds`: the door's CPU and peak memory,
    and the resident's glass-to-glass delay. The door's idle memory comes first."""
    results: dict[str, Any] = {"seconds": seconds, "fps": fps, "runs": []}
    async with installation(root) as site:
        resident = await site.start_resident("alice", "--hangup-after", f"{seconds:g}", "--hangup-after-frames", "0")
        for width, height in sizes:
            for encoding in ENCODINGS:
                door = await _door(site, f"door-{encoding}-{width}", width, height, fps, encoding)
                pid = door.process.proc.pid
                bell = Bell(door)
                try:
                    if "idle_rss_kib" not in results:  # the first door: pass-through, the default
                        # Idle is a state that lasts: measured over a span, not at one instant.
                        await asyncio.sleep(idle_s)
                        idle = memory_kib(pid)
                        results["idle_rss_kib"], results["idle_rss_anon_kib"] = idle["VmRSS"], idle["RssAnon"]
                        results["idle_camera"] = f"{width}x{height} at {fps:g} fps, {encoding}"
                    results["runs"].append(await _measure_call(bell, resident, pid, seconds, width, height, encoding))
                finally:
                    bell.close()
                    await site.stop(door.process)
    return results


async def _measure_call(bell: Bell, resident: Process, pid: int, seconds: float, width: int, height: int,
                        encoding: str) -> dict[str, Any]:
    mark, first = await answered(bell, resident)
    reset_peak_rss(pid)
    before, started = cpu_times(pid), time.monotonic()
    peak_sampled = 0
    hanging_up = asyncio.get_running_loop().create_task(
        resident.wait_for_event("hanging_up", seconds + 20, after=mark))
    while not hanging_up.done():
        peak_sampled = max(peak_sampled, memory_kib(pid)["VmRSS"])
        await asyncio.wait({hanging_up}, timeout=0.5)
    after, elapsed = cpu_times(pid), time.monotonic() - started
    await hanging_up
    peak = max(peak_sampled, memory_kib(pid)["VmHWM"])
    ended = await call_ended(bell, resident, mark)
    camera_s = after.by_thread.get("camera", 0.0) - before.by_thread.get("camera", 0.0)
    threads = {name: round(100 * (seconds - before.by_thread.get(name, 0.0)) / elapsed, 1)
               for name, seconds in after.by_thread.items()}
    total_s = after.total - before.total
    glass = ended["glass_to_glass_ms"][SETTLE_FRAMES:]
    return {
        "encoding": encoding, "size": f"{width}x{height}", "call_s": round(elapsed, 1),
        "cpu_percent": round(100 * total_s / elapsed, 1),
        # The simulated camera's thread draws the pattern (and, for pass-through, runs libx264):
        # on a Pi the ISP and the hardware encoder do that work, so the door's own share is
        # what the process spends beside it.
        "camera_thread_percent": round(100 * camera_s / elapsed, 1),
        "door_percent": round(100 * (total_s - camera_s) / elapsed, 1),
        "threads_percent": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "peak_rss_kib": peak,
        "frames_decoded": ended["video_frames"],
        "fps_received": round(ended["video_frames"] / max(elapsed, 1e-9), 1),
        "first_frame_ms": round(first["after_accept_s"] * 1000, 1),
        "glass_to_glass_ms": summary(glass),
        "stamps_read": len(ended["glass_to_glass_ms"]),
    }


async def message_cost(root: Path, seconds: float, width: int = 1280, height: int = 720,
                       fps: float = 30) -> dict[str, Any]:
    """A visitor's message of `seconds` nobody answered for: the door's CPU and memory while it
    records (the camera's own H.264 into an MP4, the microphone into AAC), the file, and how
    long it took to reach the server."""
    async with installation(root) as site:
        await site.start_resident("alice", "--answer", "ignore")
        settings = camera(width, height, fps)
        settings["calls"] = {"visitor_messages": {"enabled": True, "max_s": seconds,
                                                  "spool_dir": str(root / "spool")}}
        door = await site.start_door("door-message", [{"residents": ["alice"], "timeout_s": 1}], settings=settings)
        pid = door.process.proc.pid
        bell = Bell(door)
        try:
            await bell.press()
            while (await bell.status())["state"] != "recording":
                await asyncio.sleep(0.01)
            while "record_beep" not in (await bell.status())["speaker"]["tones_played"]:
                await asyncio.sleep(0.01)
            reset_peak_rss(pid)
            before, started = cpu_times(pid), time.monotonic()
            peak_sampled = 0
            while (status := await bell.status())["state"] == "recording":
                peak_sampled = max(peak_sampled, memory_kib(pid)["VmRSS"])
                await asyncio.sleep(0.25)
            after, elapsed = cpu_times(pid), time.monotonic() - started
            peak = max(peak_sampled, memory_kib(pid)["VmHWM"])
            recorded = time.monotonic()
            while (status := await bell.status())["messages"]["sent"] < 1:
                if time.monotonic() - recorded > 60:
                    raise TimeoutError(f"the message never reached the server: {status['messages']}")
                await asyncio.sleep(0.05)
            sent_after_s = time.monotonic() - recorded
            await bell.release()
        finally:
            bell.close()
            await site.stop(door.process)
    camera_s = after.by_thread.get("camera", 0.0) - before.by_thread.get("camera", 0.0)
    total_s = after.total - before.total
    last = status["messages"]["last"]
    return {"seconds": seconds, "camera": f"{width}x{height} at {fps:g} fps, pass-through",
            "recording_s": round(elapsed, 1), "cpu_percent": round(100 * total_s / elapsed, 1),
            "camera_thread_percent": round(100 * camera_s / elapsed, 1),
            "door_percent": round(100 * (total_s - camera_s) / elapsed, 1), "peak_rss_kib": peak,
            "file_kib": round(last["bytes"] / 1024), "duration_s": last["duration_s"],
            "sent_after_s": round(sent_after_s, 2)}

"""Press to ring: from the bell's GPIO event at the door to `incoming` at a resident's device.

The resident is a signaling client in this process: it notes when `incoming` arrives, waits
for the visitor's picture that follows it, and declines, so the door is idle for the next
press. The door reports its own share (press to dial sent) in its status.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from intercom.signaling import SignalingClient

from .figures import summary
from .scene import Bell, camera, installation

WIDTH, HEIGHT, FPS = 640, 480, 15  # the door's default camera


async def run(root: Path, presses: int) -> dict[str, Any]:
    async with installation(root) as site:
        token = (await site.add_user("alice", "resident", "Alice")).read_text().strip()
        door = await site.start_door("front", [{"residents": ["alice"]}], settings=camera(WIDTH, HEIGHT, FPS))
        events: dict[str, asyncio.Queue[tuple[float, dict[str, Any]]]] = {"incoming": asyncio.Queue(),
                                                                           "snapshot": asyncio.Queue()}

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] in events:
                events[event["type"]].put_nowait((time.monotonic(), event))

        phone = SignalingClient(site.ws_url, "alice", token, "phone", on_event=on_event)
        runner = asyncio.get_running_loop().create_task(phone.run())
        bell = Bell(door)
        ring_ms: list[float] = []
        picture_ms: list[float] = []
        dial_ms: list[float] = []
        #: Rings that came without the picture, which followed in its own `snapshot`.
        rang_first = 0
        #: Presses that found their peer connection prepared (the rest built one).
        prepared = 0
        try:
            await asyncio.wait_for(phone.connected.wait(), 10)
            for _ in range(presses):
                pressed = await bell.press()
                rang, incoming = await asyncio.wait_for(events["incoming"].get(), 10)
                ring_ms.append((rang - pressed) * 1000)
                pictured, snapshot = await asyncio.wait_for(events["snapshot"].get(), 10)
                assert snapshot["call_id"] == incoming["call_id"]
                picture_ms.append((pictured - pressed) * 1000)
                rang_first += "snapshot_url" not in incoming and pictured >= rang
                await phone.request("decline", call_id=incoming["call_id"])
                status = await bell.until_idle()
                dial_ms.append(status["press_timings"]["press_to_dial_ms"])
                prepared += bool(status["press_timings"].get("prepared"))
                await bell.release()
        finally:
            bell.close()
            await phone.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    return {"presses": presses, "camera": f"{WIDTH}x{HEIGHT} at {FPS} fps",
            "press_to_ring_ms": summary(ring_ms), "press_to_dial_sent_ms": summary(dial_ms),
            "press_to_picture_ms": summary(picture_ms), "rang_before_picture": rang_first,
            "prepared_connections": prepared}

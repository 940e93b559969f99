"""The installation every benchmark measures: the real server and door daemons as processes
of their own on loopback (the harness `make demo` and the end-to-end tests use), with the
door's simulated pins, test-pattern camera and tone microphone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from intercom.control import ControlClient
from intercom_sim.harness import Door, Installation

#: gpiozero's bounce filter in the door (bell_bounce_s): a press closer than this to the last
#: release is a bounce, so the bench's finger waits this long, as a visitor's would.
BOUNCE_S = 0.05


def camera(width: int, height: int, fps: float, encoding: str = "passthrough") -> dict[str, Any]:
    return {"hardware": {"camera": {"width": width, "height": height, "fps": fps, "encoding": encoding}}}


@asynccontextmanager
async def installation(root: Path, settings: dict[str, Any] | None = None) -> AsyncIterator[Installation]:
    site = Installation(root)
    try:
        await site.start_server(settings=settings)
        yield site
    finally:
        await site.close()


class Bell:
    """The bench's finger on a door's button, through one control connection (an `intercom ctl`
    process per press would add its own start-up to every figure)."""

    def __init__(self, door: Door) -> None:
        self.door = door
        self.ctl = ControlClient(door.socket)
        self._released_at = 0.0

    async def press(self) -> float:
        """Press; returns the monotonic time of the press (this machine's clock is shared by
        every process on it, so the door's and a resident's times compare)."""
        quiet = self._released_at + BOUNCE_S - time.monotonic()
        if quiet > 0:
            await asyncio.sleep(quiet)  # a finger lifted this recently would be a bounce
        at = time.monotonic()
        await self.ctl.command("press")
        return at

    async def release(self) -> None:
        await self.ctl.command("release")
        self._released_at = time.monotonic()

    async def status(self) -> dict[str, Any]:
        return await self.ctl.command("status")

    async def until_idle(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait for the door to finish its call and be ready for the next press, its peer
        connection prepared (it polls the door's own view, as an installer would). A visitor's
        next press comes seconds after a call, not the bench's 50 ms."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.status()
            if status["state"] == "idle" and status["camera"]["viewers"] == 0 and status["standby"]["ready"]:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"door {self.door.user_id} did not return to idle: {status}")
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self.ctl.close()

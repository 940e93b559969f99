"""When Home Assistant and webhooks hear that a door went offline.

A door on a flaky Wi-Fi link, or one that reconnects while the server restarts, drops its
connection for a second or two and is back. Reported as it happens, each drop flapped the
door's availability in Home Assistant and sent a door_offline/door_online pair to every
webhook. So a door is reported offline only once it has stayed away `offline_after_s`
(`door_offline_after_s` in the YAML); back sooner, nothing at all is reported. A door that
comes back after it was reported offline is reported online at once: residents want to know
the bell works again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .events import EventType

Report = Callable[[EventType, str, float], None]


class DoorPresence:
    def __init__(self, offline_after_s: float, still_offline: Callable[[str], Awaitable[bool]], report: Report,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.offline_after_s = offline_after_s
        self._still_offline = still_offline
        self._report = report
        self._spawn = spawn
        #: Doors whose last connection went, and are not reported offline yet.
        self._pending: dict[str, asyncio.TimerHandle] = {}

    def online(self, door_id: str, now: float) -> None:
        """The door signed in with no other connection of its own."""
        pending = self._pending.pop(door_id, None)
        if pending is not None:
            pending.cancel()  # it was never reported offline: it is simply still online
            return
        self._report(EventType.DOOR_ONLINE, door_id, now)

    def offline(self, door_id: str) -> None:
        """The door's last connection went."""
        if door_id in self._pending:
            return
        went = time.time()
        self._pending[door_id] = asyncio.get_running_loop().call_later(
            self.offline_after_s, lambda: self._spawn(self._settled(door_id, went)))

    async def _settled(self, door_id: str, went: float) -> None:
        if self._pending.pop(door_id, None) is None:
            return
        if await self._still_offline(door_id):  # in a cluster it may be back on another process
            self._report(EventType.DOOR_OFFLINE, door_id, went)

    def settling(self, door_id: str) -> bool:
        """Gone, but not long enough to be reported offline: still online to the outside."""
        return door_id in self._pending

    def close(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()

"""The state of one server process, in its memory: the backend `compose.py` picks when no
`cluster:` is configured. Every interface of `state.py`, with nothing to reach beyond it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from intercom_protocol.calls import DeviceRef, Send, ServerCall

from .limits import FailureWindow
from .state import CALL_TIMERS, RECENT_CALLS_S, Applied, Event, Local, Stopping

#: At most this many ended calls are remembered, however many ended within `RECENT_CALLS_S`.
RECENT_CALLS_MAX = 10_000


class MemoryPresence:
    def __init__(self) -> None:
        self._by_user: dict[str, set[str]] = {}

    async def join(self, device: DeviceRef) -> str | None:
        self._by_user.setdefault(device.user_id, set()).add(device.device_id)
        return None

    async def leave(self, device: DeviceRef) -> None:
        devices = self._by_user.get(device.user_id)
        if devices is not None:
            devices.discard(device.device_id)
            if not devices:
                del self._by_user[device.user_id]

    async def devices_of(self, user_ids: Iterable[str]) -> list[DeviceRef]:
        return [DeviceRef(user, device) for user in dict.fromkeys(user_ids) for device in self._by_user.get(user, ())]

    async def where(self, device: DeviceRef) -> str | None:
        return "here" if device.device_id in self._by_user.get(device.user_id, ()) else None


class MemoryCalls:
    def __init__(self, timers: MemoryTimers) -> None:
        self._timers = timers
        self._live: dict[str, ServerCall] = {}
        #: Calls that ended lately, oldest first.
        self._recent: dict[str, ServerCall] = {}

    async def add(self, call: ServerCall, timers: dict[str, float] | None = None, sends: Sequence[Send] = ()) -> None:
        # One process: every device is here, and `sends` are all the caller's to deliver.
        if timers:
            await self._timers.schedule({f"{kind}:{call.call_id}": at for kind, at in timers.items()})
        if call.ended:
            self._remember(call)
        else:
            self._live[call.call_id] = call

    async def get(self, call_id: str) -> ServerCall | None:
        return self._live.get(call_id) or self._recent.get(call_id)

    async def peek(self, call_id: str) -> ServerCall | None:
        return await self.get(call_id)

    async def change(self, call_id: str, event: Event) -> Applied | None:
        call = self._live.get(call_id) or self._recent.get(call_id)
        if call is None:
            return None
        was_live = not call.ended
        sends = event(call)
        ended = was_live and call.ended
        if ended:
            del self._live[call_id]
            self._remember(call)
            await self._timers.cancel(*(f"{kind}:{call_id}" for kind in CALL_TIMERS))
        return Applied(call, sends, ended)

    async def calls_of(self, user_ids: Iterable[str]) -> list[ServerCall]:
        users = set(user_ids)
        return [c for c in [*self._recent.values(), *self._live.values()]
                if c.caller.user_id in users or users.intersection(c.callees)]

    async def live(self) -> list[ServerCall]:
        return list(self._live.values())

    async def live_count(self) -> int:
        return len(self._live)

    def _remember(self, call: ServerCall) -> None:
        self._recent[call.call_id] = call
        horizon = (call.ended_at or 0) - RECENT_CALLS_S
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if (oldest.ended_at or 0) >= horizon and len(self._recent) <= RECENT_CALLS_MAX:
                break
            del self._recent[oldest.call_id]


class MemoryTimers:
    def __init__(self, due: Callable[[str], None]) -> None:
        self._due = due
        self.handles: dict[str, asyncio.TimerHandle] = {}

    async def schedule(self, due: dict[str, float]) -> None:
        loop, now = asyncio.get_running_loop(), time.time()
        for key, at in due.items():
            old = self.handles.pop(key, None)
            if old is not None:
                old.cancel()
            self.handles[key] = loop.call_later(max(0.0, at - now), self._fire, key)

    async def cancel(self, *keys: str) -> None:
        for key in keys:
            handle = self.handles.pop(key, None)
            if handle is not None:
                handle.cancel()

    def _fire(self, key: str) -> None:
        self.handles.pop(key, None)
        self._due(key)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()


class MemoryFailures:
    """A window per key, on the monotonic clock (a clock step does not unblock anyone)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[int, float], FailureWindow] = {}

    def _window(self, limit: int, window_s: float) -> FailureWindow:
        found = self._windows.get((limit, window_s))
        if found is None:
            found = self._windows[limit, window_s] = FailureWindow(limit, window_s)
        return found

    async def blocked_for(self, key: str, limit: int, window_s: float) -> float:
        return self._window(limit, window_s).blocked_for(key, time.monotonic())

    async def fail(self, key: str, limit: int, window_s: float) -> None:
        self._window(limit, window_s).fail(key, time.monotonic())


class NoBackplane:
    """One process: every device is here, and every event is this process's."""

    def __init__(self) -> None:
        self.local: Local | None = None

    def kick(self, device: DeviceRef, process: str, code: int, reason: str) -> None:
        return None

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        raise LookupError(f"{device.user_id}/{device.device_id} is not connected")

    def broadcast(self, event: dict[str, Any]) -> None:
        if self.local is not None:
            self.local.broadcast_received(event)


class SoleLease:
    """One process holds every lease, for as long as it runs."""

    def __init__(self) -> None:
        self._released = asyncio.Event()

    async def acquire(self) -> None:
        self._released.clear()

    async def lost(self) -> None:
        await self._released.wait()

    async def release(self) -> None:
        self._released.set()


class MemoryState:
    def __init__(self) -> None:
        self.presence = MemoryPresence()
        self.timers = MemoryTimers(self._timer_due)
        self.calls = MemoryCalls(self.timers)
        self.failures = MemoryFailures()
        self.backplane = NoBackplane()
        self.stopping = Stopping(end_calls=True, close_code=1001, close_reason="server shutting down")
        self._local: Local | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, local: Local) -> None:
        self._local = self.backplane.local = local

    async def close(self) -> None:
        self.timers.close()

    def lease(self, name: str) -> SoleLease:
        return SoleLease()

    def health(self) -> tuple[str | None, dict[str, Any]]:
        return None, {}

    def _timer_due(self, key: str) -> None:
        assert self._local is not None
        task = asyncio.get_running_loop().create_task(self._local.timer_due(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


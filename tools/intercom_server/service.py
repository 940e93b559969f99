"""The call service: live calls changed by events and delivered to their parties, their
timers, and the grace a device that left gets. Written once against `state.py`'s interfaces,
so it is the same on one process as on many; `ServerCall` is the rule book it applies.

The requests of a party (`dial`, `accept`...) are in `call_requests.py`; signing in and out
in `signin.py`. Integrations (`door_action.py`, `mqtt.py`) use the public methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from intercom_protocol import messages as m
from intercom_protocol.calls import CallError, DeviceRef, Send, ServerCall

from .background import Background
from .connection import ConnectionGone
from .endpoints import LocalEndpoints
from .events import EventBus, EventType
from .push import Pusher
from .records import UserKind
from .settings import HubSettings
from .state import Applied, Event, State, device_key, device_of
from .store import Store

log = logging.getLogger("intercom.server")


class CallService:
    def __init__(self, settings: HubSettings, state: State, endpoints: LocalEndpoints, background: Background,
                 store: Store, push: Pusher, events: EventBus) -> None:
        self.settings = settings
        self.state = state
        self.endpoints = endpoints
        self.background = background
        self.store = store
        self.push = push
        self.events = events
        #: Calls with a change under way here, and how many changes wait for their turn.
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- where things are ------------------------------------------------------------------

    async def find_call(self, call_id: str) -> ServerCall | None:
        """A live call, or one that ended lately."""
        return await self.state.calls.get(call_id)

    async def calls_of(self, user_ids: list[str], live_only: bool = True) -> list[ServerCall]:
        """The calls these users are parties of, oldest first."""
        calls = await self.state.calls.calls_of(user_ids)
        return [c for c in calls if not c.ended] if live_only else calls

    async def live_calls(self) -> list[ServerCall]:
        return await self.state.calls.live()

    async def live_count(self) -> int:
        return await self.state.calls.live_count()

    async def devices_of(self, user_ids: list[str] | tuple[str, ...]) -> list[DeviceRef]:
        """Every connected device of these users, on any process."""
        return await self.state.presence.devices_of(user_ids)

    async def door_gone(self, door_id: str) -> bool:
        """Whether no device of this door is connected anywhere."""
        return not await self.devices_of([door_id])

    async def is_connected(self, device: DeviceRef) -> bool:
        return device in self.endpoints or await self.state.presence.where(device) is not None

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, **body: Any) -> dict[str, Any]:
        """A request to a device (the door, asked to open), wherever it is connected: its
        reply, or TimeoutError, or ConnectionGone."""
        if device in self.endpoints:
            return await self.endpoints.ask_local(device, kind, timeout_s, body)
        try:
            return await self.state.backplane.ask(device, kind, timeout_s, body)
        except LookupError:
            raise ConnectionGone() from None

    async def involving(self, device: DeviceRef | None, call_id: str) -> ServerCall | None:
        """A live or recent call this device is a party of; None for any other, alike. As this
        process last saw it: the change that follows confirms it."""
        call = await self.state.calls.peek(call_id)
        return call if call is not None and device is not None and call.involves(device) else None

    # -- changing calls --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, call_id: str) -> AsyncIterator[None]:
        """Changes of one call take turns in this process, in the order they arrived: of two
        accepts a moment apart the first wins, whatever the backend's round trips do. Between
        processes the registry's atomic change decides."""
        lock, waiting = self._turns.get(call_id) or (asyncio.Lock(), 0)
        self._turns[call_id] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._turns[call_id]
            if waiting == 1:
                del self._turns[call_id]
            else:
                self._turns[call_id] = (lock, waiting - 1)

    async def add(self, call: ServerCall, sends: list[Send], timers: dict[str, float] | None = None) -> None:
        """A new call, its timers (`CALL_TIMERS`: they go when it ends), and its first
        messages to devices on other processes, in one step. Those to devices here go with
        `deliver_new`, once its caller has `ok`; so do messages about the call that come back
        from other processes before then (an answer, on a busy evening)."""
        self.endpoints.hold(call.call_id)
        try:
            await self.state.calls.add(call, timers, sends)
        except BaseException:
            self.endpoints.release(call.call_id)
            raise

    async def apply(self, call_id: str, event: Event) -> Applied | None:
        """Apply one event to a call, or None for no such call. `CallError` passes through,
        and changes nothing."""
        return await self.state.calls.change(call_id, event)

    async def event(self, call_id: str, event: Event) -> ServerCall | None:
        """Apply and deliver, for events no request waits on (timers, losses)."""
        async with self.turn(call_id):
            try:
                applied = await self.apply(call_id, event)
            except CallError as exc:
                log.info("%s: %s", call_id, exc.message)
                return None
            if applied is None:
                return None
            await self.deliver(applied)
        return applied.call

    def deliver_new(self, call: ServerCall, sends: list[Send]) -> None:
        """A new call's first messages to devices here, then what came back meanwhile."""
        self.endpoints.deliver(sends)
        self.endpoints.release(call.call_id)

    async def deliver(self, applied: Applied) -> None:
        """A change's messages to the devices connected here (those elsewhere had theirs
        with the change), and its end."""
        self.endpoints.deliver(applied.sends)
        if applied.ended:
            await self._ended(applied.call)

    async def _ended(self, call: ServerCall) -> None:
        """Once per call, by the process whose event ended it. The record is queued before
        anything is awaited, so a party told `ended` reads it back completed."""
        self.background.store("record the call's end", self.store.calls.finish_call(call))
        log.info("%s ended: %s", call.call_id, call.end_reason)
        ended_at = call.ended_at or time.time()
        if call.accepted_by is None:
            self.push.missed(call, ended_at)
        if not self.events.active:
            return
        answered = call.accepted_by is not None
        self.events.call(EventType.ENDED, call, ended_at, end_reason=str(call.end_reason), answered=answered,
                         duration_s=round(ended_at - call.created_at, 3))
        if not answered and call.caller_info["kind"] == UserKind.DOOR:
            self.events.call(EventType.MISSED, call, ended_at, end_reason=str(call.end_reason), offline=False)

    # -- timers and a device's grace -------------------------------------------------------

    async def timer_due(self, key: str) -> None:
        kind, _, rest = key.partition(":")
        now = time.time()
        if kind == "ring":
            await self.event(rest, lambda call: call.expire(now))
        elif kind == "max":
            await self.event(rest, lambda call: call.time_out(now))
        elif kind in ("grace", "media"):
            await self._grace_over(device_of(rest), answered=kind == "media")

    async def device_gone(self, device: DeviceRef) -> None:
        """A device's connection is gone (closed here, or its process died): its calls wait a
        while for it to come back, on any process, and claim them."""
        live = [c for c in await self.calls_of([device.user_id]) if c.involves(device)]
        if not live:
            return
        # An answered call may have healthy media while the signaling link is down: it waits
        # longer for its device to come back and claim it than a ring does.
        answered = any(c.accepted_by is not None and device in (c.caller, c.accepted_by) for c in live)
        grace = self.settings.media_grace_s if answered else self.settings.grace_s
        log.info("%s/%s disconnected during a call; waiting %.0fs for it to return",
                 device.user_id, device.device_id, grace)
        now, key = time.time(), device_key(device)
        await self.state.timers.schedule({f"grace:{key}": now + self.settings.grace_s,
                                          **({f"media:{key}": now + grace} if answered else {})})

    async def returned(self, device: DeviceRef) -> None:
        """The device is back: its grace is over, nothing is lost."""
        key = device_key(device)
        await self.state.timers.cancel(f"grace:{key}", f"media:{key}")

    async def _grace_over(self, device: DeviceRef, answered: bool) -> None:
        """The device did not come back: its rings stop, and (after the longer wait) its
        answered calls end `connection_lost`."""
        if await self.is_connected(device):
            return  # it came back meanwhile
        now = time.time()
        for call in await self.calls_of([device.user_id]):
            if call.involves(device) and (answered or call.accepted_by is None):
                await self.event(call.call_id, lambda c: c.lose(device, now))

    async def lose_calls(self, device: DeviceRef) -> None:
        """The device's calls end now, as after a crash (its session ended)."""
        now = time.time()
        for call in await self.calls_of([device.user_id]):
            if call.involves(device):
                await self.event(call.call_id, lambda c: c.lose(device, now))

    async def stop(self) -> None:
        """This process stops: alone, its live calls end (`unknown`), so their records are
        complete; in a cluster they live on."""
        if not self.state.stopping.end_calls:
            return
        now = time.time()
        for call in await self.live_calls():
            await self.event(call.call_id, lambda c: c.abort(m.EndReason.UNKNOWN, now))

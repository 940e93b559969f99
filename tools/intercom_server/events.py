"""What happens at a site's doors, told to the integrations outside (MQTT, webhooks).

The hub emits a `SiteEvent` once it has done the work the event is about (the phones are rung,
the answer is sent), and a listener only queues it: a broker or a web receiver that is down or
slow never delays a ring. Nothing is emitted, and nothing is looked up, while nobody listens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from intercom_protocol.calls import DeviceRef, ServerCall, iso

log = logging.getLogger("intercom.server")


class EventType(StrEnum):
    #: A visitor pressed the bell: the residents' phones are ringing.
    RING = "ring"
    ANSWERED = "answered"
    #: A visitor's ring nobody answered, or a press the door made while the server was away.
    MISSED = "missed"
    ENDED = "ended"
    DOOR_OPENED = "door_opened"
    DOOR_ONLINE = "door_online"
    DOOR_OFFLINE = "door_offline"
    #: The visitor's picture of a call (MQTT shows it; webhooks are not sent pictures).
    PICTURE = "picture"


@dataclass(frozen=True)
class SiteEvent:
    type: EventType
    site_id: str
    door_id: str
    door_name: str
    at: float
    call_id: str | None = None
    #: What a receiver is told besides the above: JSON-ready, no secrets, no pictures.
    data: dict[str, Any] = field(default_factory=dict)
    picture: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as webhooks carry it (`type`, `timestamp`, `data`)."""
        data = {"site_id": self.site_id, "door": {"user_id": self.door_id, "display_name": self.door_name},
                **({"call_id": self.call_id} if self.call_id else {}), **self.data}
        return {"type": str(self.type), "timestamp": iso(self.at), "data": data}


Listener = Callable[[SiteEvent], None]


class EventBus:
    """Events leave in the order the hub made them: each waits for its door's name and site to
    be looked up (a round trip on PostgreSQL) in one queue, so an `answered` never overtakes
    its `ring`, and the call that made them never waits."""

    def __init__(self, find_user: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
        self._find_user = find_user
        self._listeners: list[Listener] = []
        self._pending: deque[tuple[str, Callable[[dict[str, Any]], SiteEvent]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: SiteEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # an integration's bug must not stop a call
                log.exception("an integration failed on the %s event", event.type)

    def _later(self, door_id: str, make: Callable[[dict[str, Any]], SiteEvent]) -> None:
        self._pending.append((door_id, make))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain(), name="events")

    async def _drain(self) -> None:
        while self._pending:
            door_id, make = self._pending.popleft()
            try:
                door = await self._find_user(door_id)
            except Exception:  # the database is away: this event is lost, the next ones are not
                log.exception("could not look up door '%s' for an event", door_id)
                continue
            if door is not None and door["kind"] == "door":
                self.emit(make(door))

    # -- the hub's words -------------------------------------------------------------------

    def door(self, type: EventType, door_id: str, at: float | None = None, **data: Any) -> None:
        """An event about a door itself (online, offline, opened)."""
        if not self._listeners:
            return
        call_id = data.pop("call_id", None)
        when = at or time.time()
        self._later(door_id, lambda door: SiteEvent(type, door["site_id"], door_id, door["display_name"], when,
                                                    call_id, data))

    def call(self, type: EventType, call: ServerCall, at: float, picture: bytes | None = None, **data: Any) -> None:
        """An event about a call of a door: a visitor's ring, or a resident looking outside."""
        if not self._listeners:
            return
        visitor = call.caller_info.get("kind") == "door"
        door_id = call.caller.user_id if visitor else call.callees[0]
        call_id = call.call_id
        self._later(door_id, lambda door: SiteEvent(
            type, door["site_id"], door_id, door["display_name"], at, call_id,
            {"direction": "visitor" if visitor else "look_outside", **data}, picture))


def party(device: DeviceRef, display_name: str | None) -> dict[str, Any]:
    return {"user_id": device.user_id, "device_id": device.device_id, "display_name": display_name}

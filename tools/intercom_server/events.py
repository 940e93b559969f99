"""What happens at a site's doors, told to the integrations outside (MQTT, webhooks).

The hub emits a `SiteEvent` once it has done the work the event is about (the phones are rung,
the answer is sent), and a listener only queues it: a broker or a web receiver that is down or
slow never delays a ring. Nothing is emitted, and nothing is looked up, while nobody listens.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from intercom_protocol.calls import DeviceRef, ServerCall, iso

from .records import User, UserKind

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


    def to_wire(self) -> dict[str, Any]:
        """The whole event as JSON, for another process."""
        return {"type": str(self.type), "site_id": self.site_id, "door_id": self.door_id,
                "door_name": self.door_name, "at": self.at, "call_id": self.call_id, "data": self.data,
                "picture": base64.b64encode(self.picture).decode() if self.picture is not None else None}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> SiteEvent:
        picture = wire.get("picture")
        return cls(EventType(wire["type"]), wire["site_id"], wire["door_id"], wire["door_name"], float(wire["at"]),
                   wire.get("call_id"), dict(wire.get("data") or {}),
                   base64.b64decode(picture) if picture is not None else None)


Listener = Callable[[SiteEvent], None]


class EventBus:
    """Events leave in the order the hub made them: each waits for its door's name and site to
    be looked up (a round trip on PostgreSQL) in one queue, so an `answered` never overtakes
    its `ring`, and the call that made them never waits."""

    def __init__(self, find_user: Callable[[str], Awaitable[User | None]],
                 broadcast: Callable[[dict[str, Any]], None]) -> None:
        self._find_user = find_user
        self._broadcast = broadcast
        self._listeners: list[Listener] = []
        #: Listeners that hear every process's events (an integration one process runs).
        self._everywhere: list[Listener] = []
        self._pending: deque[tuple[str, Callable[[User], SiteEvent]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def listen(self, listener: Listener) -> None:
        """Hear the events of this process (webhooks: each process sends its own)."""
        self._listeners.append(listener)

    def listen_everywhere(self, listener: Listener) -> None:
        """Hear the events of every process, through the state backend (in memory, at once)."""
        self._everywhere.append(listener)

    @property
    def active(self) -> bool:
        return bool(self._listeners or self._everywhere)

    def emit(self, event: SiteEvent) -> None:
        _tell(self._listeners, event)
        if self._everywhere:
            self._broadcast(event.to_wire())

    def received(self, wire: dict[str, Any]) -> None:
        """An event from any process (this one included)."""
        if self._everywhere:
            _tell(self._everywhere, SiteEvent.from_wire(wire))

    def _later(self, door_id: str, make: Callable[[User], SiteEvent]) -> None:
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
            if door is not None and door.kind == UserKind.DOOR:
                self.emit(make(door))

    # -- the hub's words -------------------------------------------------------------------

    def door(self, type: EventType, door_id: str, at: float | None = None, **data: Any) -> None:
        """An event about a door itself (online, offline, opened)."""
        if not self._listeners:
            return
        call_id = data.pop("call_id", None)
        when = at or time.time()
        self._later(door_id, lambda door: SiteEvent(type, door.site_id, door_id, door.display_name, when,
                                                    call_id, data))

    def call(self, type: EventType, call: ServerCall, at: float, picture: bytes | None = None, **data: Any) -> None:
        """An event about a call of a door: a visitor's ring, or a resident looking outside."""
        if not self._listeners:
            return
        visitor = call.caller_info.get("kind") == UserKind.DOOR
        door_id = call.caller.user_id if visitor else call.callees[0]
        call_id = call.call_id
        self._later(door_id, lambda door: SiteEvent(
            type, door.site_id, door_id, door.display_name, at, call_id,
            {"direction": "visitor" if visitor else "look_outside", **data}, picture))


def _tell(listeners: list[Listener], event: SiteEvent) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # an integration's bug must not stop a call
            log.exception("an integration failed on the %s event", event.type)


def party(device: DeviceRef, display_name: str | None) -> dict[str, Any]:
    return {"user_id": device.user_id, "device_id": device.device_id, "display_name": display_name}

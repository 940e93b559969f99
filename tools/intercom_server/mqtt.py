"""The MQTT bridge: the doors as Home Assistant devices, kept up to date, and their openings.

The hub's events are queued here and published by one task, so a broker that is slow or gone
never delays a ring: while it is gone, events are dropped (counted), the state of each door is
kept, and all of it is published again, retained, once the broker is back (and whenever Home
Assistant announces that it started). The connection is aiomqtt's (on paho), tried again with
a doubling wait.

Openings and switches are `mqtt_commands.py`'s. A command is never taken from a retained
message (MQTT 5's "retain as published" shows the flag) nor a stored one (a clean start with no
session, commands at QoS 0: the broker replays none after a reconnection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from intercom_protocol.calls import ServerCall, iso

from . import homeassistant as ha
from .availability import RuleBook
from .door_action import DoorAction
from .door_presence import DoorPresence
from .events import EventBus, EventType, SiteEvent
from .homeassistant import DoorTopics, OpenEntity
from .mqtt_commands import MqttCommands
from .mqtt_settings import MqttSettings, MqttStatus
from .records import UserKind
from .service import CallService
from .state import Lease
from .store import Store

log = logging.getLogger("intercom.server")

#: How long a `lock` shows UNLOCKED after an opening whose door did not say its strike's pulse.
DEFAULT_PULSE_S = 3.0
PUBLISH_TIMEOUT_S = 10.0


Publish = tuple[str, bytes | str, bool]


class MqttBridge:
    """Home Assistant over MQTT. It hears every process's events (`listen_everywhere`) and
    reads calls and presence through the call service, so it runs on one process of a
    cluster as on a single one: the process holding the `mqtt` lease, renewed every second;
    when that process dies, another takes the lease within `dead_after_s`, connects with the
    same client id, and publishes every door's state again."""

    def __init__(self, settings: MqttSettings, service: CallService, store: Store, rules: RuleBook,
                 door_presence: DoorPresence, door_action: DoorAction, events: EventBus, lease: Lease) -> None:
        self.service = service
        self.store = store
        self.rules = rules
        self.door_presence = door_presence
        self.door_action = door_action
        self._lease = lease
        self.settings = settings
        self.status = MqttStatus(broker=f"{settings.host}:{settings.port}")
        self._queue: asyncio.Queue[Publish] | None = None
        self._doors: dict[str, str] = {}  # door id -> display name, for those published
        self._pictures: dict[str, bytes] = {}
        self._answered_by: dict[str, str] = {}
        self._relock: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._dnd_ends: dict[str, asyncio.TimerHandle] = {}
        #: Sites and residents whose switches were published.
        self._sites: set[str] = set()
        self._residents: set[str] = set()
        self.commands = MqttCommands(settings, self.status, door_action, rules, store, self._put, self._later,
                                     self._doors, self._relock)
        events.listen_everywhere(self.on_event)
        if settings.switches:
            rules.listeners.append(self._rules_changed)

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="mqtt")

    async def close(self) -> None:
        """Say goodbye (the last will says it for a crash), then stop."""
        client = self._client
        if client is not None and self.status.connected:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(ha.status_topic(self.settings.base_topic), ha.OFFLINE, qos=1, retain=True,
                                     timeout=2.0)
        for handle in [*self._relock.values(), *self._dnd_ends.values()]:
            handle.cancel()
        for task in [*self._tasks, *([self._runner] if self._runner else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._runner] if self._runner else []), return_exceptions=True)
        await self._lease.release()

    async def _run(self) -> None:
        """While this process holds the lease: connected to the broker."""
        while True:
            await self._lease.acquire()
            self.status.leader = True
            log.info("this process runs the MQTT bridge")
            bridge = asyncio.get_running_loop().create_task(self._connected())
            lost = asyncio.get_running_loop().create_task(self._lease.lost())
            try:
                await asyncio.wait({bridge, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (bridge, lost):
                    task.cancel()
                await asyncio.gather(bridge, lost, return_exceptions=True)
                self.status.leader = self.status.connected = False
            log.warning("this process no longer holds the MQTT lease: another one runs the bridge")

    async def _connected(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while True:
            connects = self.status.connects
            try:
                async with self._client_for() as client:
                    self._client = client
                    await self._session(client)
                why = "the session ended"
            except aiomqtt.MqttError as exc:
                why = str(exc) or type(exc).__name__
            except OSError as exc:  # the password file, or TLS files
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug here must not end the bridge for good
                log.exception("the MQTT bridge failed")
                why = f"internal error: {exc}"
            self._client = None
            if self.status.connects != connects:  # it was connected: try again soon
                delay = s.reconnect_min_s
            self._lost(why, delay, warn=self.status.connects != connects or self.status.last_error is None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.reconnect_max_s)

    def _client_for(self) -> aiomqtt.Client:
        s = self.settings
        context = ssl.create_default_context(cafile=s.ca_file) if s.tls else None
        will = aiomqtt.Will(ha.status_topic(s.base_topic), ha.OFFLINE, qos=1, retain=True)
        # MQTT 5: a clean start with no session kept, so nothing sent while the server was away
        # is delivered later; and `retain as published`, so a command published retained shows
        # as such even when it arrives live (MQTT 3.1.1 clears the flag then).
        return aiomqtt.Client(s.host, s.port, username=s.username, password=s.secret(), identifier=s.client_id,
                              will=will, protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
                              keepalive=s.keepalive_s, tls_context=context, timeout=PUBLISH_TIMEOUT_S)

    async def _session(self, client: aiomqtt.Client) -> None:
        s = self.settings
        queue: asyncio.Queue[Publish] = asyncio.Queue()
        await client.subscribe(ha.command_filter(s.base_topic), options=SubscribeOptions(qos=0, retainAsPublished=True))
        await client.subscribe(f"{s.discovery_prefix}/status", options=SubscribeOptions(qos=0))
        if s.switches:
            for switch in ha.switch_filters(s.base_topic):
                await client.subscribe(switch, options=SubscribeOptions(qos=0, retainAsPublished=True))
        self._queue = queue
        self.status.connected = True
        self.status.since = iso(time.time())
        self.status.connects += 1
        log.info("connected to the MQTT broker at %s as %s", self.status.broker, s.client_id)
        self._put(ha.status_topic(s.base_topic), ha.ONLINE, True)
        await self._publish_all()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._publisher(client, queue))
                group.create_task(self._receiver(client))
        except* aiomqtt.MqttError as group_error:
            raise group_error.exceptions[0] from None
        finally:
            self._queue = None
            self.status.connected = False

    def _lost(self, why: str, retry_in: float, warn: bool) -> None:
        """Said once as a warning when the broker goes (or is not there at start), then quietly
        at each new try."""
        self.status.last_error = why
        self.status.since = iso(time.time())
        (log.warning if warn else log.info)("MQTT broker at %s: %s; trying again in %.0f s (rings and calls go on)",
                                            self.status.broker, why, retry_in)

    async def _publisher(self, client: aiomqtt.Client, queue: asyncio.Queue[Publish]) -> None:
        while True:
            topic, payload, retain = await queue.get()
            await client.publish(topic, payload, qos=1, retain=retain)
            self.status.published += 1

    async def _receiver(self, client: aiomqtt.Client) -> None:
        s = self.settings
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if topic == f"{s.discovery_prefix}/status":
                if payload.strip() == b"online":
                    log.info("Home Assistant started: publishing the doors again")
                    await self._publish_all()
                continue
            door_id = ha.door_of_command(s.base_topic, topic)
            if door_id is not None:
                self.commands.command(door_id, payload, bool(message.retain))
                continue
            switch = ha.switch_of_command(s.base_topic, topic) if s.switches else None
            if switch is not None:
                await self.commands.switch(*switch, payload, bool(message.retain))

    # -- what is published ----------------------------------------------------------------------

    def _put(self, topic: str, payload: bytes | str, retain: bool) -> None:
        if self._queue is None:
            if not retain:
                self.status.dropped += 1
            return
        self._queue.put_nowait((topic, payload, retain))

    async def _publish_all(self) -> None:
        """Discovery and the retained state of every door, from what the server knows now."""
        doors = await self.store.users.doors(self.settings.sites)
        # In place: the commands hold this same dict.
        self._doors.clear()
        self._doors.update({d.user_id: d.display_name for d in doors})
        for door_id in self._doors:
            self._publish_door(door_id)
        if self.settings.switches:
            for site_id in sorted({d.site_id for d in doors}):
                await self._publish_site(site_id)

    def _publish_door(self, door_id: str) -> None:
        s = self.settings
        topics = DoorTopics.of(s.base_topic, door_id)
        opening = s.doors.get(door_id, OpenEntity.NONE)
        for topic, document in ha.discovery(s.discovery_prefix, s.base_topic, door_id, self._doors[door_id],
                                            opening, s.server_url):
            self._put(topic, json.dumps(document) if document is not None else b"", True)
        self._later(self._publish_live(door_id, availability=True))
        if door_id in self._answered_by:
            self._put(topics.answered_by, self._answered_by[door_id], True)
        if door_id in self._pictures:
            self._put(topics.picture, self._pictures[door_id], True)
        if opening is OpenEntity.LOCK:
            self._put(topics.lock_state, ha.UNLOCKED if door_id in self._relock else ha.LOCKED, True)

    # -- away and do-not-disturb ------------------------------------------------------------------

    async def _publish_site(self, site_id: str) -> None:
        s, store = self.settings, self.store
        residents = [(u.user_id, u.display_name) for u in await store.users.list_users(site_id)
                     if u.kind == UserKind.RESIDENT]
        name = (await store.users.get_site(site_id)).name
        self._sites.add(site_id)
        self._residents.update(user_id for user_id, _ in residents)
        for topic, document in ha.site_discovery(s.discovery_prefix, s.base_topic, site_id,
                                                 name, residents):
            self._put(topic, json.dumps(document), True)
        self._rules_changed("site", site_id)
        for user_id, _ in residents:
            self._rules_changed("resident", user_id)

    def _rules_changed(self, kind: str, name: str) -> None:
        """Publish a switch's state (after the API, the web app or Home Assistant changed it)."""
        rules, base = self.rules, self.settings.base_topic
        if kind == "site":
            self._put(ha.away_topic(base, name), ha.ON if rules.site(name).away else ha.OFF, True)
            return
        if name not in self._residents:  # a resident added since: the site's switches again
            self._later(self._publish_resident_site(name))
            return
        resident = rules.resident(name)
        now = time.time()
        on = resident.dnd_on(now)
        self._put(ha.dnd_topic(base, name), ha.ON if on else ha.OFF, True)
        old = self._dnd_ends.pop(name, None)
        if old is not None:
            old.cancel()
        if on and resident.until is not None:  # it ends by itself: say so then
            self._dnd_ends[name] = asyncio.get_running_loop().call_later(
                resident.until - now + 0.5, self._rules_changed, "resident", name)

    async def _publish_resident_site(self, user_id: str) -> None:
        user = await self.store.users.find_user(user_id)
        if user is not None and user.site_id in self._sites:
            await self._publish_site(user.site_id)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_live(self, door_id: str, availability: bool = False) -> None:
        """The door's call state (and whether it is online), as the call service has them
        now, on whichever process the door and the calls are."""
        topics = DoorTopics.of(self.settings.base_topic, door_id)
        if availability:
            online = bool(await self.service.devices_of([door_id])) or self.door_presence.settling(door_id)
            self._put(topics.availability, ha.ONLINE if online else ha.OFFLINE, True)
        self._put(topics.call_state, _call_state(door_id, await self.service.live_calls()), True)

    def on_event(self, event: SiteEvent) -> None:
        s = self.settings
        if s.sites and event.site_id not in s.sites:
            return
        door = event.door_id
        if door not in self._doors:
            self._doors[door] = event.door_name
            self._publish_door(door)
            if s.switches and event.site_id not in self._sites:
                self._sites.add(event.site_id)  # published once, whatever arrives meanwhile
                self._later(self._publish_site(event.site_id))
        topics = DoorTopics.of(s.base_topic, door)
        visitor = event.data.get("direction") == "visitor"
        at = iso(event.at)
        match event.type:
            case EventType.RING:
                self._put(topics.event, json.dumps({"event_type": "pressed", "call_id": event.call_id, "at": at}), False)
            case EventType.PICTURE if event.picture is not None:
                self._pictures[door] = event.picture
                self._put(topics.picture, event.picture, True)
            case EventType.ANSWERED if visitor:
                name = str((event.data.get("by") or {}).get("display_name") or "?")
                self._answered_by[door] = name
                self._put(topics.answered_by, name, True)
                self._put(topics.event, json.dumps({"event_type": "answered", "call_id": event.call_id,
                                                    "by": name, "at": at}), False)
            case EventType.MISSED:
                self._put(topics.event, json.dumps({"event_type": "missed", "call_id": event.call_id, "at": at,
                                                    "offline": bool(event.data.get("offline"))}), False)
            case EventType.DOOR_ONLINE | EventType.DOOR_OFFLINE:
                self._put(topics.availability, ha.ONLINE if event.type is EventType.DOOR_ONLINE else ha.OFFLINE, True)
            case EventType.DOOR_OPENED if s.doors.get(door) is OpenEntity.LOCK:
                self._unlocked(door, topics, event.data.get("pulse_s") or DEFAULT_PULSE_S)
        if event.type in (EventType.RING, EventType.ANSWERED, EventType.ENDED):
            self._later(self._publish_live(door))

    def _unlocked(self, door: str, topics: DoorTopics, pulse_s: float) -> None:
        """The lock shows UNLOCKED while the strike is energised."""
        old = self._relock.pop(door, None)
        if old is not None:
            old.cancel()
        self._put(topics.lock_state, ha.UNLOCKED, True)

        def relock() -> None:
            self._relock.pop(door, None)
            self._put(topics.lock_state, ha.LOCKED, True)
        self._relock[door] = asyncio.get_running_loop().call_later(pulse_s, relock)

def _call_state(door_id: str, live: list[ServerCall]) -> str:
    """`in_call` while a call of the door is answered, `ringing` while it rings, else `idle`."""
    state = "idle"
    for call in live:
        parties = (call.caller, call.accepted_by) if call.accepted_by else (call.caller,)
        if call.accepted_by is not None and any(p.user_id == door_id for p in parties):
            return "in_call"
        if call.caller.user_id == door_id:
            state = "ringing"
    return state

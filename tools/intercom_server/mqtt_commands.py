"""What Home Assistant asks of the MQTT bridge: opening a door, and its switches (away,
do-not-disturb). An opening is refused unless the installer listed the door with an opening
entity, never taken from a retained message, rate-limited per door, then decided as
`DoorAction.for_integration` decides (the door log, a visitor at the door, the door's own
answer); each attempt's answer is published."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from intercom_protocol.calls import iso

from . import homeassistant as ha
from .availability import RuleBook, SiteRules, parse_resident
from .door_action import DoorAction
from .homeassistant import DoorTopics, OpenEntity
from .limits import FailureWindow
from .mqtt_settings import MqttSettings, MqttStatus
from .records import StoreError, UserKind
from .store import Store

log = logging.getLogger("intercom.server")

Put = Callable[[str, bytes | str, bool], None]
Later = Callable[[Coroutine[Any, Any, None]], None]


class MqttCommands:
    """What Home Assistant asks: an opening (`command`), or a switch (`switch`)."""

    def __init__(self, settings: MqttSettings, status: MqttStatus, door_action: DoorAction, rules: RuleBook,
                 store: Store, put: Put, later: Later, doors: dict[str, str],
                 relock: dict[str, asyncio.TimerHandle]) -> None:
        self.settings, self.status = settings, status
        self.door_action, self.rules, self.store = door_action, rules, store
        self._put, self._later = put, later
        #: The bridge's own: the doors it published, and the locks showing UNLOCKED.
        self._doors, self._relock = doors, relock
        self._opens = FailureWindow(settings.opens_per_minute, 60.0)

    async def switch(self, kind: str, name: str, payload: bytes, retained: bool) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if not text:
            return
        if retained or text not in (ha.ON, ha.OFF):
            log.warning("MQTT: refused %s for %s %s", "a retained command" if retained else f"'{text[:20]}'", kind,
                        name)
            self.status.refused += 1
            return
        on = text == ha.ON
        rules, store = self.rules, self.store
        if kind == "away":
            try:
                await store.users.get_site(name)
            except StoreError:
                log.warning("MQTT: no site '%s' to put away", name)
                return
            current = rules.site(name)
            await rules.set_site(name, SiteRules(on, current.time_zone))
        else:
            user = await store.users.find_user(name)
            if user is None or user.kind != UserKind.RESIDENT:
                log.warning("MQTT: no resident '%s' for do-not-disturb", name)
                return
            await rules.set_resident(name, parse_resident({"do_not_disturb": {"on": on}}, rules.resident(name), time.time()))
        log.info("%s switched %s %s for %s", self.settings.integration, "away" if kind == "away" else
                 "do-not-disturb", "on" if on else "off", name)

    def command(self, door_id: str, payload: bytes, retained: bool) -> None:
        s = self.settings
        if not payload.strip():  # how a retained message is deleted from the broker: not a command
            return
        self.status.commands += 1
        if door_id not in self._doors:
            self._refuse(None, f"a command for '{door_id}', which is not a door here")
            return
        topics = DoorTopics.of(s.base_topic, door_id)
        opening = s.doors.get(door_id, OpenEntity.NONE)
        if retained:
            self._refuse(topics, f"a retained command for {door_id}: a stored command never opens a door")
            return
        if opening is OpenEntity.NONE:
            self._refuse(topics, f"opening {door_id} from MQTT is not turned on (mqtt.doors.{door_id}.open)")
            return
        wants = ha.opens(opening, payload)
        if wants is None:
            self._refuse(topics, f"'{payload[:40].decode('utf-8', 'replace')}' is not a command for the {opening}")
            return
        if wants is False:  # LOCK: the strike locks by itself
            self._put(topics.lock_state, ha.UNLOCKED if door_id in self._relock else ha.LOCKED, True)
            return
        clock = time.monotonic()
        wait = self._opens.blocked_for(door_id, clock)
        if wait > 0:
            self._refuse(topics, f"more than {s.opens_per_minute} attempts to open {door_id} a minute from MQTT; "
                                 f"try again in {wait:.0f} s")
            return
        self._opens.fail(door_id, clock)
        self._later(self._open(door_id, topics))

    async def _open(self, door_id: str, topics: DoorTopics) -> None:
        opening = await self.door_action.for_integration(self.settings.integration, door_id)
        if opening.outcome != "opened":
            self.status.refused += 1
            log.warning("%s could not open %s: %s", self.settings.integration, door_id, opening.message)
            if self.settings.doors.get(door_id) is OpenEntity.LOCK:
                self._put(topics.lock_state, ha.LOCKED, True)
        self._put(topics.open_result, json.dumps({
            "outcome": opening.outcome, "reason": None if opening.outcome == "opened" else opening.message,
            "at": iso(time.time())}), False)

    def _refuse(self, topics: DoorTopics | None, why: str) -> None:
        self.status.refused += 1
        log.warning("MQTT: refused %s", why)
        if topics is not None:
            self._put(topics.open_result, json.dumps({"outcome": "refused", "reason": why, "at": iso(time.time())}),
                      False)

"""What Home Assistant is told over MQTT: its discovery documents and the topics of each door.

Sans-I/O, like the protocol package: the bridge (`mqtt.py`) publishes what these functions
return. One Home Assistant device per door station, made of per-entity discovery documents
(`<prefix>/<component>/<node_id>/<object_id>/config`, retained), with the full key names of
Home Assistant's MQTT integration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: Home Assistant's doorbell `event` entity: the types a door's events are told as.
DOORBELL_EVENTS = ("pressed", "answered", "missed")
CALL_STATES = ("idle", "ringing", "in_call")
ONLINE, OFFLINE = "online", "offline"
#: What the `button` sends, and what the `lock` sends to open (OPEN is its "open" action).
PRESS, UNLOCK, OPEN, LOCK = "PRESS", "UNLOCK", "OPEN", "LOCK"
LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"


class OpenEntity(StrEnum):
    """How a door's opening shows in Home Assistant, where the installer turns it on."""
    NONE = "none"
    BUTTON = "button"
    LOCK = "lock"


def _software() -> str:
    try:
        return version("intercom")
    except PackageNotFoundError:
        return "unknown"


def _object_id(user_or_site_id: str) -> str:
    """Discovery ids allow letters, digits, '_' and '-'; user and site ids also '.' and '@'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", user_or_site_id)


def node_id(door_id: str) -> str:
    return "intercom_" + _object_id(door_id)


@dataclass(frozen=True)
class DoorTopics:
    availability: str
    event: str
    call_state: str
    answered_by: str
    picture: str
    open_command: str
    open_result: str
    lock_state: str

    @classmethod
    def of(cls, base: str, door_id: str) -> DoorTopics:
        root = f"{base}/{door_id}"
        return cls(availability=f"{root}/availability", event=f"{root}/event", call_state=f"{root}/call_state",
                   answered_by=f"{root}/answered_by", picture=f"{root}/picture", open_command=f"{root}/open/set",
                   open_result=f"{root}/open/result", lock_state=f"{root}/lock")


def status_topic(base: str) -> str:
    """The server's own availability: `online`, and `offline` as its last will."""
    return f"{base}/status"


def command_filter(base: str) -> str:
    return f"{base}/+/open/set"


def door_of_command(base: str, topic: str) -> str | None:
    prefix, suffix = f"{base}/", "/open/set"
    if topic.startswith(prefix) and topic.endswith(suffix):
        door = topic[len(prefix):-len(suffix)]
        return door if door and "/" not in door else None
    return None


def discovery(prefix: str, base: str, door_id: str, door_name: str, opening: OpenEntity,
              server_url: str | None = None) -> list[tuple[str, dict[str, Any] | None]]:
    """(topic, document) for each entity of one door; a document of None removes an entity
    (the opening entities the installer did not turn on, so turning one off takes it away)."""
    node = node_id(door_id)
    topics = DoorTopics.of(base, door_id)
    server = [{"topic": status_topic(base), "payload_available": ONLINE, "payload_not_available": OFFLINE}]
    door_and_server = [*server, {"topic": topics.availability, "payload_available": ONLINE,
                                 "payload_not_available": OFFLINE}]
    device: dict[str, Any] = {"identifiers": [node], "name": door_name, "manufacturer": "Intercom",
                              "model": "Door station", "sw_version": _software()}
    if server_url:
        device["configuration_url"] = server_url
    common = {"device": device, "origin": {"name": "intercom-server", "sw_version": _software()},
              "availability": door_and_server, "availability_mode": "all", "qos": 1}

    def entity(component: str, key: str, **config: Any) -> tuple[str, dict[str, Any]]:
        return (f"{prefix}/{component}/{node}/{key}/config",
                {**common, "unique_id": f"{node}_{key}", **config})

    out: list[tuple[str, dict[str, Any] | None]] = [
        entity("event", "doorbell", name="Doorbell", device_class="doorbell", state_topic=topics.event,
               event_types=list(DOORBELL_EVENTS)),
        entity("sensor", "call_state", name="Call", device_class="enum", options=list(CALL_STATES),
               state_topic=topics.call_state, icon="mdi:phone-ring"),
        entity("sensor", "answered_by", name="Answered by", state_topic=topics.answered_by, icon="mdi:account"),
        entity("image", "visitor", name="Visitor", image_topic=topics.picture, content_type="image/jpeg"),
        # Whether the door is online stays readable while it is offline: only the server's
        # own availability applies to it.
        entity("binary_sensor", "connected", name="Connected", device_class="connectivity",
               state_topic=topics.availability, payload_on=ONLINE, payload_off=OFFLINE, availability=server,
               entity_category="diagnostic"),
    ]
    button = entity("button", "open", name="Open door", command_topic=topics.open_command, payload_press=PRESS,
                    icon="mdi:door-open")
    lock = entity("lock", "strike", name="Door", command_topic=topics.open_command, state_topic=topics.lock_state,
                  payload_unlock=UNLOCK, payload_open=OPEN, payload_lock=LOCK, state_locked=LOCKED,
                  state_unlocked=UNLOCKED)
    out.append(button if opening is OpenEntity.BUTTON else (button[0], None))
    out.append(lock if opening is OpenEntity.LOCK else (lock[0], None))
    return out


def opens(opening: OpenEntity, payload: bytes) -> bool | None:
    """Whether a command asks to open (True), to lock (False: nothing to do), or is not one (None)."""
    text = payload.decode("utf-8", "replace").strip()
    if opening is OpenEntity.BUTTON:
        return True if text == PRESS else None
    if opening is OpenEntity.LOCK:
        return True if text in (UNLOCK, OPEN) else False if text == LOCK else None
    return None


# -- a site: away, and each resident's do-not-disturb ------------------------------------------------

ON, OFF = "ON", "OFF"


def site_node(site_id: str) -> str:
    return "intercom_site_" + _object_id(site_id)


def away_topic(base: str, site_id: str) -> str:
    return f"{base}/site/{site_id}/away"


def dnd_topic(base: str, user_id: str) -> str:
    return f"{base}/resident/{user_id}/dnd"


def switch_filters(base: str) -> tuple[str, str]:
    return f"{base}/site/+/away/set", f"{base}/resident/+/dnd/set"


def switch_of_command(base: str, topic: str) -> tuple[str, str] | None:
    """("away", site_id) or ("dnd", user_id) for a switch's command topic."""
    for kind, middle in (("away", "site"), ("dnd", "resident")):
        prefix, suffix = f"{base}/{middle}/", f"/{kind}/set"
        if topic.startswith(prefix) and topic.endswith(suffix):
            name = topic[len(prefix):-len(suffix)]
            if name and "/" not in name:
                return kind, name
    return None


def site_discovery(prefix: str, base: str, site_id: str, site_name: str,
                   residents: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """One Home Assistant device per site: "Away", and a "Do not disturb" switch per resident."""
    node = site_node(site_id)
    common = {"device": {"identifiers": [node], "name": f"Intercom {site_name}", "manufacturer": "Intercom",
                         "model": "Site", "sw_version": _software()},
              "origin": {"name": "intercom-server", "sw_version": _software()},
              "availability": [{"topic": status_topic(base), "payload_available": ONLINE,
                                "payload_not_available": OFFLINE}], "qos": 1,
              "payload_on": ON, "payload_off": OFF, "state_on": ON, "state_off": OFF}
    out = [(f"{prefix}/switch/{node}/away/config",
            {**common, "unique_id": f"{node}_away", "name": "Away", "icon": "mdi:home-export-outline",
             "command_topic": f"{away_topic(base, site_id)}/set", "state_topic": away_topic(base, site_id)})]
    for user_id, name in residents:
        key = "dnd_" + _object_id(user_id)
        out.append((f"{prefix}/switch/{node}/{key}/config",
                    {**common, "unique_id": f"{node}_{key}", "name": f"Do not disturb: {name}", "icon": "mdi:bell-off",
                     "command_topic": f"{dnd_topic(base, user_id)}/set", "state_topic": dnd_topic(base, user_id)}))
    return out

"""The MQTT bridge's settings (read from the YAML by `config.py`), and its status (/healthz)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .homeassistant import OpenEntity


@dataclass
class MqttSettings:
    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    client_id: str = "intercom-server"
    base_topic: str = "intercom"
    discovery_prefix: str = "homeassistant"
    #: The name openings from MQTT carry in the door log and in the door's own log.
    integration: str = "Home Assistant"
    #: Sites whose doors are published; empty for all.
    sites: tuple[str, ...] = ()
    #: Doors whose opening is offered to Home Assistant, and as what.
    doors: dict[str, OpenEntity] = field(default_factory=dict)
    opens_per_minute: int = 4
    #: Home Assistant switches for each site's away mode and each resident's do-not-disturb.
    switches: bool = True
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    #: The web app's address, shown by Home Assistant as each door's configuration page.
    server_url: str | None = None

    def secret(self) -> str | None:
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return self.password


@dataclass
class MqttStatus:
    broker: str
    connected: bool = False
    since: str | None = None
    last_error: str | None = None
    connects: int = 0
    published: int = 0
    #: Events that happened while the broker was away (the state is published again instead).
    dropped: int = 0
    commands: int = 0
    refused: int = 0
    #: Whether this process runs the bridge (in a cluster, one process does).
    leader: bool = False

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

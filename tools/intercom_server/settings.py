"""The server's settings for calls and the services around them (read from the YAML by
`config.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .ice import IceSettings
from .limits import LimitSettings
from .mqtt_settings import MqttSettings
from .push import PushSettings
from .visitor_messages import MessageSettings
from .webhooks import WebhookSettings


@dataclass
class HubSettings:
    ring_timeout_s: float = 30.0
    max_duration_s: float = 3600.0
    #: How long a device may be gone before its ringing or dialing call gives up on it.
    grace_s: float = 10.0
    #: The same for a call that was answered: its media may well be flowing while the
    #: signaling link is down, and the device claims the call back when it returns.
    media_grace_s: float = 60.0
    auth_timeout_s: float = 10.0
    heartbeat_s: float = 10.0
    #: How long a door must stay disconnected before Home Assistant and webhooks hear it is
    #: offline; a door back sooner is not reported at all (`door_presence.py`).
    door_offline_after_s: float = 10.0
    #: A resident may still open the door this long after the call ended (walking to the gate).
    open_door_window_s: float = 30.0
    #: How long the server waits for the door to answer its `action` request.
    door_reply_timeout_s: float = 5.0
    ice: IceSettings = field(default_factory=IceSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    push: PushSettings = field(default_factory=PushSettings)
    #: Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client;
    #: without them, one bad client behind the proxy would throttle everyone.
    trusted_proxies: tuple[str, ...] = ()
    #: Web origins besides the server's own (and public_url's) whose pages may open the WebSocket.
    allowed_origins: tuple[str, ...] = ()
    #: The broker Home Assistant listens on; None: no MQTT.
    mqtt: MqttSettings | None = None
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    messages: MessageSettings = field(default_factory=MessageSettings)
    #: The time zone of a site's quiet hours until the site sets its own.
    time_zone: str = "UTC"
    #: How often the server asks its database whether it answers (see /healthz).
    health_check_s: float = 2.0
    #: The clock do-not-disturb and quiet hours are judged by (tests give their own).
    clock: Callable[[], float] = time.time

"""The server's YAML configuration, validated with the same path-and-line errors as the door's."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from intercom_protocol.yamlconfig import ConfigError, Field, Problem, in_range, load_file

from .availability import RuleError, zone
from .cluster import ClusterSettings
from .database import is_url, redacted
from .homeassistant import OpenEntity
from .ice import IceSettings, TurnSettings
from .limits import LimitSettings
from .mqtt_settings import MqttSettings
from .push import PushSettings
from .records import ID_PATTERN
from .settings import HubSettings
from .state import RECENT_CALLS_S
from .visitor_messages import MessageSettings
from .webhooks import WebhookSettings


def _ice_server(value: Any) -> None:
    urls = value.get("urls") if isinstance(value, dict) else None
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u.split(":")[0] in ("stun", "turn", "turns") for u in urls):
        raise ValueError("needs 'urls': a stun:, turn: or turns: URL or a list of them")
    extra = set(value) - {"urls", "username", "credential"}
    if extra:
        raise ValueError(f"unknown keys {', '.join(sorted(extra))}; an ICE server has urls, username, credential")


def _network(value: Any) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("must be an IP address or network, such as 127.0.0.1 or 10.0.0.0/8") from None


def _turn_urls(value: Any) -> None:
    if not value or not all(isinstance(u, str) and u.split(":")[0] in ("turn", "turns") for u in value):
        raise ValueError("must be turn: or turns: URLs")


def _public_url(value: Any) -> None:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or "#" in value:
        raise ValueError("must be an http:// or https:// URL without a fragment")


def _database(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a file path or a postgresql:// URL")
    if "://" in value and not is_url(value):
        raise ValueError("must be a file path (SQLite) or a postgresql:// URL; no other engine is supported")
    if is_url(value) and not urlsplit(value).hostname and "host=" not in value:
        raise ValueError("a PostgreSQL URL names its host: postgresql://user@host:5432/dbname")


def _redis_url(value: Any) -> None:
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://host:6379/0 URL (rediss:// for TLS)")


def _contact(value: Any) -> None:
    if not isinstance(value, str) or not (value.startswith("mailto:") and "@" in value or value.startswith("https://")):
        raise ValueError("must be a mailto: address or an https:// URL, e.g. mailto:you@example.org")


def _mqtt_doors(value: Any) -> None:
    kinds = ", ".join(str(k) for k in OpenEntity)
    for door, options in value.items():
        if not isinstance(door, str) or not re.fullmatch(ID_PATTERN, door):
            raise ValueError(f"'{door}' is not a door's user id")
        if not isinstance(options, dict) or set(options) - {"open"}:
            raise ValueError(f"{door}: must be a mapping with 'open', e.g. {door}: {{open: button}}")
        if options.get("open", "none") not in kinds.split(", "):
            raise ValueError(f"{door}.open must be one of {kinds}, not {options.get('open')!r}")


def _time_zone(value: Any) -> None:
    try:
        zone(value)
    except RuleError as exc:
        raise ValueError(str(exc)) from None


def _topic(value: Any) -> None:
    if not isinstance(value, str) or not value or any(c in value for c in "#+\0") or value.startswith("/") \
            or value.endswith("/"):
        raise ValueError("must be an MQTT topic without wildcards (+, #) or a leading or trailing '/'")


SCHEMA = {
    "listen": Field(schema={
        "host": Field(str, default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
        "port": Field(int, default=8080, check=in_range(0, 65535)),
    }),
    "public_url": Field(str, check=lambda v: _public_url(v),
                        help="where residents' phones reach this server, e.g. https://door.example.org; used in invite links"),
    "tls": Field(schema={
        "cert": Field(str, required=True, help="PEM certificate chain"),
        "key": Field(str, required=True, help="PEM private key"),
    }, optional_section=True),
    "data_dir": Field(str, default="/var/lib/intercom-server"),
    "database": Field(str, check=lambda v: _database(v),
                      help="the SQLite file (default: intercom.db in data_dir), or a PostgreSQL URL "
                           "postgresql://user@host/dbname for several server processes (docs/cluster.md)"),
    "api_token": Field(str, help="the Platform API's master token; or set INTERCOM_SERVER_API_TOKEN"),
    "heartbeat_s": Field(float, default=10.0, check=in_range(1, 300),
                         help="WebSocket pings: a dead link is found within 1.5 times this"),
    "door_offline_after_s": Field(float, default=10.0, check=in_range(0, 600),
                                  help="how long a door must stay disconnected before Home Assistant and webhooks "
                                       "report it offline; a link back sooner is not reported at all"),
    "trusted_proxies": Field(list, default=[], items=Field(str, check=_network),
                             help="reverse proxies whose X-Forwarded-For names the client, e.g. 127.0.0.1"),
    "allowed_origins": Field(list, default=[], items=Field(str, check=lambda v: _public_url(v)),
                             help="other web origins whose pages may open the WebSocket"),
    "time_zone": Field(str, default="UTC", check=lambda v: _time_zone(v),
                       help="IANA time zone of quiet hours, e.g. Europe/Berlin; a site may set its own"),
    "calls": Field(schema={
        "ring_timeout_s": Field(float, default=30.0, check=in_range(1, 300)),
        "max_duration_s": Field(float, default=3600.0, check=in_range(10, 86400)),
        "grace_s": Field(float, default=10.0, check=in_range(0, 300)),
        "media_grace_s": Field(float, default=60.0, check=in_range(0, 3600),
                               help="how long an answered call waits for a party's lost connection"),
        "open_door_window_s": Field(float, default=30.0, check=in_range(0, RECENT_CALLS_S)),
        "door_reply_timeout_s": Field(float, default=5.0, check=in_range(0.5, 60)),
    }),
    "ice_servers": Field(list, default=[], items=Field(dict, check=_ice_server)),
    "turn": Field(schema={
        "urls": Field(list, required=True, items=Field(str), check=_turn_urls),
        "shared_secret": Field(str, required=True, help="coturn's static-auth-secret (use-auth-secret mode)"),
        "ttl_s": Field(float, default=86400.0, check=in_range(60, 7 * 86400)),
    }, optional_section=True),
    "push": Field(schema={
        "vapid_private_key": Field(str, help="Web Push's VAPID private key (base64url); by default one is made "
                                             "on first start and kept in data_dir/vapid_private.pem"),
        "contact": Field(str, check=lambda v: _contact(v),
                         help="mailto: or https: address push services may write to about this server"),
        "subscriptions_per_user": Field(int, default=10, check=in_range(1, 100)),
        "local_hosts": Field(list, default=[], items=Field(str),
                             help="push services on your own network (a self-hosted ntfy), which may be http"),
        "timeout_s": Field(float, default=10.0, check=in_range(1, 120)),
    }),
    "cluster": Field(schema={
        "redis": Field(str, required=True, check=lambda v: _redis_url(v),
                       help="redis://host:6379/0: presence, calls and timers shared by the processes"),
        "name": Field(str, help="this process's name in the cluster; default: host name and process id"),
    }, optional_section=True),
    "mqtt": Field(schema={
        "host": Field(str, required=True, help="the MQTT broker, e.g. the Mosquitto add-on's address"),
        "port": Field(int, default=None, check=in_range(1, 65535), help="default 1883, or 8883 with tls"),
        "tls": Field(bool, default=False),
        "ca_file": Field(str, help="PEM file of the CA that signed the broker's certificate (tls)"),
        "username": Field(str),
        "password": Field(str),
        "password_file": Field(str, help="a file holding the password (preferred)"),
        "client_id": Field(str, default="intercom-server"),
        "base_topic": Field(str, default="intercom", check=_topic),
        "discovery_prefix": Field(str, default="homeassistant", check=_topic),
        "integration": Field(str, default="Home Assistant",
                             help="the name openings from MQTT carry in the door log"),
        "sites": Field(list, default=[], items=Field(str), help="sites whose doors are published; all by default"),
        "doors": Field(dict, default={}, check=_mqtt_doors,
                       help="doors Home Assistant may open, and as what: {front_door: {open: lock}}"),
        "opens_per_minute": Field(int, default=4, check=in_range(1, 60)),
        "switches": Field(bool, default=True,
                          help="Home Assistant switches for each site's away mode and each resident's do-not-disturb"),
        "keepalive_s": Field(int, default=30, check=in_range(5, 3600)),
        "reconnect_max_s": Field(float, default=60.0, check=in_range(0.1, 3600),
                                 help="the longest wait between attempts to reach the broker"),
    }, optional_section=True),
    "messages": Field(schema={
        "directory": Field(str, help="where visitors' messages are kept; default: messages in data_dir. In a "
                                     "cluster, one directory every process shares (docs/cluster.md)"),
        "max_mb": Field(float, default=20.0, check=in_range(0.1, 1000), help="the largest message a door may send"),
        "keep_days": Field(float, default=30.0, check=in_range(0.01, 3650), help="older messages are removed"),
        "max_total_mb": Field(float, default=2000.0, check=in_range(1, 10_000_000),
                              help="beyond, the oldest messages are removed"),
    }),
    "webhooks": Field(schema={
        "timeout_s": Field(float, default=10.0, check=in_range(1, 120), help="per attempt"),
        "retry_for_s": Field(float, default=600.0, check=in_range(0, 86400),
                             help="how long one event is tried again before it counts as failed"),
        "disable_after": Field(int, default=5, check=in_range(1, 1000),
                               help="deliveries failed in a row before a receiver is switched off"),
    }),
    "limits": Field(schema={
        "messages_per_s": Field(float, default=20.0, check=in_range(1, 10_000)),
        "message_burst": Field(int, default=60, check=in_range(1, 100_000)),
        "auth_failures_per_user": Field(int, default=10, check=in_range(1, 10_000)),
        "auth_failures_per_address": Field(int, default=30, check=in_range(1, 100_000)),
        "auth_window_s": Field(float, default=60.0, check=in_range(1, 86400)),
        "connections_per_user": Field(int, default=10, check=in_range(1, 10_000)),
        "send_queue": Field(int, default=512, check=in_range(16, 100_000)),
    }),
}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("/var/lib/intercom-server")
    api_token: str | None = None
    #: An SQLite file, or a postgresql:// URL.
    database: str | None = None
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hub: HubSettings = field(default_factory=HubSettings)
    #: One of several processes sharing the database and a Redis; None: the only one.
    cluster: ClusterSettings | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> ServerConfig:
        raw = load_file(path, SCHEMA)
        calls = raw["calls"]
        turn = raw.get("turn")
        tls = raw.get("tls")
        push = raw["push"]
        mqtt = raw.get("mqtt")
        cluster = raw.get("cluster")
        if cluster and not (raw["database"] and is_url(raw["database"])):
            raise ConfigError(str(path), [Problem("cluster", None, "a cluster's processes share one database: "
                                                  "set database: to a postgresql:// URL")])
        return cls(
            cluster=ClusterSettings(redis_url=cluster["redis"], name=cluster["name"] or "") if cluster else None,
            host=raw["listen"]["host"], port=raw["listen"]["port"], data_dir=Path(raw["data_dir"]),
            api_token=raw["api_token"], database=raw["database"] or None,
            public_url=raw["public_url"],
            tls_cert=Path(tls["cert"]) if tls else None, tls_key=Path(tls["key"]) if tls else None,
            hub=HubSettings(
                ring_timeout_s=calls["ring_timeout_s"], max_duration_s=calls["max_duration_s"],
                grace_s=calls["grace_s"], media_grace_s=calls["media_grace_s"], open_door_window_s=calls["open_door_window_s"],
                door_reply_timeout_s=calls["door_reply_timeout_s"], heartbeat_s=raw["heartbeat_s"],
                door_offline_after_s=raw["door_offline_after_s"],
                ice=IceSettings(static=[dict(s) for s in raw["ice_servers"]],
                                turn=TurnSettings(**turn) if turn else None),
                limits=LimitSettings(**raw["limits"]),
                push=PushSettings(vapid_private_key=push["vapid_private_key"],
                                  contact=push["contact"] or _default_contact(raw["public_url"]),
                                  subscriptions_per_user=push["subscriptions_per_user"],
                                  local_hosts=tuple(push["local_hosts"]), timeout_s=push["timeout_s"]),
                trusted_proxies=tuple(raw["trusted_proxies"]), allowed_origins=tuple(raw["allowed_origins"]),
                time_zone=raw["time_zone"],
                mqtt=_mqtt_settings(mqtt, raw["public_url"]) if mqtt else None,
                webhooks=WebhookSettings(**raw["webhooks"]),
                messages=MessageSettings(directory=Path(raw["messages"]["directory"] or Path(raw["data_dir"]) / "messages"),
                                         max_bytes=int(raw["messages"]["max_mb"] * 1024 * 1024),
                                         keep_days=raw["messages"]["keep_days"],
                                         max_total_mb=raw["messages"]["max_total_mb"])))

    @property
    def db_target(self) -> str | Path:
        """What `Store.open` takes: a PostgreSQL URL, else the SQLite file."""
        if self.database and is_url(self.database):
            return self.database
        return Path(self.database) if self.database else self.data_dir / "intercom.db"

    @property
    def db_name(self) -> str:
        """The database as a log line may name it (no password)."""
        target = self.db_target
        return redacted(target) if isinstance(target, str) else str(target)

    @property
    def base_url(self) -> str:
        """Where the web app is: the configured public URL, else the listening address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return self.listen_url(self.port)

    def listen_url(self, port: int) -> str:
        """The address a phone on the same network can use when the server listens on `port`:
        for 0.0.0.0 (every interface), this machine's address on its network."""
        scheme = "https" if self.tls_cert else "http"
        host = lan_address() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def listen_url_file(self) -> Path:
        """Written by `serve` at start, read by `invite` and `door pair`."""
        return self.data_dir / "listen_url"

    def resolve_api_token(self) -> tuple[str, str]:
        """The master Api-Token and where it came from; made and kept (0600) on first start."""
        if self.api_token:
            return self.api_token, "the config file"
        env = os.environ.get("INTERCOM_SERVER_API_TOKEN")
        if env:
            return env, "INTERCOM_SERVER_API_TOKEN"
        path = self.data_dir / "api_token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip(), str(path)


def _mqtt_settings(raw: dict[str, Any], public_url: str | None) -> MqttSettings:
    if raw["password"] and raw["password_file"]:
        raise ConfigError("mqtt", [Problem("mqtt.password", None, "give password or password_file, not both")])
    return MqttSettings(
        host=raw["host"], port=raw["port"] or (8883 if raw["tls"] else 1883), tls=raw["tls"], ca_file=raw["ca_file"],
        username=raw["username"], password=raw["password"], password_file=raw["password_file"],
        client_id=raw["client_id"], base_topic=raw["base_topic"], discovery_prefix=raw["discovery_prefix"],
        integration=raw["integration"], sites=tuple(raw["sites"]),
        doors={door: OpenEntity(options.get("open", "none")) for door, options in raw["doors"].items()},
        opens_per_minute=raw["opens_per_minute"], switches=raw["switches"], keepalive_s=raw["keepalive_s"],
        reconnect_max_s=raw["reconnect_max_s"], reconnect_min_s=min(1.0, raw["reconnect_max_s"]),
        server_url=public_url)


def lan_address() -> str:
    """This machine's address toward the rest of the network: the source address the kernel
    would pick for a packet to a public address (a UDP "connect" sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _default_contact(public_url: str | None) -> str:
    """VAPID's `sub`: the server's own https address, where it has one."""
    if public_url and public_url.startswith("https://"):
        return public_url.rstrip("/")
    return PushSettings.contact

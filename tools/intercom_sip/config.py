"""The gateway's YAML, with the same path-and-line errors as the door's and the server's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercom_protocol.yamlconfig import ConfigError, Field, Problem, in_range, load_file, nonempty, one_of

from .baresip_engine import CODECS
from .engine import AccountSettings
from .phone import GatewaySettings, PhoneSettings

#: A target that is a phone number (not a FritzBox `**6xx` or a PBX extension): its answer
#: counts only once its key is pressed, or a voicemail would take the visitor's call.
PHONE_NUMBER = re.compile(r"^(\+|0)[0-9]{4,}$")
DTMF = re.compile(r"^[0-9*#A-D]+$")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _ws_url(value: Any) -> None:
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("must be a ws:// or wss:// URL, such as ws://127.0.0.1:8080/v1/ws")


def _dtmf(value: Any) -> None:
    if not DTMF.match(str(value)):
        raise ValueError("must be DTMF keys: 0-9, *, # (and A-D)")


def _name(value: Any) -> None:
    if not NAME.match(value):
        raise ValueError("must be lower-case letters, digits, - or _ (at most 32): it names the phone's device, sip-<name>")


def _codecs(value: Any) -> None:
    unknown = [c for c in value if c not in CODECS]
    if unknown or not value:
        raise ValueError(f"must list some of {', '.join(CODECS)}, best first")


def _host_port(value: Any) -> None:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, such as 0.0.0.0:5060")


SECRET = "a file holding it (preferred), or the value itself"
PHONE = {
    "name": Field(str, required=True, check=_name),
    "resident": Field(str, required=True, check=nonempty, help="the user id of the resident this phone belongs to"),
    "access_token": Field(str, check=nonempty),
    "access_token_file": Field(str, check=nonempty, help="the resident's access token for this phone (preferred)"),
    "dial": Field(str, required=True, help='in quotes: "**610", "620", "sip:desk@pbx.lan" or "+4930123456"'),
    "answer_key": Field(str, check=_dtmf, help='in quotes: the key that takes the call (default "1" for phone numbers)'),
    "callers": Field(list, default=[], items=Field(str, check=nonempty, help='in quotes: "611" or "sip:611@fritz.box"'),
                     help="SIP identities that may call the door as this phone"),
}
SCHEMA = {
    "server": Field(required=True, schema={
        "url": Field(str, required=True, check=_ws_url, help="the signaling server, e.g. ws://127.0.0.1:8080/v1/ws"),
        "ca_file": Field(str, check=nonempty, help="for wss:// with your own CA"),
    }),
    "sip": Field(required=True, schema={
        "user": Field(str, required=True, check=nonempty, help="in quotes: the gateway's SIP user (FritzBox: its IP phone's user name)"),
        "domain": Field(str, required=True, check=nonempty, help="the registrar's domain: fritz.box, pbx.lan:5060"),
        "password": Field(str, help=SECRET),
        "password_file": Field(str, check=nonempty),
        "registrar": Field(str, check=nonempty, help="an outbound proxy, when it is not the domain"),
        "transport": Field(str, default="udp", check=one_of("udp", "tcp", "tls")),
        "register_every_s": Field(int, default=600, check=in_range(0, 86400), help="0: never register (a trunk by IP)"),
        "retry_s": Field(float, default=30.0, check=in_range(0.1, 3600), help="how soon a failed registration is tried again"),
        "codecs": Field(list, default=["g722", "pcmu", "pcma", "opus"], check=_codecs),
        "srtp": Field(str, default="optional", check=one_of("off", "optional", "mandatory")),
        "dtmf": Field(str, default="rtpevent", check=one_of("rtpevent", "info", "auto")),
        "listen": Field(str, check=_host_port, help="where SIP is received, e.g. 0.0.0.0:5060"),
        "interface": Field(str, check=nonempty, help="the local address for SIP and RTP, e.g. 192.168.178.20"),
    }),
    "door": Field(str, check=nonempty, help="the door an allowed caller looks at (its user id)"),
    "open_code": Field(str, check=_dtmf, help='in quotes: the keys that open the door during an answered call, e.g. "*1"'),
    "phones": Field(list, required=True, items=Field(dict, schema=PHONE)),
    "http": Field(schema={
        "listen": Field(str, default="127.0.0.1:8091", check=_host_port, help="status and the visitor's snapshot"),
        "snapshot_key": Field(str, help=SECRET),
        "snapshot_key_file": Field(str, check=nonempty),
    }),
}


@dataclass(frozen=True)
class SipConfig:
    account: AccountSettings
    gateway: GatewaySettings
    phones: tuple[PhoneSettings, ...]
    retry_s: float
    http_listen: tuple[str, int]
    snapshot_key: str | None

    @classmethod
    def from_file(cls, path: str | Path) -> SipConfig:
        data = load_file(path, SCHEMA)
        problems: list[Problem] = []

        def secret(section: dict[str, Any], key: str, where: str, required: bool) -> str | None:
            if section.get(f"{key}_file"):
                try:
                    return Path(section[f"{key}_file"]).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problems.append(Problem(f"{where}.{key}_file", None, f"cannot read: {exc.strerror}"))
                    return None
            if section.get(key) is None and required:
                problems.append(Problem(f"{where}.{key}", None, f"is required ({key} or {key}_file)"))
            return section.get(key)

        sip = data["sip"]
        password = secret(sip, "password", "sip", required=False) or ""
        phones = []
        names = set()
        for i, p in enumerate(data["phones"]):
            where = f"phones[{i}]"
            token = secret(p, "access_token", where, required=True) or ""
            if p["name"] in names:
                problems.append(Problem(f"{where}.name", None, f"'{p['name']}' names two phones"))
            names.add(p["name"])
            target = p["dial"]
            answer_key = p.get("answer_key") or ("1" if PHONE_NUMBER.match(target) else None)
            phones.append(PhoneSettings(p["name"], p["resident"], token, target, answer_key, tuple(p["callers"])))
        if not phones:
            problems.append(Problem("phones", None, "must list at least one phone"))
        if any(p.callers for p in phones) and not data.get("door"):
            problems.append(Problem("door", None, "is required when a phone has callers: the door they look at"))
        http = data["http"]
        key = secret(http, "snapshot_key", "http", required=False)
        if key is not None and len(key) < 16:
            problems.append(Problem("http.snapshot_key", None, "must be at least 16 characters: it is the only lock on the picture"))
        if problems:
            raise ConfigError(str(path), problems)
        account = AccountSettings(
            user=sip["user"], domain=sip["domain"], password=password, registrar=sip.get("registrar"),
            transport=sip["transport"], reg_interval_s=sip["register_every_s"], codecs=tuple(sip["codecs"]),
            srtp=sip["srtp"], dtmf=sip["dtmf"], listen=sip.get("listen"), interface=sip.get("interface"))
        host, _, port = http["listen"].rpartition(":")
        return cls(account, GatewaySettings(data["server"]["url"], data["server"].get("ca_file"), data.get("door"),
                                            data.get("open_code")),
                   tuple(phones), sip["retry_s"], (host, int(port)), key)

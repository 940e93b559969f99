"""The door station's YAML configuration: one file the installer owns.

Every key is documented in config/intercom.example.yaml. Errors name the key path and line
(see intercom.core.yamlconfig); nothing starts with a config that has any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.yamlconfig import ConfigError, Field, Problem, in_range, load_file, nonempty, one_of

PIN_BACKENDS = ("lgpio", "rpigpio", "pigpio", "native", "mock")


def _ws_url(value: Any) -> None:
    if not value.startswith(("ws://", "wss://")):
        raise ValueError(f"must be a ws:// or wss:// URL such as wss://intercom.example.org/v1/ws, not {value!r}")


def _pin(value: Any) -> None:
    if isinstance(value, int) and not 0 <= value <= 53:
        raise ValueError(f"GPIO number must be between 0 and 53, not {value}")


def _alsa_device(value: Any) -> None:
    if not value.strip():
        raise ValueError("must name an ALSA device such as default, hw:1,0 or null")


_ALSA_HELP = 'an ALSA PCM name; write "null" in quotes for the silent device'

PIN = (int, str)

SCHEMA: dict[str, Field] = {
    "server": Field(required=True, schema={
        "url": Field(str, required=True, check=_ws_url, help="the signaling server, e.g. ws://127.0.0.1:8080/v1/ws"),
        "user_id": Field(str, required=True, check=nonempty, help="this door station's user id on the server"),
        "access_token": Field(str, check=nonempty),
        "access_token_file": Field(str, check=nonempty, help="a file holding the access token (preferred)"),
        "device_id": Field(str, default="door", check=nonempty),
    }),
    "hardware": Field(schema={
        "pins": Field(schema={
            "backend": Field(str, default="lgpio", check=one_of(*PIN_BACKENDS)),
            "bell_button": Field(PIN, required=True, check=_pin),
            "bell_pull_up": Field(bool, default=True, help="true when the button connects the pin to ground"),
            "bell_bounce_s": Field(float, default=0.05, check=in_range(0, 1)),
            "status_led": Field(PIN, check=_pin),
            "status_led_active_high": Field(bool, default=True),
        }),
        "camera": Field(schema={
            "backend": Field(str, default="test_pattern", check=one_of("test_pattern")),
            "width": Field(int, default=640, check=in_range(64, 1920)),
            "height": Field(int, default=480, check=in_range(48, 1080)),
            "fps": Field(float, default=15.0, check=in_range(1, 60)),
        }),
        "microphone": Field(schema={
            "backend": Field(str, default="alsa", check=one_of("alsa", "tone")),
            "device": Field(str, default="default", check=_alsa_device, help=_ALSA_HELP),
        }),
        "speaker": Field(schema={
            "device": Field(str, default="default", check=_alsa_device, help=_ALSA_HELP),
        }),
    }),
    "calls": Field(required=True, schema={
        "ring_groups": Field(list, required=True, check=nonempty, items=Field(dict, schema={
            "residents": Field(list, required=True, check=nonempty, items=Field(str, check=nonempty)),
            "timeout_s": Field(float, default=30.0, check=in_range(1, 300)),
        })),
    }),
    "control": Field(schema={
        "socket": Field(str, default="/run/intercom/control.sock", check=nonempty),
    }),
}


@dataclass(frozen=True)
class RingGroup:
    residents: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class DoorConfig:
    server_url: str
    user_id: str
    access_token: str
    device_id: str
    pins: dict[str, Any]
    camera: dict[str, Any]
    microphone: dict[str, Any]
    speaker_device: str
    ring_groups: tuple[RingGroup, ...]
    control_socket: Path
    source: str = "<config>"


def load(path: str | Path) -> DoorConfig:
    raw = load_file(path, SCHEMA)
    return _build(raw, Path(path))


def _build(raw: dict[str, Any], path: Path) -> DoorConfig:
    server = raw["server"]
    problems: list[Problem] = []
    token = server["access_token"]
    if token and server["access_token_file"]:
        problems.append(Problem("server", None, "give access_token or access_token_file, not both"))
    elif server["access_token_file"]:
        token_path = (path.parent / server["access_token_file"]).resolve()
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            problems.append(Problem("server.access_token_file", None, f"cannot read {token_path}: {exc.strerror}"))
    elif not token:
        problems.append(Problem("server.access_token", None, "is required (or access_token_file)"))
    if problems:
        raise ConfigError(str(path), problems)
    hw = raw["hardware"]
    return DoorConfig(
        server_url=server["url"], user_id=server["user_id"], access_token=token or "", device_id=server["device_id"],
        pins=hw["pins"], camera=hw["camera"], microphone=hw["microphone"], speaker_device=hw["speaker"]["device"],
        ring_groups=tuple(RingGroup(tuple(g["residents"]), g["timeout_s"]) for g in raw["calls"]["ring_groups"]),
        control_socket=(path.parent / raw["control"]["socket"]).resolve(), source=str(path))

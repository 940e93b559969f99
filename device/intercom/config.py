"""The door station's YAML configuration: one file the installer owns.

Every key is documented in config/intercom.example.yaml. Errors name the key path and line
(see intercom_protocol.yamlconfig); nothing starts with a config that has any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from intercom_protocol.door import DoorRules, QuickReply, RingGroup
from intercom_protocol.messages import MAX_QUICK_REPLIES, MAX_REPLY_LABEL, QUICK_REPLY_ID
from intercom_protocol.yamlconfig import ConfigError, Field, Problem, in_range, load_file, nonempty, one_of

from .nvr import settings as nvr

DEFAULT_SOCKET = "/run/intercom/control.sock"
#: systemd's StateDirectory=intercom: kept presses (and, by default, visitors' messages) live here.
DEFAULT_STATE_DIR = "/var/lib/intercom"

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
CAMERA_BACKENDS = ("test_pattern", "picamera2", "v4l2")
SITE_RESIDENTS = "site_residents"


def _even_in(low: int, high: int) -> Any:
    bounds = in_range(low, high)

    def check(value: Any) -> None:
        bounds(value)
        if value % 4:
            raise ValueError(f"must be a multiple of 4 (the encoder's blocks), not {value}")
    return check


def _callers(value: Any) -> None:
    if isinstance(value, str) and value != SITE_RESIDENTS:
        raise ValueError(f"must be {SITE_RESIDENTS} or a list of user ids, not {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
        raise ValueError("must list user ids (strings)")

def _reply_id(value: Any) -> None:
    if not QUICK_REPLY_ID.match(value):
        raise ValueError(f"{value!r} must be 1 to 32 of a-z, 0-9, _ or -")


def _reply_label(value: Any) -> None:
    if not 0 < len(value.strip()) <= MAX_REPLY_LABEL:
        raise ValueError(f"must be 1 to {MAX_REPLY_LABEL} characters")


def _quick_replies(value: Any) -> None:
    if len(value) > MAX_QUICK_REPLIES:
        raise ValueError(f"at most {MAX_QUICK_REPLIES} quick replies")
    ids = [r.get("id") for r in value if isinstance(r, dict)]
    if len(set(ids)) != len(ids):
        raise ValueError("two quick replies have the same id")


SCHEMA: dict[str, Field] = {
    "server": Field(required=True, schema={
        "url": Field(str, required=True, check=_ws_url, help="the signaling server, e.g. ws://127.0.0.1:8080/v1/ws"),
        "user_id": Field(str, required=True, check=nonempty, help="this door station's user id on the server"),
        "access_token": Field(str, check=nonempty),
        "access_token_file": Field(str, check=nonempty, help="a file holding the access token (preferred)"),
        "device_id": Field(str, default="door", check=nonempty),
        "ca_file": Field(str, check=nonempty,
                         help="PEM file of the CA that signed the server's certificate (wss:// with a private CA)"),
    }),
    "hardware": Field(schema={
        "pins": Field(schema={
            "backend": Field(str, default="lgpio", check=one_of(*PIN_BACKENDS)),
            "bell_button": Field(PIN, required=True, check=_pin),
            "bell_pull_up": Field(bool, default=True, help="true when the button connects the pin to ground"),
            "bell_bounce_s": Field(float, default=0.05, check=in_range(0, 1)),
            "status_led": Field(PIN, check=_pin),
            "status_led_active_high": Field(bool, default=True),
            "backlight_led": Field(PIN, check=_pin, help="the bell button's own light"),
            "backlight_active_high": Field(bool, default=True),
            "relay": Field(PIN, check=_pin, help="the door strike's relay; without it the door cannot be opened"),
            "relay_active_high": Field(bool, default=True),
            "relay_pulse_s": Field(float, default=3.0, check=in_range(0.1, 30)),
        }),
        "camera": Field(schema={
            "backend": Field(str, default="test_pattern", check=one_of(*CAMERA_BACKENDS)),
            "width": Field(int, default=640, check=_even_in(64, 1920)),
            "height": Field(int, default=480, check=_even_in(48, 1080)),
            "fps": Field(float, default=15.0, check=in_range(1, 60)),
            "bitrate": Field(int, default=1_000_000, check=in_range(100_000, 10_000_000), help="H.264 bits per second"),
            "iperiod": Field(int, default=30, check=in_range(1, 600), help="frames between scheduled keyframes"),
            "device": Field(str, default="/dev/video0", check=nonempty, help="v4l2 only"),
            "format": Field(str, default="v4l2", check=nonempty, help="v4l2 only: the FFmpeg input format"),
            "input_format": Field(str, default="h264", help="v4l2 only: ask the camera for this pixel format"),
            "encoding": Field(str, default="passthrough", check=one_of("passthrough", "vp8", "h264"),
                              help="passthrough: the camera's H.264 as is; vp8/h264: encoded again for each call"),
        }),
        "microphone": Field(schema={
            "backend": Field(str, default="alsa", check=one_of("alsa", "tone")),
            "device": Field(str, default="default", check=_alsa_device, help=_ALSA_HELP),
            "echo_cancellation": Field(bool, default=True),
            "noise_suppression": Field(bool, default=True),
        }),
        "speaker": Field(schema={
            "device": Field(str, default="default", check=_alsa_device, help=_ALSA_HELP),
            "tone_volume": Field(float, default=0.5, check=in_range(0, 1)),
        }),
    }),
    "calls": Field(required=True, schema={
        "ring_groups": Field(list, required=True, check=nonempty, items=Field(dict, schema={
            "residents": Field(list, required=True, check=nonempty, items=Field(str, check=nonempty)),
            "timeout_s": Field(float, default=30.0, check=in_range(1, 300)),
        })),
        "auto_answer": Field(schema={
            "callers": Field((str, list), default=SITE_RESIDENTS, check=_callers,
                             help=f"{SITE_RESIDENTS}, or a list of user ids ([] for nobody)"),
            "announce": Field(bool, default=True, help="play a tone at the door when a resident looks outside"),
        }),
        "max_call_s": Field(float, default=180.0, check=in_range(10, 3600)),
        "warning_before_s": Field(float, default=15.0, check=in_range(0, 600)),
        "quick_replies": Field(list, default=[], check=_quick_replies, items=Field(dict, schema={
            "id": Field(str, required=True, check=_reply_id, help="a-z, 0-9, _ or -, e.g. coming"),
            "label": Field(str, required=True, check=_reply_label, help="what the resident taps"),
            "clip": Field(str, required=True, check=nonempty,
                          help="the audio file the door plays (WAV, FLAC, Ogg, MP3...)"),
            "ends_call": Field(bool, default=False,
                               help="true: the reply answers the visitor and the other phones stop ringing"),
        })),
        "visitor_messages": Field(schema={
            "enabled": Field(bool, default=False, help="record a message when nobody can answer"),
            "max_s": Field(float, default=20.0, check=in_range(3, 120), help="the longest message"),
            "greeting": Field(str, check=nonempty, help="a clip saying nobody can answer (default: a tone)"),
            "spool_dir": Field(str, default="/var/lib/intercom/messages", check=nonempty,
                               help="where messages wait until the server has them"),
            "spool_max_mb": Field(float, default=200.0, check=in_range(1, 100_000)),
        }),
    }),
    "control": Field(schema={
        "socket": Field(str, default=DEFAULT_SOCKET, check=nonempty),
    }),
    "rtsp": nvr.SCHEMA,
    "state_dir": Field(str, default=DEFAULT_STATE_DIR, check=nonempty,
                       help="what the door keeps for the server across restarts: presses made while it was away"),
}


@dataclass(frozen=True)
class MessageSettings:
    """Visitor messages (`calls.visitor_messages`), when enabled."""
    max_s: float
    greeting: str | None
    spool_dir: Path
    spool_max_bytes: int


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
    auto_answer: tuple[str, ...] | None = None  # None: every resident of the site
    announce: bool = True
    max_call_s: float = 180.0
    warning_before_s: float = 15.0
    tone_volume: float = 0.5
    source: str = "<config>"
    ca_file: str | None = None
    quick_replies: tuple[QuickReply, ...] = ()
    messages: MessageSettings | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    #: RTSP, ONVIF and snapshots for NVRs (`rtsp:`); None when the section is absent.
    rtsp: nvr.NvrSettings | None = None

    @property
    def rules(self) -> DoorRules:
        """What the call policy applies."""
        return DoorRules(self.ring_groups, self.auto_answer, self.announce, self.max_call_s, self.warning_before_s,
                         self.quick_replies, visitor_messages=self.messages is not None)


def control_socket_of(path: str | Path) -> Path:
    """Only `control.socket`, for `intercom ctl`, read without checking the rest of the file:
    the daemon's token file is not readable by every user who may press the bell from a shell,
    and need not be."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return Path(DEFAULT_SOCKET)
    control = raw.get("control") if isinstance(raw, dict) else None
    socket = control.get("socket") if isinstance(control, dict) else None
    return (path.parent / socket).resolve() if isinstance(socket, str) and socket else Path(DEFAULT_SOCKET)


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
            mode = token_path.stat().st_mode
        except OSError as exc:
            problems.append(Problem("server.access_token_file", None, f"cannot read {token_path}: {exc.strerror}"))
        else:
            if not token:
                problems.append(Problem("server.access_token_file", None,
                                        f"{token_path} is empty; write the door's access token into it"))
            elif mode & 0o077:
                problems.append(Problem("server.access_token_file", None,
                                        f"{token_path} can be read by other users (mode {mode & 0o777:o}); "
                                        f"run: chmod 600 {token_path}"))
    elif not token:
        problems.append(Problem("server.access_token", None, "is required (or access_token_file)"))
    ca_file = None
    if server["ca_file"]:
        ca_path = (path.parent / server["ca_file"]).resolve()
        if not ca_path.is_file():
            problems.append(Problem("server.ca_file", None, f"{ca_path} is not a readable file"))
        elif not server["url"].startswith("wss://"):
            problems.append(Problem("server.ca_file", None, "is for wss:// URLs; server.url is ws://"))
        ca_file = str(ca_path)
    if problems:
        raise ConfigError(str(path), problems)
    hw = raw["hardware"]
    calls = raw["calls"]
    if calls["warning_before_s"] >= calls["max_call_s"]:
        raise ConfigError(str(path), [Problem("calls.warning_before_s", None, "must be shorter than calls.max_call_s")])
    if hw["camera"]["backend"] == "picamera2" and hw["camera"]["encoding"] != "passthrough":
        raise ConfigError(str(path), [Problem("hardware.camera.encoding", None,
                                              "picamera2 sends its hardware encoder's H.264: use passthrough")])
    replies = []
    for i, reply in enumerate(calls["quick_replies"]):
        clip = (path.parent / reply["clip"]).resolve()
        if not clip.is_file():
            problems.append(Problem(f"calls.quick_replies[{i}].clip", None, f"{clip} is not a readable file"))
        replies.append(QuickReply(reply["id"], reply["label"].strip(), str(clip), reply["ends_call"]))
    vm = calls["visitor_messages"]
    messages = None
    if vm["enabled"]:
        greeting = None
        if vm["greeting"]:
            greeting_path = (path.parent / vm["greeting"]).resolve()
            if not greeting_path.is_file():
                problems.append(Problem("calls.visitor_messages.greeting", None, f"{greeting_path} is not a readable file"))
            greeting = str(greeting_path)
        messages = MessageSettings(vm["max_s"], greeting, (path.parent / vm["spool_dir"]).resolve(),
                                   int(vm["spool_max_mb"] * 1024 * 1024))
    rtsp, rtsp_problems = nvr.build(raw["rtsp"], path.parent, hw["camera"], hw["microphone"])
    problems += rtsp_problems
    if problems:
        raise ConfigError(str(path), problems)
    callers = calls["auto_answer"]["callers"]
    return DoorConfig(
        server_url=server["url"], user_id=server["user_id"], access_token=token or "", device_id=server["device_id"],
        pins=hw["pins"], camera=hw["camera"], microphone=hw["microphone"], speaker_device=hw["speaker"]["device"],
        ring_groups=tuple(RingGroup(tuple(g["residents"]), g["timeout_s"]) for g in raw["calls"]["ring_groups"]),
        control_socket=(path.parent / raw["control"]["socket"]).resolve(), source=str(path),
        auto_answer=None if callers == SITE_RESIDENTS else tuple(callers),
        announce=calls["auto_answer"]["announce"], max_call_s=calls["max_call_s"],
        warning_before_s=calls["warning_before_s"], tone_volume=hw["speaker"]["tone_volume"], ca_file=ca_file,
        quick_replies=tuple(replies), messages=messages, state_dir=(path.parent / raw["state_dir"]).resolve(),
        rtsp=rtsp)

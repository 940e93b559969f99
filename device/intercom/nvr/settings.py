"""The `rtsp:` section of the door's YAML and the accounts file it names.

Passwords live in a file of their own (mode 0600), never in the YAML, which installers paste
into forums. They are kept in clear because the two protocols NVRs speak need them so: RTSP
Digest and WS-Security's PasswordDigest both hash the password with a challenge, which no
stored hash of ours can answer. Who may talk back is policy, so it is in the YAML, by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercom_protocol.yamlconfig import Field, Problem, in_range, nonempty, one_of

#: What NVRs and go2rtc expect of a camera, and what ONVIF clients try first.
DEFAULT_RTSP_PORT = 8554
DEFAULT_ONVIF_PORT = 8000
#: The stream's path: rtsp://door:8554/door
STREAM_PATH = "/door"
AUDIO_CODECS = ("off", "opus", "pcmu")
MIN_PASSWORD = 8
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


def _names(value: Any) -> None:
    if not all(isinstance(v, str) and _NAME.match(v) for v in value):
        raise ValueError("must list account names from the accounts file")


SCHEMA = Field(optional_section=True, schema={
    "port": Field(int, default=DEFAULT_RTSP_PORT, check=in_range(1, 65535), help="the RTSP port"),
    "onvif_port": Field(int, default=DEFAULT_ONVIF_PORT, check=in_range(0, 65535),
                        help="ONVIF and /snapshot.jpg over HTTP; 0 turns them off"),
    "listen": Field(str, default="0.0.0.0", check=nonempty, help="the address both listen on"),
    "accounts_file": Field(str, required=True, check=nonempty,
                           help="a file (mode 0600) of name:password lines, one per NVR or dashboard"),
    "audio": Field(str, default="off", check=one_of(*AUDIO_CODECS),
                   help="the microphone to viewers: off (the default), opus or pcmu"),
    "talk": Field(list, default=[], check=_names,
                  help="accounts that may talk to the visitor through the door's speaker ([] for nobody)"),
})


@dataclass(frozen=True)
class NvrSettings:
    port: int
    onvif_port: int
    listen: str
    accounts_file: Path
    #: name -> password, read when the YAML is loaded (and again at a reload).
    accounts: dict[str, str]
    audio: str
    talk: frozenset[str]

    def may_talk(self, name: str) -> bool:
        return name in self.talk


def read_accounts(path: Path, key: str) -> tuple[dict[str, str], list[Problem]]:
    """The accounts file: `name:password` per line, `#` comments. Each problem names the key
    that points at the file and says what to do, in one line."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Problem(key, None, f"cannot read {path}: {exc.strerror}; write name:password lines into it "
                                       f"and chmod 600 {path}")]
    if mode & 0o077:
        return {}, [Problem(key, None, f"{path} can be read by other users (mode {mode & 0o777:o}); "
                                       f"run: chmod 600 {path}")]
    accounts: dict[str, str] = {}
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        where = f"{path} line {number}"
        if not sep or not _NAME.match(name):
            problems.append(Problem(key, None, f"{where}: write name:password (a name of 1 to 32 of A-Z, a-z, "
                                               f"0-9, . _ -)"))
        elif len(password) < MIN_PASSWORD:
            problems.append(Problem(key, None, f"{where}: {name}'s password is shorter than {MIN_PASSWORD} "
                                               f"characters"))
        elif name in accounts:
            problems.append(Problem(key, None, f"{where}: {name} is listed twice"))
        else:
            accounts[name] = password
    if not accounts and not problems:
        problems.append(Problem(key, None, f"{path} lists no account; write name:password lines into it"))
    return accounts, problems


def build(raw: dict[str, Any] | None, base: Path, camera: dict[str, Any],
          microphone: dict[str, Any]) -> tuple[NvrSettings | None, list[Problem]]:
    """The settings, or the problems that keep them from being used."""
    if raw is None:
        return None, []
    path = (base / raw["accounts_file"]).resolve()
    accounts, problems = read_accounts(path, "rtsp.accounts_file")
    for name in raw["talk"]:
        if accounts and name not in accounts:
            problems.append(Problem("rtsp.talk", None, f"{name} is not an account in {path}"))
    if camera["encoding"] != "passthrough":
        problems.append(Problem("rtsp", None, "serves the camera's own H.264: needs hardware.camera.encoding "
                                              "passthrough"))
    if raw["audio"] != "off" and microphone["backend"] == "alsa" and microphone["device"].startswith(("hw:", "plughw:")):
        problems.append(Problem("rtsp.audio", None, f"the microphone {microphone['device']} can be opened once, so "
                                                    f"calls would lose it: use a device several readers can share "
                                                    f"(dsnoop; default on Raspberry Pi OS), or audio: off"))
    if raw["port"] == raw["onvif_port"]:
        problems.append(Problem("rtsp.onvif_port", None, "must differ from rtsp.port"))
    if problems:
        return None, problems
    return NvrSettings(raw["port"], raw["onvif_port"], raw["listen"], path, accounts, raw["audio"],
                       frozenset(raw["talk"])), []

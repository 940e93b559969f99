"""`intercom pair LINK`: a door exchanges the server's one-time pairing link for its own token.

The installer runs `intercom-server door add` (or `door pair`) on the server and this on the
board: the token goes straight into the file the YAML names, mode 0600, and the YAML gets the
server's address and the door's user id, so nothing secret is copied between SSH sessions.

Everything that can be checked before the code is spent is checked first: a code works once,
and a pairing that fails after the exchange would leave the installer asking for a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yaml

from intercom_protocol.messages import PROTOCOL_PATH

from .directory import site_users
from .signaling import tls_context

#: The token file `intercom pair` adds to a YAML that names none: beside the YAML.
DEFAULT_TOKEN_FILE = "token"
TIMEOUT_S = 10.0


class PairingError(Exception):
    """One line for the installer: what went wrong and what to do."""


@dataclass(frozen=True)
class Link:
    base: str  # http(s)://host:port[/prefix], where the server's REST API is
    code: str

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + PROTOCOL_PATH, "", ""))


def parse_link(text: str) -> Link:
    parts = urlsplit(text.strip())
    match = re.fullmatch(r"pair=([A-Za-z0-9_-]{16,200})", parts.fragment)
    if parts.scheme not in ("http", "https") or not parts.netloc or match is None:
        raise PairingError(f"{text!r} is not a pairing link; it looks like http://SERVER:8080/#pair=CODE "
                           f"(from `intercom-server door pair DOOR` on the server)")
    return Link(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), match.group(1))


@dataclass
class Plan:
    """What pairing will write, worked out (and checked writable) before the code is used."""
    config_path: Path
    text: str
    token_path: Path
    add_token_file: bool
    #: server.ca_file, resolved: the YAML has no token yet, so it cannot be loaded whole.
    ca_file: str | None


def plan(config_path: Path) -> Plan:
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PairingError(f"there is no config file at {config_path}: `intercom init --config {config_path}` "
                           f"writes the annotated example there first") from None
    except OSError as exc:
        raise PairingError(f"cannot read {config_path}: {exc.strerror}") from None
    server = _server_node(text, config_path)
    values = {k.value: v for k, v in server.value} if server is not None else {}
    if "access_token" in values:
        raise PairingError(f"{config_path} has server.access_token inline; pairing writes the token to a file: "
                           f"replace that line with access_token_file: /etc/intercom/token")
    file_node = values.get("access_token_file")
    name = file_node.value if isinstance(file_node, yaml.ScalarNode) and file_node.value else DEFAULT_TOKEN_FILE
    token_path = (config_path.parent / name).resolve()
    ca_node = values.get("ca_file")
    ca_file = str((config_path.parent / ca_node.value).resolve()) \
        if isinstance(ca_node, yaml.ScalarNode) and ca_node.value else None
    for path in (config_path, token_path):
        directory = path.parent
        if not directory.is_dir():
            try:
                directory.mkdir(parents=True, mode=0o700)
            except OSError as exc:
                raise PairingError(f"cannot create {directory}: {exc.strerror}") from None
        if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PairingError(f"cannot write {path}: run intercom pair as a user who may (sudo)")
    return Plan(config_path, text, token_path, add_token_file=file_node is None, ca_file=ca_file)


async def redeem(link: Link, ca_file: str | None = None) -> dict[str, Any]:
    """The code for the door's token, at the server that made the link."""
    url = f"{link.base}/v1/pairings/redeem"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http, \
                http.post(url, json={"code": link.code}, ssl=tls_context(ca_file)) as response:
            body = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PairingError(f"cannot reach the server at {link.base}: {exc or type(exc).__name__}") from None
    if status != 201:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise PairingError(f"the server refused the pairing: {message or f'HTTP {status}'}")
    return dict(body)


def write(plan: Plan, link: Link, redeemed: dict[str, Any]) -> None:
    """The token first (0600 from its first byte), then the YAML, each replaced atomically."""
    _replace(plan.token_path, redeemed["access_token"] + "\n", 0o600)
    settings = {"url": link.ws_url, "user_id": redeemed["user"]["user_id"]}
    if plan.add_token_file:
        settings["access_token_file"] = str(plan.token_path)
    text = set_server_keys(plan.text, settings, plan.config_path)
    _replace(plan.config_path, text, plan.config_path.stat().st_mode & 0o777)


def set_server_keys(text: str, settings: dict[str, str], source: Path) -> str:
    """`text` with these keys of `server:` set, everything else (comments too) as it was."""
    for key, value in settings.items():
        server = _server_node(text, source)
        scalar = _scalar(value)
        if server is None:
            text = f"server:\n  {key}: {scalar}\n" + text
            continue
        found = next((v for k, v in server.value if k.value == key), None)
        if isinstance(found, yaml.ScalarNode):
            start, end = found.start_mark.index, found.end_mark.index
            if found.value == "" and found.style is None:  # `key:` with nothing after it
                start = end = found.start_mark.index
                scalar = " " + scalar if text[start - 1:start] == ":" else scalar
            text = text[:start] + scalar + text[end:]
        elif found is not None:
            raise PairingError(f"{source}: server.{key} must be a single value")
        elif server.value:
            first = server.value[0][0]
            line_start = text.rfind("\n", 0, first.start_mark.index) + 1
            indent = " " * first.start_mark.column
            text = text[:line_start] + f"{indent}{key}: {scalar}\n" + text[line_start:]
        else:
            raise PairingError(f"{source}: server: must be a mapping of keys")
    return text


def _server_node(text: str, source: Path) -> yaml.MappingNode | None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PairingError(f"{source} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if root is None:
        return None
    if not isinstance(root, yaml.MappingNode):
        raise PairingError(f"{source}: the top level must be a mapping of keys")
    server = next((v for k, v in root.value if k.value == "server"), None)
    if server is not None and not isinstance(server, yaml.MappingNode):
        if isinstance(server, yaml.ScalarNode) and server.value == "":
            raise PairingError(f"{source}: server: is empty; give it at least one key (url: ws://...)")
        raise PairingError(f"{source}: server: must be a mapping of keys")
    return server


def _scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, else double-quoted (JSON is YAML)."""
    try:
        if yaml.safe_load(value) == value and "#" not in value:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def _replace(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if path.exists():  # paired again: the service's user must still be able to read it
            owner = path.stat()
            with contextlib.suppress(PermissionError):
                os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def check_connection(url: str, token: str, ca_file: str | None) -> list[dict[str, Any]]:
    """The door's new token against the server at the address now in its YAML: the same
    question `intercom selftest` asks for its ring groups, so a door that pairs can sign in."""
    try:
        return await site_users(url, token, tls_context(ca_file))
    except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
        raise PairingError(f"the server at {url} did not accept the door's new token: "
                           f"{exc or type(exc).__name__}") from None

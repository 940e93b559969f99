"""Debian's Mosquitto on loopback, with password authentication and an ACL, as an installer
runs it beside Home Assistant; and a subscriber that reads it as Home Assistant would."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

#: The server's account may publish its doors and read Home Assistant's birth; Home
#: Assistant's may read the doors, announce itself, and send commands to open.
ACL = """\
user intercom
topic readwrite intercom/#
topic readwrite homeassistant/#

user homeassistant
topic read intercom/#
topic write intercom/+/open/set
topic write intercom/site/+/away/set
topic write intercom/resident/+/dnd/set
topic readwrite homeassistant/#
"""
PASSWORDS = {"intercom": "server-secret-1", "homeassistant": "ha-secret-2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(self, workdir: Path, tls: tuple[Path, Path] | None = None) -> None:
        """With `tls` (certificate, key), the broker takes TLS connections only."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(binary).exists(), "mosquitto not found: `make test` installs Debian's mosquitto package"
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.proc: asyncio.subprocess.Process | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        passwords = workdir / "passwords"
        passwords.write_text("")
        for user, password in PASSWORDS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True,
                           capture_output=True)
        (workdir / "acl").write_text(ACL)
        (workdir / "intercom-password").write_text(PASSWORDS["intercom"] + "\n")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
            f"acl_file {workdir / 'acl'}\npersistence false\nlog_dest stderr\nlog_type error\n"
            f"log_type warning\nlog_type notice\nlog_type information\nuser root\n"
            + (f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else ""))

    @property
    def server_settings(self) -> dict[str, Any]:
        """The server's `mqtt:` section for this broker."""
        return {"host": "127.0.0.1", "port": self.port, "username": "intercom",
                "password_file": str(self.workdir / "intercom-password"), "reconnect_max_s": 0.5}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(self.binary, "-c", str(self.config),
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        seen = []
        async def running() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            async for raw in self.proc.stderr:
                seen.append(raw.decode(errors="replace"))
                if "running" in seen[-1]:
                    return
            raise RuntimeError("mosquitto exited:\n" + "".join(seen))
        try:
            await asyncio.wait_for(running(), 20)
        except TimeoutError:
            raise RuntimeError("mosquitto did not start:\n" + "".join(seen)) from None
        self._drain = asyncio.get_running_loop().create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for _ in self.proc.stderr:
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
            await self._drain
        self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


class HomeAssistant:
    """Subscribes to the discovery prefix and the doors' topics, and remembers every message."""

    def __init__(self, broker: Mosquitto, user: str = "homeassistant") -> None:
        self.broker = broker
        self.user = user
        self.messages: list[Received] = []
        self._changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HomeAssistant:
        self._client = aiomqtt.Client("127.0.0.1", self.broker.port, username=self.user,
                                      password=PASSWORDS[self.user], identifier=f"ha-{id(self)}",
                                      protocol=aiomqtt.ProtocolVersion.V5)
        await self._client.__aenter__()
        # Retain as published: the test sees which messages the server published retained.
        for topic in ("homeassistant/#", "intercom/#"):
            await self._client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._client is not None:
            try:
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass

    async def _read(self) -> None:
        assert self._client is not None
        try:
            async for message in self._client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                async with self._changed:
                    self.messages.append(Received(message.topic.value, payload, bool(message.retain)))
                    self._changed.notify_all()
        except aiomqtt.MqttError:
            async with self._changed:
                self._changed.notify_all()

    async def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 20.0,
                       after: int = 0) -> Received:
        """The first message (from number `after` on) that matches, waiting for it to come."""
        async def scan() -> Received:
            async with self._changed:
                while True:
                    for message in self.messages[after:]:
                        if predicate(message):
                            return message
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            seen = "\n".join(f"{m.topic} {m.payload[:120]!r}" for m in self.messages[-30:])
            raise TimeoutError(f"no matching MQTT message within {timeout}s; the last ones:\n{seen}") from None

    async def on(self, topic: str, match: Callable[[bytes], bool] = lambda _: True, timeout: float = 20.0,
                 after: int = 0) -> Received:
        return await self.wait_for(lambda m: m.topic == topic and match(m.payload), timeout, after)

    def last(self, topic: str) -> Received | None:
        found = [m for m in self.messages if m.topic == topic]
        return found[-1] if found else None

"""A whole installation on one machine: the server, door stations and residents, each a real
process of its own on loopback, as an installer would run them.

`make demo` and the end-to-end tests use this, so what they show is what a user gets: the
same commands (`intercom-server`, `intercom run`, `intercom ctl`, `intercom-resident`), the
same config files, the same sockets. Only the hardware is simulated, by the door's config.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml


def command(name: str, module: str) -> list[str]:
    """The installed console script next to this Python, else the module behind it."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", module]


INTERCOM = command("intercom", "intercom.cli")
SERVER = command("intercom-server", "intercom_server.cli")
RESIDENT = command("intercom-resident", "intercom_resident.cli")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Process:
    """A child process whose stdout lines can be awaited; stderr goes to a log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.on_line: Callable[[str], None] | None = None

    @classmethod
    async def start(cls, name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> Process:
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        log_file = open(log_path, "ab")  # the child keeps it open
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=log_file, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log_file.close()
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.on_line:
                self.on_line(line)
            async with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines printed so far (resident clients print one per step)."""
        out = []
        for line in self.lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    async def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 20.0, after: int = 0) -> str:
        """The first line (from line number `after` on) that matches, waiting for it to come."""
        async def scan() -> str:
            seen = after
            async with self._new_line:
                while True:
                    for line in self.lines[seen:]:
                        if predicate(line):
                            return line
                    seen = len(self.lines)
                    if self._reader.done():
                        raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{self.log_tail()}")
                    await self._new_line.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no matching line within {timeout}s; stdout so far:\n"
                               + "\n".join(self.lines[-20:]) + f"\nlog:\n{self.log_tail()}") from None

    async def wait_for_event(self, event: str, timeout: float = 20.0, after: int = 0, **fields: Any) -> dict[str, Any]:
        def match(line: str) -> bool:
            try:
                value = json.loads(line)
            except ValueError:
                return False
            return (isinstance(value, dict) and value.get("event") == event
                    and all(value.get(k) == v for k, v in fields.items()))

        return json.loads(await self.wait_for_line(match, timeout, after))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def kill(self) -> int:
        """SIGKILL: a power cut or a crash, with no chance to tidy up."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode  # type: ignore[return-value]

    async def stop(self, timeout: float = 10.0) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode  # type: ignore[return-value]


class Door:
    def __init__(self, user_id: str, process: Process, config_path: Path, socket: Path) -> None:
        self.user_id = user_id
        self.process = process
        self.config_path = config_path
        self.socket = socket

    async def ctl(self, action: str) -> dict[str, Any]:
        """Run `intercom ctl ACTION` as an installer would, and return its JSON."""
        proc = await asyncio.create_subprocess_exec(
            *INTERCOM, "ctl", action, "--socket", str(self.socket),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"intercom ctl {action} failed ({proc.returncode}): {err.decode()}{out.decode()}")
        return json.loads(out)

    async def ring(self) -> None:
        """A visitor's press and release of the bell button, through the GPIO pin's path."""
        await self.ctl("press")
        await self.ctl("release")

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
                          interval: float = 0.05) -> dict[str, Any]:
        """Poll `ctl status` until the predicate holds: the installer's view is the one asserted."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                status = await self.ctl("status")
                if predicate(status):
                    return status
            except RuntimeError:
                status = None
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"door {self.user_id}: status never matched; last: {status}\n"
                                   f"log:\n{self.process.log_tail()}")
            await asyncio.sleep(interval)


class Installation:
    """One site with a server, its doors and residents, under `root`."""

    def __init__(self, root: Path, site_id: str = "home") -> None:
        self.root = root
        self.data_dir = root / "server-data"
        self.logs = root / "logs"
        self.site_id = site_id
        self.server: Process | None = None
        self.http_url = ""
        self.ws_url = ""
        self.processes: list[Process] = []

    # -- server ------------------------------------------------------------------------------

    async def start_server(self, ring_timeout_s: float = 30.0, grace_s: float = 10.0, port: int = 0,
                           settings: dict[str, Any] | None = None) -> None:
        """`settings` is merged into the server's YAML (e.g. {"heartbeat_s": 1})."""
        config = merge({"listen": {"host": "127.0.0.1", "port": port}, "data_dir": str(self.data_dir),
                        "calls": {"ring_timeout_s": ring_timeout_s, "grace_s": grace_s}}, settings or {})
        path = self.root / "server.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        await self._launch_server(path)
        await self.server_cli("site", "add", self.site_id, "--name", "Demo house")

    async def _launch_server(self, config_path: Path) -> None:
        self.server = await Process.start("server", [*SERVER, "--config", str(config_path), "serve"], self.logs)
        self.processes.append(self.server)
        line = await self.server.wait_for_line(lambda text: text.startswith("intercom-server listening on "), 30)
        self.http_url = line.rsplit(" ", 1)[1]
        self.ws_url = self.http_url.replace("http://", "ws://") + "/v1/ws"
        # Pin the port that was chosen, so a restart comes back where the doors look for it.
        config = yaml.safe_load(config_path.read_text())
        config["listen"]["port"] = int(self.http_url.rsplit(":", 1)[1])
        config_path.write_text(yaml.safe_dump(config))

    async def stop_server(self, crash: bool = False) -> None:
        assert self.server is not None
        await self.stop(self.server, crash)

    async def stop(self, process: Process, crash: bool = False) -> None:
        """Stop one of the installation's processes (SIGTERM, or SIGKILL for a crash) for good."""
        await (process.kill() if crash else process.stop())
        self.processes.remove(process)

    async def restart_server(self) -> None:
        await self._launch_server(self.root / "server.yaml")

    async def server_cli(self, *args: str) -> dict[str, Any]:
        # The server's own YAML where there is one: it may name a database outside data_dir.
        config = self.root / "server.yaml"
        where = ["--config", str(config)] if config.exists() else ["--data-dir", str(self.data_dir)]
        proc = await asyncio.create_subprocess_exec(*SERVER, *where, *args,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"intercom-server {' '.join(args)}: {err.decode()}")
        return json.loads(out)

    @property
    def api_token(self) -> str:
        return (self.data_dir / "api_token").read_text().strip()

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.http_url + path, json=body,
                                    headers={"Api-Token": self.api_token}) as resp:
                data = await resp.json() if resp.content_type == "application/json" else await resp.read()
                return resp.status, data

    async def add_user(self, user_id: str, kind: str, name: str) -> Path:
        """Create the user with the installer's commands; returns a file holding its token."""
        await self.server_cli("user", "add", user_id, "--kind", kind, "--site", self.site_id, "--name", name)
        token = await self.server_cli("token", "issue", user_id)
        path = self.root / "tokens" / user_id
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(token["access_token"] + "\n")
        path.chmod(0o600)
        return path

    async def invite(self, user_id: str, name: str | None = None) -> str:
        """A resident for the web app, and the one-time link that signs a phone in as them."""
        await self.server_cli("user", "add", user_id, "--kind", "resident", "--site", self.site_id,
                              "--name", name or user_id.title())
        invite = await self.server_cli("invite", user_id, "--json", "--url", self.http_url)
        return str(invite["url"])

    # -- doors and residents -------------------------------------------------------------------

    def door_config(self, user_id: str, token_file: Path, ring_groups: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "server": {"url": self.ws_url, "user_id": user_id, "access_token_file": str(token_file),
                       "device_id": "door"},
            "hardware": {
                "pins": {"backend": "mock", "bell_button": 17, "status_led": 27},
                "camera": {"backend": "test_pattern", "width": 640, "height": 480, "fps": 15},
                "microphone": {"backend": "tone"},
                "speaker": {"device": "null"},
            },
            "calls": {"ring_groups": ring_groups},
            "control": {"socket": str(self.root / f"{user_id}.sock")},
            "state_dir": str(self.root / f"{user_id}-state"),
        }

    async def start_door(self, user_id: str, ring_groups: list[dict[str, Any]], name: str = "Front door",
                         settings: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                         prefix: tuple[str, ...] = ()) -> Door:
        """A door daemon; `settings` is merged into its YAML section by section (e.g.
        {"hardware": {"pins": {"relay": 22}}}), `env` goes to its process, and `prefix` comes
        before its command (e.g. `ip netns exec NAME` to put it on a test host of its own)."""
        token_file = await self.add_user(user_id, "door", name)
        config = merge(self.door_config(user_id, token_file, ring_groups), settings or {})
        path = self.root / f"{user_id}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = await Process.start(user_id, [*prefix, *INTERCOM, "run", "--config", str(path)], self.logs, env=env)
        self.processes.append(process)
        door = Door(user_id, process, path, Path(config["control"]["socket"]))
        await door.wait_status(lambda s: s["server"]["connected"])
        return door

    async def restart_door(self, door: Door) -> None:
        """Start the door's daemon again from its YAML, as systemd does after a crash."""
        if door.process in self.processes:
            self.processes.remove(door.process)
        door.process = await Process.start(door.user_id, [*INTERCOM, "run", "--config", str(door.config_path)],
                                           self.logs)
        self.processes.append(door.process)

    async def start_resident(self, user_id: str, *args: str, name: str | None = None,
                             device_id: str | None = None, create: bool = True) -> Process:
        token_file = await self.add_user(user_id, "resident", name or user_id.title()) if create \
            else self.root / "tokens" / user_id
        argv = [*RESIDENT, "--server", self.ws_url, "--user", user_id, "--token-file", str(token_file), *args]
        if device_id:
            argv += ["--device-id", device_id]
        process = await Process.start(f"resident-{user_id}-{device_id or len(self.processes)}", argv, self.logs)
        self.processes.append(process)
        await process.wait_for_event("online")
        return process

    async def close(self) -> None:
        # Clients first, then the server, so nobody sees the server vanish mid-call.
        for process in reversed(self.processes):
            await process.stop()

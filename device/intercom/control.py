"""The local control socket: `intercom ctl status|press|release` for installers and tests.

One JSON object per line each way. A press here takes the same path as a finger on the
button (see Pins.simulate), so a test that presses through the socket tests the real thing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("intercom.control")

Command = Callable[[], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Command]) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # left by a daemon that did not stop cleanly
        elif self.path.exists():
            raise FileExistsError(f"control.socket {self.path} exists and is not a socket: "
                                  f"remove it or choose another path")
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        os.chmod(self.path, 0o660)
        log.info("control socket at %s", self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self._run(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _run(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["cmd"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'send one JSON object per line: {"cmd": "status"}'}
        if command not in self.commands:
            return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(self.commands)}"}
        return {"ok": True, **self.commands[command]()}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)


class ControlClient:
    """One connection to the control socket for many commands.

    `intercom ctl` opens one per command, which is fine for a person; the benchmarks press the
    bell a hundred times and must not count the start of a process in each press."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def command(self, command: str) -> dict[str, Any]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path)), self.timeout_s)
        assert self._reader is not None and self._writer is not None
        self._writer.write(json.dumps({"cmd": command}).encode() + b"\n")
        await self._writer.drain()
        line = await asyncio.wait_for(self._reader.readline(), self.timeout_s)
        if not line:
            self.close()
            raise ConnectionError(f"the door closed its control socket {self.path}")
        return json.loads(line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


async def send_command(path: Path, command: str, timeout_s: float = 5.0) -> dict[str, Any]:
    client = ControlClient(path, timeout_s)
    try:
        return await client.command(command)
    finally:
        client.close()

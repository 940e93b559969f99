"""Visitor messages waiting on the board until the server has them.

Each message is a file `<call_id>.mp4` in the spool directory: written whole (the recorder
renames it when complete), sent with the door's own token (`PUT
/v1/direct_calls/{call_id}/message`), and deleted only once the server answered that it has it.
Failures are tried again with a doubling wait, and at every reconnection; the spool is bounded
(the oldest go first) so a server away for weeks cannot fill the card.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from .directory import http_base

log = logging.getLogger("intercom.outbox")

UPLOAD_TIMEOUT_S = 120.0
RETRY_FIRST_S, RETRY_MAX_S = 5.0, 600.0
#: Answers after which sending again cannot help: the message is dropped (and logged).
FINAL_REFUSALS = frozenset({400, 403, 404, 413})


class Outbox:
    def __init__(self, spool: Path, max_bytes: int, server_url: Callable[[], str], token: Callable[[], str],
                 ssl_context: Callable[[], ssl.SSLContext | bool]) -> None:
        self.spool = spool
        self.max_bytes = max_bytes
        self._server_url, self._token, self._ssl = server_url, token, ssl_context
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._retry: asyncio.TimerHandle | None = None
        self._wait = RETRY_FIRST_S
        self._tasks: set[asyncio.Task[None]] = set()
        #: Presses made while the server was unreachable, reported since: name -> call id.
        self._named: dict[str, str] = {}
        try:
            for partial in spool.glob("*.part"):
                partial.unlink()  # a recording that a crash or a power cut cut short
        except OSError as exc:
            log.warning("cannot tidy the message spool %s: %s", spool, exc)

    def waiting(self) -> list[Path]:
        """Every message on the board, oldest first (with those still waiting for their call)."""
        try:
            return sorted(self.spool.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []

    def name_message(self, offline_name: str, call_id: str) -> None:
        """A press made while the server was unreachable has been reported and has its call:
        its message, if one was recorded, can go now."""
        self._named[offline_name] = call_id  # it may still be recording
        self.send_soon()

    def status(self) -> dict[str, Any]:
        return {"waiting": len(self.waiting()), "sent": self.sent, "dropped": self.dropped,
                "last_error": self.last_error}

    def make_room(self, for_bytes: int) -> None:
        """Drop the oldest messages until `for_bytes` more fit in the spool."""
        files = self.waiting()
        total = sum(p.stat().st_size for p in files)
        while files and total + for_bytes > self.max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            self.dropped += 1
            log.warning("the message spool is full: dropped the oldest message, %s", oldest.name)

    def send_soon(self) -> None:
        """Send what is waiting, beside the door's work."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        task = asyncio.get_running_loop().create_task(self._send_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        for task in self._tasks:
            task.cancel()

    async def _send_all(self) -> None:
        async with self._lock:
            for path in self.waiting():
                if path.stem in self._named:
                    call_id = self._named.pop(path.stem)
                    path = path.replace(self.spool / f"{call_id}.mp4")
                    log.info("the visitor's message of a press made offline belongs to call %s", call_id)
                if not path.stem.startswith("call_"):
                    continue  # a press not reported yet: its call is not known
                if not await self._send(path):
                    self._retry = asyncio.get_running_loop().call_later(self._wait, self.send_soon)
                    self._wait = min(self._wait * 2, RETRY_MAX_S)
                    return
            self._wait = RETRY_FIRST_S

    async def _send(self, path: Path) -> bool:
        """False when it should be tried again later."""
        call_id = path.stem
        url = f"{http_base(self._server_url())}/v1/direct_calls/{call_id}/message"
        try:
            body = path.read_bytes()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT_S)) as http:
                async with http.put(url, data=body, ssl=self._ssl(),
                                    headers={"Authorization": f"Bearer {self._token()}",
                                             "Content-Type": "video/mp4"}) as resp:
                    status, text = resp.status, (await resp.text())[:200]
        except FileNotFoundError:
            return True  # dropped meanwhile
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.last_error = f"{call_id}: {type(exc).__name__}: {exc}"
            log.info("could not send the visitor's message %s yet: %s", call_id, exc)
            return False
        if 200 <= status < 300 or status == 409:
            path.unlink(missing_ok=True)
            self.sent += 1
            self.last_error = None
            log.info("the visitor's message for call %s is on the server (%d bytes)", call_id, len(body))
            return True
        if status in FINAL_REFUSALS:
            path.unlink(missing_ok=True)
            self.dropped += 1
            self.last_error = f"{call_id}: the server refused it ({status}): {text}"
            log.warning("the server refused the visitor's message %s (%d: %s): dropped", call_id, status, text)
            return True
        self.last_error = f"{call_id}: HTTP {status}"
        return False

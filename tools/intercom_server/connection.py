"""One client's WebSocket as the hub sees it: its identity once signed in, its ordered and
bounded outgoing queue, its message budget, and the server's own requests to it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from intercom_protocol import messages as m
from intercom_protocol.calls import DeviceRef
from intercom_protocol.requests import RequestTracker

from .limits import LimitSettings, TokenBucket
from .records import User

log = logging.getLogger("intercom.server")


class ConnectionGone(Exception):
    """The device closed before it answered a request of the server."""


class Connection:
    """One WebSocket: its identity once authenticated, its ordered and bounded outgoing
    queue, its message budget, and the server's requests to it that await an answer.

    Thousands of these sit idle on one server, so an idle one holds no queue and no task:
    the outbox and its writer exist only while there is something to send (an asyncio.Queue
    and a parked writer task cost about 4.5 KiB a connection; see bench/results.md)."""

    __slots__ = ("_send_text", "_close", "peer", "user", "device", "token_id", "bucket", "_requests", "_max_queue",
                 "closed", "_closer", "outbox", "_writer", "quick_replies", "bridge", "__weakref__")

    def __init__(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str,
                 limits: LimitSettings) -> None:
        self._send_text = send_text
        self._close = close
        self.peer = peer
        self.user: User | None = None
        self.device: DeviceRef | None = None
        #: The access token this session signed in with: its revocation or expiry ends the session.
        self.token_id: str | None = None
        self.bucket = TokenBucket(limits.messages_per_s, limits.message_burst, time.monotonic())
        #: The server's requests to this device, made on the first (most never get one).
        self._requests: RequestTracker[asyncio.Future[dict[str, Any]], None] | None = None
        self._max_queue = limits.send_queue
        self.closed = False
        self._closer: asyncio.Task[None] | None = None
        #: Frames encoded and waiting for the socket, oldest first; None while there are none.
        self.outbox: deque[str] | None = None
        self._writer: asyncio.Task[None] | None = None
        #: A door's quick replies ({id, label}), as it signed in with them.
        self.quick_replies: tuple[dict[str, str], ...] = ()
        #: A bridge's own state ({kind, registration, detail}), as it last said (`status`).
        self.bridge: dict[str, str] | None = None

    def send(self, message: dict[str, Any]) -> None:
        if self.closed or self._closer is not None:
            return
        if self.outbox is None:
            self.outbox = deque()
        if len(self.outbox) >= self._max_queue:
            # A client that does not read would make the server hold its messages forever.
            log.warning("%s does not read its messages; closing it", self.peer)
            if self._writer is not None:
                self._writer.cancel()
            self._closer = asyncio.get_running_loop().create_task(self.close(1008, "too many unread messages"))
            return
        self.outbox.append(m.encode(message))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self.outbox:
                await self._send_text(self.outbox[0])
                self.outbox.popleft()
            self.outbox = None
        except (ConnectionError, RuntimeError):
            return
        finally:
            if asyncio.current_task() is self._writer:
                self._writer = None

    async def request(self, kind: str, timeout_s: float, **body: Any) -> dict[str, Any]:
        """Ask the device something and wait for its `ok` or `error` (raises TimeoutError, or
        ConnectionGone when the device leaves first)."""
        if self.closed:
            raise ConnectionGone()
        if self._requests is None:
            self._requests = RequestTracker("srv_")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        message = self._requests.start(kind, fut, **body)
        self.send(message)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._requests.forget(message["id"])

    def settle(self, reply: dict[str, Any]) -> None:
        """The device's answer to one of the server's requests; unknown or late ones are dropped."""
        fut = self._requests.settle(reply).waiter if self._requests is not None else None
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def close(self, code: int, reason: str) -> None:
        """Flush what is queued (for a few seconds at most), then close the socket."""
        if not self.closed:
            self.closed = True
            for fut in self._requests.close() if self._requests is not None else []:
                if not fut.done():
                    fut.set_exception(ConnectionGone())
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer}, timeout=5.0)
            writer.cancel()
        await self._close(code, reason)

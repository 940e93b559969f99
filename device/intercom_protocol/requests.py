"""Requests and their replies, matched by id: the one rule every party of protocol v1 follows
when it asks something (the door and the residents ask the server; the server asks the door to
open).

Sans-I/O: the tracker hands out ids, remembers what waits for each reply (an asyncio future,
a callback: whatever the I/O layer chooses) and says what a reply settles. It never waits; the
I/O layer applies the deadline and reports a request it gave up on with `give_up`, so that a
reply arriving afterwards still reaches the request's `undo` (a dial the server placed after
the door stopped waiting must be ended, not left ringing).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from typing import Any, Generic, TypeVar

from .messages import ErrorCode, request

W = TypeVar("W")  # what waits for a reply
U = TypeVar("U")  # what takes back a request whose reply came too late

#: Requests given up on whose late replies are still undone (oldest forgotten first).
MAX_ABANDONED = 64


class RequestFailed(Exception):
    """The other party answered `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Settled(Generic[W, U]):
    """What one reply settles: the request still waiting for it, or the undo of one given up on
    (for an `ok` only: a refused request did nothing to take back). Both None for a reply
    nobody asked for (a duplicate, or another connection's)."""

    reply: dict[str, Any]
    waiter: W | None = None
    undo: U | None = None

    @property
    def ok(self) -> bool:
        return self.reply.get("type") == "ok"

    def failure(self) -> RequestFailed | None:
        """The `error` reply as an exception, or None for `ok`."""
        if self.ok:
            return None
        return RequestFailed(str(self.reply.get("code", ErrorCode.INTERNAL)), str(self.reply.get("message", "")))


class RequestTracker(Generic[W, U]):
    """The requests one connection has sent and not yet had answered."""

    def __init__(self, prefix: str = "r", max_abandoned: int = MAX_ABANDONED) -> None:
        self._prefix = prefix
        self._ids = count(1)
        self._waiting: dict[str, tuple[W, U | None]] = {}
        self._abandoned: OrderedDict[str, U] = OrderedDict()
        self._max_abandoned = max_abandoned

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, kind: str, waiter: W, undo: U | None = None, **body: Any) -> dict[str, Any]:
        """The request to send, under a new id, now waiting with `waiter`."""
        rid = f"{self._prefix}{next(self._ids)}"
        self._waiting[rid] = (waiter, undo)
        return request(kind, rid, **body)

    def settle(self, reply: dict[str, Any]) -> Settled[W, U]:
        """An `ok` or `error` arrived: what it answers, if anything."""
        rid = reply.get("re")
        if not isinstance(rid, str):
            return Settled(reply)
        waiting = self._waiting.pop(rid, None)
        if waiting is not None:
            return Settled(reply, waiter=waiting[0])
        undo = self._abandoned.pop(rid, None)
        return Settled(reply, undo=undo if reply.get("type") == "ok" else None)

    def give_up(self, rid: str) -> None:
        """The I/O layer stopped waiting (its deadline passed, or its task was cancelled); a late
        `ok` goes to the request's undo, if it has one."""
        waiting = self._waiting.pop(rid, None)
        if waiting is None or waiting[1] is None:
            return
        self._abandoned[rid] = waiting[1]
        while len(self._abandoned) > self._max_abandoned:
            self._abandoned.popitem(last=False)

    def forget(self, rid: str) -> None:
        """The request was never sent (the connection had gone): nothing can answer it."""
        self._waiting.pop(rid, None)

    def close(self) -> list[W]:
        """The connection is gone: nothing will be answered on it. Returns who still waited."""
        waiters = [waiter for waiter, _ in self._waiting.values()]
        self._waiting.clear()
        self._abandoned.clear()
        return waiters

"""Work the server starts and does not wait for: tasks it keeps until they finish (so they
are not collected mid-way, and stop with the server), and writes that must not stop a call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("intercom.server")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Writes that failed (the bell rang anyway); shown to the operator by /healthz.
        self.store_errors = 0
        self.last_store_error: str | None = None

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def store(self, what: str, written: asyncio.Future[Any]) -> None:
        """A write that must not stop the call: the ring, the answer and the hang-up go on
        while it is committed, and a full disk or a read-only database is logged and counted."""
        def done(result: asyncio.Future[Any]) -> None:
            if not result.cancelled() and result.exception() is not None:
                self.store_failed(what, result.exception())
        written.add_done_callback(done)

    def store_failed(self, what: str, exc: BaseException | None) -> None:
        self.store_errors += 1
        self.last_store_error = f"{what}: {exc}"
        log.error("could not %s: %s", what, exc)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

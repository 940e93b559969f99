"""Visitors' messages: the MP4s doors send when nobody could answer, kept for the call's residents.

Files live in `data_dir/messages/<call_id>.mp4` (the directory 0700, like the database), each
written under a temporary name and renamed once whole and within the size limit. The store
knows which calls have one. A sweep after each upload and every hour keeps to the retention
policy: nothing older than `keep_days`, and at most `max_total_mb` in all, the oldest going
first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import StreamReader

from .store import Store

log = logging.getLogger("intercom.server")

_CALL_ID = re.compile(r"^call_[0-9a-f]{16}$")


@dataclass
class MessageSettings:
    #: Where the files are; by default `messages/` beside the database.
    directory: Path | None = None
    max_bytes: int = 20 * 1024 * 1024
    keep_days: float = 30.0
    max_total_mb: float = 2000.0
    sweep_every_s: float = 3600.0


class TooLarge(Exception):
    pass


class MessageBox:
    def __init__(self, directory: Path, store: Store, settings: MessageSettings) -> None:
        self.dir = directory
        self.store = store
        self.settings = settings

    def path(self, call_id: str) -> Path:
        if not _CALL_ID.match(call_id):
            raise ValueError(f"not a call id: {call_id!r}")
        return self.dir / f"{call_id}.mp4"

    async def save(self, call_id: str, body: StreamReader) -> int:
        """Write the upload; raises TooLarge past the limit (nothing is kept then)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.path(call_id)
        partial = final.with_suffix(".part")
        size = 0
        try:
            with open(partial, "wb") as out:
                async for chunk in body.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > self.settings.max_bytes:
                        raise TooLarge
                    await asyncio.to_thread(out.write, chunk)
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        await self.store.calls.add_message(call_id, size, time.time())
        return size

    async def delete(self, call_id: str) -> None:
        self.path(call_id).unlink(missing_ok=True)
        await self.store.calls.delete_message(call_id)

    async def sweep(self, now: float | None = None) -> int:
        """Apply the retention policy; returns how many messages went."""
        now = time.time() if now is None else now
        horizon = now - self.settings.keep_days * 86400
        limit = int(self.settings.max_total_mb * 1024 * 1024)
        kept = await self.store.calls.messages()  # oldest first: (call_id, bytes, created_at)
        total = sum(size for _, size, _ in kept)
        gone = 0
        for call_id, size, created_at in kept:
            if created_at >= horizon and total <= limit:
                break
            await self.delete(call_id)
            total -= size
            gone += 1
        if gone:
            log.info("retention: removed %d visitor message(s)", gone)
        return gone

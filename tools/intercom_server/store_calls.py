"""Finished and live calls as records: their answer and end, the visitor's picture, the history, and visitors' messages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from intercom_protocol.calls import ServerCall, iso

from .database import Database, Statement
from .records import CallRecord, NotFound, Party


class Calls:
    _CALL_COLUMNS = ("call_id, caller_id, caller_device, callees, video, created_at, accepted_by_user, "
                     "accepted_by_device, accepted_at, ended_at, end_reason, ended_by_user, ended_by_device, "
                     "timeline, snapshot IS NOT NULL AS has_snapshot, "
                     "EXISTS (SELECT 1 FROM visitor_messages m WHERE m.call_id = calls.call_id) AS has_message")

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _parties(call: ServerCall) -> Statement:
        """Whose history shows the call: one statement, however many callees."""
        users = list(dict.fromkeys((call.caller.user_id, *call.callees)))
        return (f"INSERT INTO call_parties VALUES {', '.join(['(?, ?)'] * len(users))} ON CONFLICT DO NOTHING",
                tuple(x for user in users for x in (call.call_id, user)))

    #: What a call's record says from its dial on.
    _DIALED = "call_id, caller_id, caller_device, callees, video, created_at, snapshot"

    @staticmethod
    def _dialed(call: ServerCall, snapshot: bytes | None) -> tuple[Any, ...]:
        return (call.call_id, call.caller.user_id, call.caller.device_id, json.dumps(list(call.callees)),
                int(call.video), call.created_at, snapshot)

    @classmethod
    def _insert_call(cls, call: ServerCall, snapshot: bytes | None) -> list[Statement]:
        return [(f"INSERT INTO calls ({cls._DIALED}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                 cls._dialed(call, snapshot)), cls._parties(call)]

    def record_call(self, call: ServerCall, snapshot: bytes | None) -> asyncio.Future[None]:
        """Written at the dial, so a crash mid-call leaves a trace that start-up closes."""
        return self.db.write(self._insert_call(call, snapshot))

    def set_snapshot(self, call_id: str, snapshot: bytes) -> asyncio.Future[None]:
        return self.db.write([("UPDATE calls SET snapshot = ? WHERE call_id = ?", (snapshot, call_id))])

    def accept_call(self, call: ServerCall) -> asyncio.Future[None]:
        """Written when it happens: a crash mid-call leaves a record that says who answered."""
        accepted = call.accepted_by
        assert accepted is not None
        values = (accepted.user_id, accepted.device_id, call.accepted_at, call.call_id)
        return self.db.write([(
            "UPDATE calls SET accepted_by_user = ?, accepted_by_device = ?, accepted_at = ? WHERE call_id = ?",
            values)])

    def finish_call(self, call: ServerCall, snapshot: bytes | None = None) -> asyncio.Future[None]:
        """The call's end, written over its record; a call whose first write had failed (the
        bell rang anyway) is recorded whole now (a missed press is recorded whole at once,
        with its picture)."""
        by = call.ended_by
        accepted = call.accepted_by
        row = (*self._dialed(call, snapshot), accepted.user_id if accepted else None,
               accepted.device_id if accepted else None, call.accepted_at, call.ended_at, str(call.end_reason),
               by.user_id if by else None, by.device_id if by else None,
               json.dumps([{"at": iso(t), "event": e, **d} for t, e, d in call.timeline]))
        return self.db.write([(
            f"INSERT INTO calls ({self._DIALED}, accepted_by_user, accepted_by_device, accepted_at, ended_at, "
            "end_reason, ended_by_user, ended_by_device, timeline) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET "
            "accepted_by_user = excluded.accepted_by_user, accepted_by_device = excluded.accepted_by_device, "
            "accepted_at = excluded.accepted_at, ended_at = excluded.ended_at, end_reason = excluded.end_reason, "
            "ended_by_user = excluded.ended_by_user, ended_by_device = excluded.ended_by_device, "
            "timeline = excluded.timeline", row), self._parties(call)])

    async def close_interrupted_calls(self, started_before: float | None = None) -> int:
        """Calls live when the server last stopped can no longer be reached: they end `unknown`.
        In a cluster, only those older than any call can live (`started_before`): their state
        was lost with Redis."""
        now = time.time()
        return await self.db.execute("UPDATE calls SET ended_at = ?, end_reason = 'unknown' WHERE ended_at IS NULL "
                                     "AND created_at < ?", (now, now if started_before is None else started_before))

    @staticmethod
    def _call(row: Any, timeline: bool) -> CallRecord:
        def party(user: str | None, device: str | None) -> Party | None:
            return Party(user, device or "") if user else None

        return CallRecord(
            call_id=row["call_id"],
            caller=Party(row["caller_id"], row["caller_device"]),
            callees=tuple(json.loads(row["callees"])),
            video=bool(row["video"]),
            created_at=float(row["created_at"]),
            accepted_by=party(row["accepted_by_user"], row["accepted_by_device"]),
            accepted_at=row["accepted_at"],
            ended_at=row["ended_at"],
            end_reason=row["end_reason"],
            ended_by=party(row["ended_by_user"], row["ended_by_device"]),
            has_snapshot=bool(row["has_snapshot"]),
            has_message=bool(row["has_message"]),
            timeline=json.loads(row["timeline"]) if timeline else None,
        )

    async def get_call(self, call_id: str) -> CallRecord:
        found = await self.find_call(call_id, timeline=True)
        if found is None:
            raise NotFound(f"no call '{call_id}'")
        return found

    async def find_call(self, call_id: str, timeline: bool = False) -> CallRecord | None:
        await self.db.flushed()
        row = await self.db.fetchrow(f"SELECT {self._CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,))
        return None if row is None else self._call(row, timeline)

    async def call_parties(self, call_id: str) -> list[str]:
        await self.db.flushed()
        return [r[0] for r in await self.db.fetch("SELECT user_id FROM call_parties WHERE call_id = ?", (call_id,))]

    async def list_calls(self, user_id: str | None, limit: int,
                         before: tuple[float, str] | None) -> list[CallRecord]:
        """Newest first; `before` is the (created_at, call_id) of the last call of the previous page."""
        await self.db.flushed()
        where, args = [], []  # type: list[str], list[Any]
        if user_id is not None:
            where.append("call_id IN (SELECT call_id FROM call_parties WHERE user_id = ?)")
            args.append(user_id)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND call_id < ?))")
            args += [before[0], before[0], before[1]]
        sql = f"SELECT {self._CALL_COLUMNS} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, call_id DESC LIMIT ?"
        rows = await self.db.fetch(sql, (*args, limit))
        return [self._call(r, timeline=False) for r in rows]

    async def snapshot(self, call_id: str) -> bytes:
        await self.db.flushed()
        row = await self.db.fetchrow("SELECT snapshot FROM calls WHERE call_id = ?", (call_id,))
        if row is None or row["snapshot"] is None:
            raise NotFound(f"no snapshot for call '{call_id}'")
        return bytes(row["snapshot"])

    async def add_message(self, call_id: str, size: int, at: float) -> None:
        await self.db.execute("INSERT INTO visitor_messages (call_id, bytes, created_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (call_id) DO UPDATE SET bytes = excluded.bytes, "
                              "created_at = excluded.created_at", (call_id, size, at))

    async def delete_message(self, call_id: str) -> None:
        await self.db.execute("DELETE FROM visitor_messages WHERE call_id = ?", (call_id,))

    async def has_message(self, call_id: str) -> bool:
        return await self.db.fetchrow("SELECT 1 FROM visitor_messages WHERE call_id = ?", (call_id,)) is not None

    async def messages(self) -> list[tuple[str, int, float]]:
        """Every message, oldest first: (call_id, bytes, created_at)."""
        return [(r[0], r[1], r[2]) for r in
                await self.db.fetch("SELECT call_id, bytes, created_at FROM visitor_messages ORDER BY created_at")]

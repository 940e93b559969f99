"""The door log: every opening asked, and how it went."""

from __future__ import annotations

import asyncio
from typing import Any

from intercom_protocol.calls import DeviceRef, iso

from .database import Database
from .store_users import Users


class AuditLog:
    def __init__(self, db: Database, users: Users) -> None:
        self.db = db
        self.users = users

    def audit(self, site_id: str, at: float, action: str, outcome: str, by: DeviceRef, call_id: str,
              door_id: str | None, detail: str | None) -> asyncio.Future[int]:
        """An entry of the door log; the future gives its id once it is on disk."""
        values = (site_id, at, action, outcome, by.user_id, by.device_id, call_id, door_id, detail)
        return self.db.write([(
            "INSERT INTO audit (site_id, at, action, outcome, user_id, device_id, call_id, door_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING audit_id", values)])

    def settle_audit(self, audit_id: int, outcome: str, detail: str | None) -> asyncio.Future[None]:
        """The outcome of an opening whose entry was written before the door was asked."""
        return self.db.write([("UPDATE audit SET outcome = ?, detail = ? WHERE audit_id = ?",
                               (outcome, detail, audit_id))])

    async def list_audit(self, site_id: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        """Newest first; `before` is the audit_id of the last entry of the previous page."""
        await self.db.flushed()
        await self.users.get_site(site_id)
        rows = await self.db.fetch(
            "SELECT * FROM audit WHERE site_id = ? AND audit_id < ? ORDER BY audit_id DESC LIMIT ?",
            (site_id, before if before is not None else 2**62, limit))
        return [{"audit_id": r["audit_id"], "at": iso(r["at"]), "action": r["action"], "outcome": r["outcome"],
                 "by": {"user_id": r["user_id"], "device_id": r["device_id"]}, "call_id": r["call_id"] or None,
                 "door_id": r["door_id"], "detail": r["detail"]} for r in rows]

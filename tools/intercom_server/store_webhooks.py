"""Each site's webhooks and how their deliveries went."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from typing import Any

from intercom_protocol.calls import iso

from .database import Database
from .records import (
    NotFound,
)
from .store_users import Users


class WebhookStore:
    def __init__(self, db: Database, users: Users) -> None:
        self.db = db
        self.users = users

    async def add_webhook(self, site_id: str, url: str, events: list[str], allow_http: bool) -> dict[str, Any]:
        """A receiver for this site's events; the answer holds its signing secret, shown once."""
        await self.users.get_site(site_id)
        webhook_id = "wh_" + secrets.token_hex(8)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        await self.db.execute("INSERT INTO webhooks (webhook_id, site_id, url, events, secret, allow_http, created_at) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (webhook_id, site_id, url, json.dumps(events), secret, int(allow_http), time.time()))
        return {**await self.get_webhook(site_id, webhook_id), "secret": secret}

    async def get_webhook(self, site_id: str, webhook_id: str) -> dict[str, Any]:
        await self.db.flushed()
        row = await self.db.fetchrow("SELECT * FROM webhooks WHERE site_id = ? AND webhook_id = ?",
                                     (site_id, webhook_id))
        if row is None:
            raise NotFound(f"no webhook '{webhook_id}' on site '{site_id}'")
        return self._webhook_json(row)

    async def list_webhooks(self, site_id: str) -> list[dict[str, Any]]:
        await self.users.get_site(site_id)
        await self.db.flushed()
        rows = await self.db.fetch("SELECT * FROM webhooks WHERE site_id = ? ORDER BY created_at", (site_id,))
        return [self._webhook_json(r) for r in rows]

    async def update_webhook(self, site_id: str, webhook_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """`url`, `events`, `allow_http`, or `enabled` (switching one on again clears its failures)."""
        await self.get_webhook(site_id, webhook_id)
        columns = {"url": changes.get("url"), "allow_http": changes.get("allow_http"),
                   "events": json.dumps(changes["events"]) if "events" in changes else None,
                   "enabled": changes.get("enabled")}
        sets = [f"{k} = ?" for k, v in columns.items() if v is not None]
        values = [int(v) if isinstance(v, bool) else v for v in columns.values() if v is not None]
        if changes.get("enabled") is True:
            sets += ["failures = 0", "disabled_reason = NULL"]
        if sets:
            await self.db.execute(f"UPDATE webhooks SET {', '.join(sets)} WHERE webhook_id = ?", (*values, webhook_id))
        return await self.get_webhook(site_id, webhook_id)

    async def delete_webhook(self, site_id: str, webhook_id: str) -> None:
        await self.get_webhook(site_id, webhook_id)
        await self.db.execute("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,))

    async def active_webhooks(self) -> list[Any]:
        """What the sender needs of every switched-on receiver, secrets included."""
        await self.db.flushed()  # a receiver just switched off stays off
        return await self.db.fetch("SELECT * FROM webhooks WHERE enabled = 1")

    def webhook_delivered(self, webhook_id: str, at: float) -> asyncio.Future[None]:
        return self.db.write([("UPDATE webhooks SET failures = 0, last_delivery_at = ? WHERE webhook_id = ?",
                               (at, webhook_id))])

    def webhook_failed(self, webhook_id: str, at: float, error: str, disable_reason: str | None) -> asyncio.Future[None]:
        """A delivery that failed for good; with `disable_reason`, the receiver is switched off."""
        return self.db.write([("UPDATE webhooks SET failures = failures + 1, last_error = ?, last_failure_at = ?, "
                               "enabled = CASE WHEN CAST(? AS TEXT) IS NULL THEN enabled ELSE 0 END, "
                               "disabled_reason = COALESCE(CAST(? AS TEXT), disabled_reason) WHERE webhook_id = ?",
                               (error, at, disable_reason, disable_reason, webhook_id))])

    @staticmethod
    def _webhook_json(row: Any) -> dict[str, Any]:
        return {"webhook_id": row["webhook_id"], "site_id": row["site_id"], "url": row["url"],
                "events": json.loads(row["events"]), "allow_http": bool(row["allow_http"]),
                "created_at": iso(row["created_at"]), "enabled": bool(row["enabled"]),
                "disabled_reason": row["disabled_reason"], "failures": row["failures"], "last_error": row["last_error"],
                "last_delivery_at": iso(row["last_delivery_at"]) if row["last_delivery_at"] else None,
                "last_failure_at": iso(row["last_failure_at"]) if row["last_failure_at"] else None}

"""Web Push subscriptions, one per device, each tied to the token that made it."""

from __future__ import annotations

import time
from typing import Any

from .database import Database
from .records import (
    Conflict,
)


class PushSubscriptions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save_subscription(self, user_id: str, device_id: str, token_id: str, endpoint: str, p256dh: str,
                                auth: str, per_user: int) -> float:
        """Add or replace a device's subscription; a user has at most `per_user` devices
        subscribed. Returns when it was made."""
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("SELECT COUNT(*) FROM push_subscriptions WHERE user_id = ? AND device_id != ?",
                                    (user_id, device_id))
            others = int(row[0]) if row is not None else 0
            if others >= per_user:
                raise Conflict(f"{others} devices of '{user_id}' already ring when their app is closed, the most "
                               f"allowed; switch it off on one of them first")
            await tx.execute(
                "INSERT INTO push_subscriptions VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE "
                "SET token_id = excluded.token_id, endpoint = excluded.endpoint, p256dh = excluded.p256dh, "
                "auth = excluded.auth, created_at = excluded.created_at",
                (user_id, device_id, token_id, endpoint, p256dh, auth, now))
        return now

    async def delete_subscription(self, user_id: str, device_id: str, endpoint: str | None = None) -> bool:
        """Remove a device's subscription (only if it still is `endpoint`, where given: a push
        service's 410 for an old one must not remove the one that replaced it)."""
        changed = await self.db.execute("DELETE FROM push_subscriptions WHERE user_id = ? AND device_id = ?"
                                        + (" AND endpoint = ?" if endpoint is not None else ""),
                                        (user_id, device_id) + ((endpoint,) if endpoint is not None else ()))
        return changed > 0

    async def subscriptions_fingerprint(self) -> tuple[int, float | None]:
        """Changes whenever a subscription is added, replaced or removed (by any process)."""
        row = await self.db.fetchrow("SELECT COUNT(*), MAX(created_at) FROM push_subscriptions")
        assert row is not None
        return int(row[0]), row[1]

    async def subscriptions(self, now: float | None = None) -> list[Any]:
        """Every subscription whose token is still valid, with the token's expiry."""
        now = time.time() if now is None else now
        return await self.db.fetch(
            "SELECT s.*, t.expires_at FROM push_subscriptions s JOIN tokens t ON t.token_id = s.token_id "
            "WHERE t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?) ORDER BY s.created_at",
            (now,))

"""Do-not-disturb, quiet hours and away, as the server keeps them."""

from __future__ import annotations

import json
from typing import Any

from .database import Database


class Rules:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def availability_rules(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        residents = {r["user_id"]: {"do_not_disturb": r["do_not_disturb"], "until": r["until"],
                                    "quiet_hours": json.loads(r["quiet_hours"])}
                     for r in await self.db.fetch("SELECT * FROM resident_rules")}
        sites = {r["site_id"]: {"away": r["away"], "time_zone": r["time_zone"]}
                 for r in await self.db.fetch("SELECT * FROM site_rules")}
        return residents, sites

    async def set_resident_rules(self, user_id: str, dnd: bool, until: float | None, quiet_hours: list[Any]) -> None:
        await self.db.execute(
            "INSERT INTO resident_rules (user_id, do_not_disturb, until, quiet_hours) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET do_not_disturb = excluded.do_not_disturb, until = excluded.until, "
            "quiet_hours = excluded.quiet_hours", (user_id, int(dnd), until, json.dumps(quiet_hours)))

    async def set_site_rules(self, site_id: str, away: bool, time_zone: str) -> None:
        await self.db.execute(
            "INSERT INTO site_rules (site_id, away, time_zone) VALUES (?, ?, ?) ON CONFLICT (site_id) DO UPDATE "
            "SET away = excluded.away, time_zone = excluded.time_zone", (site_id, int(away), time_zone))

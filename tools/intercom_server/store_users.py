"""Sites and the users of each (door stations and residents): immutable once made, but for their tokens."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .database import Database, IntegrityError
from .records import (
    USER_KINDS,
    Conflict,
    NotFound,
    Site,
    StoreError,
    User,
    UserKind,
    check_id,
    check_name,
)


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_site(self, site_id: str, name: str) -> Site:
        check_id("site_id", site_id)
        check_name("name", name)
        try:
            await self.db.execute("INSERT INTO sites VALUES (?, ?, ?)", (site_id, name, time.time()))
        except IntegrityError:
            raise Conflict(f"site '{site_id}' already exists") from None
        return await self.get_site(site_id)

    async def get_site(self, site_id: str) -> Site:
        row = await self.db.fetchrow("SELECT * FROM sites WHERE site_id = ?", (site_id,))
        if row is None:
            raise NotFound(f"no site '{site_id}'")
        return self._site(row)

    async def list_sites(self) -> list[Site]:
        return [self._site(r) for r in await self.db.fetch("SELECT * FROM sites ORDER BY site_id")]

    @staticmethod
    def _site(row: Any) -> Site:
        return Site(row["site_id"], row["name"], float(row["created_at"]))

    async def list_users(self, site_id: str) -> list[User]:
        await self.get_site(site_id)
        rows = await self.db.fetch("SELECT * FROM users WHERE site_id = ? ORDER BY user_id", (site_id,))
        return [self._user(r) for r in rows]

    async def doors(self, sites: Iterable[str] = ()) -> list[User]:
        """Every door station, or those of these sites."""
        wanted = list(sites)
        where = f" AND site_id IN ({','.join('?' * len(wanted))})" if wanted else ""
        rows = await self.db.fetch(f"SELECT * FROM users WHERE kind = 'door'{where} ORDER BY user_id", wanted)
        return [self._user(r) for r in rows]

    @staticmethod
    def _user(row: Any) -> User:
        return User(row["user_id"], UserKind(row["kind"]), row["site_id"], row["display_name"])

    async def add_user(self, user_id: str, kind: str, site_id: str, display_name: str) -> User:
        check_id("user_id", user_id)
        if kind not in USER_KINDS:
            raise StoreError(f"kind must be one of {', '.join(USER_KINDS)}")
        check_name("display_name", display_name)
        await self.get_site(site_id)
        try:
            await self.db.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                                  (user_id, kind, site_id, display_name, time.time()))
        except IntegrityError:
            raise Conflict(f"user '{user_id}' already exists") from None
        return await self.get_user(user_id)

    async def get_user(self, user_id: str) -> User:
        found = await self.find_user(user_id)
        if found is None:
            raise NotFound(f"no user '{user_id}'")
        return found

    async def find_user(self, user_id: str) -> User | None:
        row = await self.db.fetchrow("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else self._user(row)

    async def users_since(self, created_at: float) -> tuple[list[User], float]:
        """The users created at or after this time (all with 0), and the newest one's time."""
        rows = await self.db.fetch("SELECT * FROM users WHERE created_at >= ? ORDER BY created_at", (created_at,))
        return [self._user(r) for r in rows], max([created_at, *(float(r["created_at"]) for r in rows)])

    async def users_of(self, user_ids: Iterable[str]) -> dict[str, User]:
        ids = list(user_ids)
        if not ids:
            return {}
        rows = await self.db.fetch(f"SELECT * FROM users WHERE user_id IN ({','.join('?' * len(ids))})", ids)
        return {r["user_id"]: self._user(r) for r in rows}

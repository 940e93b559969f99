"""Who the users are, in memory: a press rings whoever it names while the database is down
or slow.

A user never changes kind, site or name once created, so what was read once stays true: all
users are read at start, and those created since are read when the database says it changed
(`refresh`, beside the revocation watch). One the memory does not know yet all the same is
read from the store and kept: only such a newcomer needs the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .database import DatabaseError
from .records import User
from .store import Store

log = logging.getLogger("intercom.server")


class Directory:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._users: dict[str, User] = {}
        self._newest = 0.0

    async def load(self) -> None:
        """At start: everyone, so the first press after it reads no disk."""
        await self.refresh()

    async def refresh(self) -> None:
        """Read the users created since the last look (by a shell command or another
        process): called when the database says something changed. A few seconds are read
        again, for clocks that differ between processes."""
        users, self._newest = await self._store.users.users_since(max(0.0, self._newest - 5.0))
        self._users.update((u.user_id, u) for u in users)

    async def users_of(self, user_ids: Iterable[str]) -> dict[str, User]:
        """The users among these ids that exist. Ids the memory does not know are asked of the
        store; while it does not answer they count as unknown, and the others still ring."""
        wanted = list(dict.fromkeys(user_ids))
        missing = [u for u in wanted if u not in self._users]
        if missing:
            try:
                self._users.update(await self._store.users.users_of(missing))
            except (DatabaseError, OSError) as exc:
                log.warning("could not look up %s (the database: %s); rung without them", ", ".join(missing), exc)
        return {u: self._users[u] for u in wanted if u in self._users}

    async def find(self, user_id: str) -> User | None:
        return (await self.users_of([user_id])).get(user_id)

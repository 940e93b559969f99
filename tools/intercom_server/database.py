"""What the store needs of an engine (`Database`), and the errors every engine reports. The two
engines are `sqlite.py`, the default (one file an installer backs up), and `postgres.py`
(asyncpg), for several server processes sharing one database; `store.open_database` picks one.

The store writes its SQL once, in the dialect both engines understand (`?` placeholders,
`INSERT ... ON CONFLICT`, `RETURNING`); the PostgreSQL engine numbers the placeholders and
translates the few column types that differ. Each engine reports its own errors as
`DatabaseError` (and a broken constraint as `IntegrityError`), so nothing above this module
imports sqlite3 or asyncpg.

SQLite is read on the event loop's own connection (a read takes microseconds, never the disk
lock), and what changes with every call is committed by the `Writer` thread, many commits to
one fsync. PostgreSQL is a network away: every statement is awaited, and a pool of connections
lets one slow query wait without holding the others.
"""

from __future__ import annotations

import asyncio
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

#: A statement and its parameters, for `Database.write`.
Statement = tuple[str, Sequence[Any]]


class DatabaseError(Exception):
    """The engine failed: unreachable, full, read-only, or a statement it refused."""


class IntegrityError(DatabaseError):
    """A key that exists already, or a reference to a row that does not."""


def is_url(target: str | os.PathLike[str]) -> bool:
    return str(target).startswith(("postgres://", "postgresql://"))


def redacted(url: str) -> str:
    """A database URL fit for a log line: its password replaced."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class Database(ABC):
    """What the store needs of an engine. Rows index by column name and by position."""

    dialect: str
    #: The SQLite file, None for PostgreSQL.
    path: str | None = None

    @abstractmethod
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

    async def fetchrow(self, sql: str, args: Sequence[Any] = ()) -> Any | None:
        rows = await self.fetch(sql, args)
        return rows[0] if rows else None

    @abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns how many rows it changed."""

    @abstractmethod
    def transaction(self) -> Any:
        """`async with db.transaction() as tx:` a Database whose statements commit together,
        or not at all if the block raises. It takes the write lock at once (SQLite's BEGIN
        IMMEDIATE), so a read-then-write inside it is not raced."""

    @abstractmethod
    def write(self, statements: Sequence[Statement]) -> asyncio.Future[Any]:
        """Statements that must be durable but need not hold up the caller's next step (a
        call's record, the door log): queued now, in order, and committed together with what
        else is queued. The future gives the first column of the last statement's first row
        (`RETURNING`), else None, or the engine's error as `DatabaseError`.

        A write's statements stand or fall together, and none may depend on another's effect
        (a row another inserts may be referenced, as its key, not read): PostgreSQL runs them
        as one statement, on one snapshot, to save round trips."""

    @abstractmethod
    async def flushed(self) -> None:
        """Resume once every `write` queued so far is committed or has failed."""

    @abstractmethod
    async def data_version(self) -> object:
        """A value that changes when anything (another process, a shell command) committed."""

    @abstractmethod
    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the migrations not yet applied, under a lock so two processes starting at once
        do not both apply one; returns the schema version now."""

    @abstractmethod
    async def close(self) -> None: ...

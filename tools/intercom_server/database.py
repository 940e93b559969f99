"""The two engines the store runs on: SQLite, the default (one file an installer backs up), and
PostgreSQL through asyncpg, for several server processes sharing one database.

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
import contextlib
import functools
import os
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .writer import Writer

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
        (`RETURNING`), else None, or the engine's error as `DatabaseError`."""

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


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._make_private(Path(path))
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.writer = Writer(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(f"cannot open the database {self.path}: {exc}") from None

    @staticmethod
    def _make_private(path: Path) -> None:
        """Create the file 0600, or take group and world access away from an existing one:
        it holds token hashes, visitors' pictures and the door log (SQLite gives its -wal
        and -shm files the same mode)."""
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a database file")
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            return self.db.execute(sql, tuple(args)).rowcount
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        # Nothing awaited inside suspends (every statement here is synchronous), so no other
        # task's statement can land in the middle of this transaction.
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise _translate(exc) from exc

    def write(self, statements: Sequence[Statement]) -> asyncio.Future[Any]:
        def job(db: sqlite3.Connection) -> Any:
            result = None
            try:
                for sql, args in statements:
                    cur = db.execute(sql, tuple(args))
                    row = cur.fetchone() if cur.description else None
                    result = row[0] if row is not None else None
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            return result
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()

        def settle(done: Future[Any]) -> None:
            if result.cancelled():
                return  # nobody waits any more; the write itself is not undone
            error = done.exception()
            if error is None:
                result.set_result(done.result())
            else:  # the transaction itself failed (BEGIN, COMMIT), or the job did
                result.set_exception(_translate(error) if isinstance(error, sqlite3.Error) else error)

        def committed(done: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to tell
                loop.call_soon_threadsafe(settle, done)
        # Submitted now, so writes keep their order; a waiter that gives up (a task cancelled
        # at shutdown) does not cancel the write.
        self.writer.submit(job).add_done_callback(committed)
        return result

    async def flushed(self) -> None:
        try:
            await asyncio.wrap_future(self.writer.submit(lambda db: None))
        except (sqlite3.Error, OSError):
            pass  # a database that refuses writes still has its queue drained

    async def data_version(self) -> object:
        """SQLite's data_version moves when another connection (the writer thread, a shell
        command) commits, so the server notices without polling the tables."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    async def migrate(self, migrations: Sequence[str]) -> int:
        try:
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            async with self.transaction():
                row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
                done = int(row[0] or 0)
                for number, script in enumerate(migrations[done:], start=done + 1):
                    for statement in _statements(script):
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO schema_version VALUES (?)", (number,))
            return max(done, len(migrations))
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        """Commits what is queued, then closes both connections."""
        self.writer.close()
        self.db.close()


def _translate(exc: sqlite3.Error) -> DatabaseError:
    kind = IntegrityError if isinstance(exc, sqlite3.IntegrityError) else DatabaseError
    return kind(str(exc))


# -- PostgreSQL ---------------------------------------------------------------------------------

#: Column types the schema names in SQLite's words, and PostgreSQL's for them.
_PG_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]
#: One key for every process's migrations (an advisory lock is a number).
_MIGRATION_LOCK = 0x1C0_7E12


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (the store's SQL holds no `?` in a string)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"
    return re.sub(r"\?", number, sql)


def pg_schema(script: str) -> str:
    for pattern, replacement in _PG_TYPES:
        script = pattern.sub(replacement, script)
    return script


class _PgConnection(Database):
    """Statements on one connection of the pool (a transaction's)."""

    dialect = "postgresql"

    def __init__(self, conn: Any, owner: PostgresDatabase) -> None:
        self._conn = conn
        self._owner = owner

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await _pg(self._conn.fetch(_numbered(sql), *args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _changed(await _pg(self._conn.execute(_numbered(sql), *args)))

    def transaction(self) -> Any:
        raise RuntimeError("a transaction inside a transaction")

    def write(self, statements: Sequence[Statement]) -> asyncio.Future[Any]:
        return self._owner.write(statements)

    async def flushed(self) -> None:
        pass

    async def data_version(self) -> object:
        return await self._owner.data_version()

    async def migrate(self, migrations: Sequence[str]) -> int:
        raise RuntimeError("migrate from the database, not from a transaction")

    async def close(self) -> None:
        pass


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, pool: Any) -> None:
        self.url = url
        self._pool = pool
        self._queue: list[tuple[Sequence[Statement], asyncio.Future[Any]]] = []
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = asyncio.get_running_loop().create_task(self._write_queued(), name="db-writer")

    @classmethod
    async def connect(cls, url: str, max_connections: int = 10, timeout_s: float = 5.0) -> PostgresDatabase:
        import asyncpg  # only a PostgreSQL set-up needs it

        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=max_connections, timeout=timeout_s,
                                             command_timeout=timeout_s * 2)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(f"cannot reach the database {redacted(url)}: {exc or type(exc).__name__}") from None
        return cls(url, pool)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await _pg(self._pool.fetch(_numbered(sql), *args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _changed(await _pg(self._pool.execute(_numbered(sql), *args)))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        async with _pg_errors():
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    yield _PgConnection(conn, self)

    def write(self, statements: Sequence[Statement]) -> asyncio.Future[Any]:
        """One task commits what queued meanwhile in one transaction, as SQLite's writer
        thread does: writes land in the order they were made (a call's answer after its
        record), and a burst of calls costs one commit, not one each."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((statements, future))
        self._queued.set()
        self._idle.clear()
        return future

    async def _write_queued(self) -> None:
        while True:
            await self._queued.wait()
            batch, self._queue = self._queue, []
            self._queued.clear()
            try:
                outcomes = await self._commit([s for s, _ in batch])
            except _OneFailed:  # one write was refused: each runs again alone, only it fails
                outcomes = [await self._alone(s) for s, _ in batch]
            except Exception as exc:  # noqa: BLE001 - the commit itself failed: every write fails with it
                failed = exc if isinstance(exc, DatabaseError) else DatabaseError(str(exc) or type(exc).__name__)
                outcomes = [(None, failed)] * len(batch)
            for (_, future), (result, error) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            if not self._queue:
                self._idle.set()

    async def _commit(self, writes: list[Sequence[Statement]]) -> list[tuple[Any, BaseException | None]]:
        results: list[tuple[Any, BaseException | None]] = []
        async with self.transaction() as tx:
            for statements in writes:
                result = None
                try:
                    for sql, args in statements:
                        rows = await tx.fetch(sql, args)
                        result = rows[0][0] if rows else None
                except DatabaseError as exc:
                    raise _OneFailed() from exc
                results.append((result, None))
        return results

    async def _alone(self, statements: Sequence[Statement]) -> tuple[Any, BaseException | None]:
        try:
            return (await self._commit([statements]))[0], None
        except _OneFailed as failed:
            return None, failed.__cause__
        except DatabaseError as exc:
            return None, exc

    async def flushed(self) -> None:
        await self._idle.wait()

    async def data_version(self) -> object:
        """The write-ahead log's position: it moves with every commit of any process."""
        return await _pg(self._pool.fetchval("SELECT pg_current_wal_lsn()::text"))

    async def migrate(self, migrations: Sequence[str]) -> int:
        async with self.transaction() as tx:
            conn = tx._conn  # type: ignore[attr-defined]
            await _pg(conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK))
            await _pg(conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            done = int(await _pg(conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")))
            for number, script in enumerate(migrations[done:], start=done + 1):
                await _pg(conn.execute(pg_schema(script)))
                await _pg(conn.execute("INSERT INTO schema_version VALUES ($1)", number))
        return max(done, len(migrations))

    async def close(self) -> None:
        """Commits what is queued, then closes the pool."""
        await self._idle.wait()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self._pool.close()


class _OneFailed(Exception):
    """One write of a batch was refused (its error is the cause)."""


def _changed(status: str) -> int:
    """asyncpg answers a statement with its command tag ("UPDATE 3"): the count is its last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _pg(awaitable: Any) -> Any:
    async with _pg_errors():
        return await awaitable


@asynccontextmanager
async def _pg_errors() -> AsyncIterator[None]:
    import asyncpg

    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(str(exc)) from exc
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DatabaseError(str(exc) or type(exc).__name__) from exc


async def open_database(target: str | os.PathLike[str]) -> Database:
    """A PostgreSQL URL (postgresql://user:password@host/dbname), else an SQLite file."""
    if is_url(target):
        return await PostgresDatabase.connect(str(target))
    return SQLiteDatabase(os.fspath(target))

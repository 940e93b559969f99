"""SQLite, the default engine: one file an installer backs up. Read on the event loop's own
connection (a read takes microseconds, never the disk lock); what changes with every call is
committed by the `Writer` thread, many commits to one fsync."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .database import Database, DatabaseError, IntegrityError, Statement
from .writer import Writer


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

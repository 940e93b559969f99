"""SQLite commits off the event loop, many to one fsync (group commit).

Every call wrote its record at the dial and at the end, each an fsync on the event loop's
thread: under 400 set-ups a second the loop waited on the disk, and the 99th percentile of a
set-up rose to 100-200 ms while the server used half a core. Here one thread owns a second
connection to the same file and commits whatever has queued meanwhile in one transaction,
with full durability (`synchronous=FULL` in WAL mode: a commit is on disk before its future
is resolved). A bad write fails alone: its batch is then run again job by job.

Reads on the loop's connection that must see these writes (a call's record, the door log)
wait for the queue to drain first (`wait_idle`); what the hot path reads (users, tokens) is
not written here.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

log = logging.getLogger("intercom.server.writer")

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]


class Writer:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._jobs: deque[tuple[Job, Future[Any]]] = deque()
        self._changed = threading.Condition()
        self._submitted = 0
        self._finished = 0
        self._closing = False
        #: Transactions committed and the jobs they carried, for the benchmarks.
        self.commits = 0
        self.jobs = 0
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run `job(connection)` in the next transaction; the future resolves once committed."""
        future: Future[T] = Future()
        with self._changed:
            if self._closing:
                raise RuntimeError("the database writer is closed")
            self._jobs.append((job, future))
            self._submitted += 1
            self._changed.notify_all()
        return future

    def wait_idle(self, timeout: float | None = 30.0) -> bool:
        """Block until every job submitted so far is committed (or failed)."""
        with self._changed:
            target = self._submitted
            return self._changed.wait_for(lambda: self._finished >= target, timeout)

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self._db.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:
                    return
                batch = list(self._jobs)
                self._jobs.clear()
            outcomes = self._commit(batch)
            for (_, future), (result, error) in zip(batch, outcomes, strict=True):
                try:
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
                except InvalidStateError:
                    pass  # its waiter gave up (cancelled at shutdown): committed all the same
            with self._changed:
                self._finished += len(batch)
                self._changed.notify_all()

    def _commit(self, batch: list[tuple[Job, Future[Any]]]) -> list[tuple[Any, BaseException | None]]:
        """The whole batch in one transaction; if a job fails, the batch is rolled back and each
        job runs again in a transaction of its own, so that only the bad one fails (a
        savepoint per job would cost two more statements for every write, every time)."""
        try:
            results = self._transaction([job for job, _ in batch])
        except _JobFailed:
            return [self._alone(job) for job, _ in batch]
        except Exception as exc:  # noqa: BLE001 - the commit itself failed: every job fails with it
            return [(None, exc)] * len(batch)
        return [(result, None) for result in results]

    def _alone(self, job: Job) -> tuple[Any, BaseException | None]:
        try:
            return self._transaction([job])[0], None
        except _JobFailed as failed:
            return None, failed.__cause__
        except Exception as exc:  # noqa: BLE001 - reported to whoever waits for this job
            return None, exc

    def _transaction(self, jobs: list[Job]) -> list[Any]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            results = []
            for job in jobs:
                try:
                    results.append(job(db))
                except Exception as exc:
                    raise _JobFailed() from exc
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rolling back a failed transaction")
            raise
        self.commits += 1
        self.jobs += len(jobs)
        return results


class _JobFailed(Exception):
    """One job of a transaction raised (its exception is the cause)."""

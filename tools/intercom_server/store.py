"""What the server keeps: sites, users, access tokens (as hashes only) and finished calls.

On SQLite (the default: one file an installer can back up, crash-safe, fast enough for a
building) or on PostgreSQL (several server processes sharing one database), with the same
schema and the same migrations: see `database.py` for what differs. What changes with every
call (its record, its answer and end, the door log) goes through `Database.write`, which on
SQLite commits many writes to one fsync off the event loop. The store is also used by
`intercom-server` shell commands while the server runs.
"""

from __future__ import annotations

import os

from .database import Database, DatabaseError, is_url
from .postgres import PostgresDatabase
from .sqlite import SQLiteDatabase
from .store_audit import AuditLog
from .store_calls import Calls
from .store_push import PushSubscriptions
from .store_rules import Rules
from .store_tokens import Tokens
from .store_users import Users
from .store_webhooks import WebhookStore

#: The schema, one step per release that changed it, applied in order on both engines (written
#: in SQLite's words; `postgres.pg_schema` translates the few types PostgreSQL names otherwise).
#: A step is never edited once released: a change is a new step.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS sites (
    site_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, kind TEXT NOT NULL, site_id TEXT NOT NULL REFERENCES sites(site_id),
    display_name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(user_id),
    token_hash TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user_id);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, caller_id TEXT NOT NULL, caller_device TEXT NOT NULL,
    callees TEXT NOT NULL, video INTEGER NOT NULL, created_at REAL NOT NULL,
    accepted_by_user TEXT, accepted_by_device TEXT, accepted_at REAL,
    ended_at REAL, end_reason TEXT, ended_by_user TEXT, ended_by_device TEXT,
    timeline TEXT NOT NULL DEFAULT '[]', snapshot BLOB);
CREATE INDEX IF NOT EXISTS calls_created ON calls(created_at);
CREATE TABLE IF NOT EXISTS call_parties (
    call_id TEXT NOT NULL REFERENCES calls(call_id), user_id TEXT NOT NULL,
    PRIMARY KEY (call_id, user_id));
CREATE INDEX IF NOT EXISTS call_parties_user ON call_parties(user_id);
CREATE TABLE IF NOT EXISTS audit (
    audit_id INTEGER PRIMARY KEY AUTOINCREMENT, site_id TEXT NOT NULL, at REAL NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,
    call_id TEXT NOT NULL, door_id TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS audit_site ON audit(site_id, audit_id);
CREATE INDEX IF NOT EXISTS tokens_hash ON tokens(token_hash);
CREATE TABLE IF NOT EXISTS invites (
    invite_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(user_id),
    code_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    redeemed_at REAL, token_id TEXT);
CREATE INDEX IF NOT EXISTS invites_user ON invites(user_id);
CREATE TABLE IF NOT EXISTS push_subscriptions (
    user_id TEXT NOT NULL REFERENCES users(user_id), device_id TEXT NOT NULL,
    token_id TEXT NOT NULL REFERENCES tokens(token_id), endpoint TEXT NOT NULL,
    p256dh TEXT NOT NULL, auth TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (user_id, device_id));
CREATE INDEX IF NOT EXISTS push_subscriptions_token ON push_subscriptions(token_id);
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(site_id), url TEXT NOT NULL,
    events TEXT NOT NULL, secret TEXT NOT NULL, allow_http INTEGER NOT NULL, created_at REAL NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1, disabled_reason TEXT, failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, last_delivery_at REAL, last_failure_at REAL);
CREATE INDEX IF NOT EXISTS webhooks_site ON webhooks(site_id);
CREATE TABLE IF NOT EXISTS resident_rules (
    user_id TEXT PRIMARY KEY REFERENCES users(user_id), do_not_disturb INTEGER NOT NULL, until REAL,
    quiet_hours TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visitor_messages (
    call_id TEXT PRIMARY KEY REFERENCES calls(call_id), bytes INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS site_rules (
    site_id TEXT PRIMARY KEY REFERENCES sites(site_id), away INTEGER NOT NULL, time_zone TEXT NOT NULL);
"""


MIGRATIONS = [SCHEMA_1]


async def open_database(target: str | os.PathLike[str]) -> Database:
    """A PostgreSQL URL (postgresql://user:password@host/dbname), else an SQLite file."""
    if is_url(target):
        return await PostgresDatabase.connect(str(target))
    return SQLiteDatabase(os.fspath(target))


class StoreUnavailable(Exception):
    """The database cannot be opened or written at all; the message is the one line to show."""


class Store:
    """Every method is awaited: on PostgreSQL each is a round trip; on SQLite none suspends.
    What it keeps is in one part per kind of record (`store.users`, `store.calls`...)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: The SQLite file; None on PostgreSQL.
        self.path = db.path
        self.users = Users(db)
        self.tokens = Tokens(db, self.users)
        self.calls = Calls(db)
        self.push = PushSubscriptions(db)
        self.rules = Rules(db)
        self.webhooks = WebhookStore(db, self.users)
        self.audit_log = AuditLog(db, self.users)

    @classmethod
    async def open(cls, target: str | os.PathLike[str]) -> Store:
        """Open (an SQLite file, or a postgresql:// URL) and bring the schema up to date."""
        try:
            db = await open_database(target)
        except (DatabaseError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None
        try:
            await db.migrate(MIGRATIONS)
        except DatabaseError as exc:
            await db.close()
            raise StoreUnavailable(f"cannot prepare the database: {exc}") from None
        return cls(db)

    async def ping(self) -> None:
        """Raises `DatabaseError` if the database does not answer."""
        await self.db.fetchrow("SELECT 1")

    async def changed_elsewhere(self) -> object:
        """Moves when another process or a shell command (`intercom-server token revoke`)
        commits, so the server notices without polling the tables."""
        return await self.db.data_version()

    async def flushed(self) -> None:
        """Resume once every write queued so far is committed or has failed (and the loop has
        run what waited on it)."""
        await self.db.flushed()

    async def close(self) -> None:
        """Commits what is queued, then closes the connections."""
        await self.db.close()

"""What the server keeps: sites, users, access tokens (as hashes only) and finished calls.

On SQLite (the default: one file an installer can back up, crash-safe, fast enough for a
building) or on PostgreSQL (several server processes sharing one database), with the same
schema and the same migrations: see `database.py` for what differs. What changes with every
call (its record, its answer and end, the door log) goes through `Database.write`, which on
SQLite commits many writes to one fsync off the event loop. The store is also used by
`intercom-server` shell commands while the server runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from intercom_protocol.calls import DeviceRef, ServerCall, iso
from intercom_protocol.messages import ErrorCode

from .database import Database, DatabaseError, IntegrityError, Statement, open_database

USER_KINDS = ("door", "resident")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_ID = re.compile(ID_PATTERN)
MAX_NAME = 100
#: A name needs one visible character; written so JSON Schema and Python read it alike.
NAME_PATTERN = r"[^ \t\r\n]"
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400
#: An invite is a link sent by message or shown as a QR code: short-lived, used once.
DEFAULT_INVITE_LIFETIME_S = 7 * 86400
MAX_INVITE_LIFETIME_S = 30 * 86400
#: A door's pairing code is used by the installer standing at the door, within the hour.
DEFAULT_PAIRING_LIFETIME_S = 3600

#: The schema, one step per release that changed it, applied in order on both engines (written
#: in SQLite's words; `database.pg_schema` translates the few types PostgreSQL names otherwise).
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


class StoreError(Exception):
    """A request the store refuses, in the protocol's words (the REST layer picks the HTTP status)."""

    code = ErrorCode.BAD_REQUEST


class NotFound(StoreError):
    code = ErrorCode.NOT_FOUND


class Forbidden(StoreError):
    code = ErrorCode.FORBIDDEN


class Conflict(StoreError):
    code = ErrorCode.CONFLICT


class Unauthenticated(StoreError):
    code = ErrorCode.UNAUTHENTICATED


def hash_token(token: str) -> str:
    """Access tokens carry 256 random bits, so one SHA-256 is enough: no password stretching."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_id(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise StoreError(f"{what} must be 1-64 characters of letters, digits, '.', '_', '@' or '-', "
                         f"starting with a letter or digit")
    return value


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not re.search(NAME_PATTERN, value) or len(value) > MAX_NAME:
        raise StoreError(f"{what} must be a string of 1 to {MAX_NAME} characters, not only spaces")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} is not valid Unicode text") from None
    return value


class Bearer(NamedTuple):
    """A valid access token given as `Authorization: Bearer`."""
    user_id: str
    token_id: str
    expires_at: float | None


class StoreUnavailable(Exception):
    """The database cannot be opened or written at all; the message is the one line to show."""


class Store:
    """Every method is awaited: on PostgreSQL each is a round trip; on SQLite none suspends."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: The SQLite file; None on PostgreSQL.
        self.path = db.path

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

    # -- sites and users -------------------------------------------------------------------

    async def add_site(self, site_id: str, name: str) -> dict[str, Any]:
        check_id("site_id", site_id)
        check_name("name", name)
        try:
            await self.db.execute("INSERT INTO sites VALUES (?, ?, ?)", (site_id, name, time.time()))
        except IntegrityError:
            raise Conflict(f"site '{site_id}' already exists") from None
        return await self.get_site(site_id)

    async def get_site(self, site_id: str) -> dict[str, Any]:
        row = await self.db.fetchrow("SELECT * FROM sites WHERE site_id = ?", (site_id,))
        if row is None:
            raise NotFound(f"no site '{site_id}'")
        return self._site_json(row)

    async def list_sites(self) -> list[dict[str, Any]]:
        return [self._site_json(r) for r in await self.db.fetch("SELECT * FROM sites ORDER BY site_id")]

    @staticmethod
    def _site_json(row: Any) -> dict[str, Any]:
        return {"site_id": row["site_id"], "name": row["name"], "created_at": iso(row["created_at"])}

    async def list_users(self, site_id: str) -> list[dict[str, Any]]:
        await self.get_site(site_id)
        rows = await self.db.fetch("SELECT * FROM users WHERE site_id = ? ORDER BY user_id", (site_id,))
        return [self._user_json(r) for r in rows]

    async def doors(self, sites: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every door station, or those of these sites."""
        wanted = list(sites)
        where = f" AND site_id IN ({','.join('?' * len(wanted))})" if wanted else ""
        rows = await self.db.fetch(f"SELECT * FROM users WHERE kind = 'door'{where} ORDER BY user_id", wanted)
        return [self._user_json(r) for r in rows]

    @staticmethod
    def _user_json(row: Any) -> dict[str, Any]:
        return {"user_id": row["user_id"], "kind": row["kind"], "site_id": row["site_id"],
                "display_name": row["display_name"]}

    async def add_user(self, user_id: str, kind: str, site_id: str, display_name: str) -> dict[str, Any]:
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

    async def get_user(self, user_id: str) -> dict[str, Any]:
        found = await self.find_user(user_id)
        if found is None:
            raise NotFound(f"no user '{user_id}'")
        return found

    async def find_user(self, user_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else self._user_json(row)

    # -- access tokens ---------------------------------------------------------------------

    async def issue_token(self, user_id: str, expires_in_s: float | None = None,
                          db: Database | None = None) -> dict[str, Any]:
        """A new token; its secret is returned here once and never stored."""
        db = db or self.db
        if await db.fetchrow("SELECT 1 FROM users WHERE user_id = ?", (user_id,)) is None:
            raise NotFound(f"no user '{user_id}'")
        if expires_in_s is not None and (isinstance(expires_in_s, bool) or not isinstance(expires_in_s, (int, float))
                                         or not 0 < expires_in_s <= MAX_TOKEN_LIFETIME_S):
            raise StoreError(f"expires_in_s must be a number of seconds above 0 and at most {MAX_TOKEN_LIFETIME_S}")
        now = time.time()
        token_id = "tok_" + secrets.token_hex(8)
        secret = "ict_" + secrets.token_urlsafe(32)
        expires_at = now + expires_in_s if expires_in_s else None
        await db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                         (token_id, user_id, hash_token(secret), now, expires_at))
        return {"token_id": token_id, "access_token": secret, "expires_at": iso(expires_at) if expires_at else None}

    async def list_tokens(self, user_id: str) -> list[dict[str, Any]]:
        await self.get_user(user_id)
        rows = await self.db.fetch("SELECT * FROM tokens WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at",
                                   (user_id,))
        return [{"token_id": r["token_id"], "created_at": iso(r["created_at"]),
                 "expires_at": iso(r["expires_at"]) if r["expires_at"] else None} for r in rows]

    async def revoke_token(self, user_id: str, token_id: str) -> None:
        async with self.db.transaction() as tx:
            changed = await tx.execute("UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND token_id = ? "
                                       "AND revoked_at IS NULL", (time.time(), user_id, token_id))
            if changed == 0:
                raise NotFound(f"no token '{token_id}' for user '{user_id}'")
            await self._drop_subscriptions(tx, token_id)

    async def revoke_secret(self, user_id: str, token: str) -> str | None:
        """Sign-out: the holder of a token (already checked, see `token_owner`) revokes it.
        Returns the token's id, so its live sessions can be ended."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND token_hash = ? "
                                    "AND revoked_at IS NULL RETURNING token_id",
                                    (time.time(), user_id, hash_token(token)))
            if row is None:
                return None
            await self._drop_subscriptions(tx, str(row[0]))
        return str(row[0])

    @staticmethod
    async def _drop_subscriptions(tx: Database, token_id: str) -> None:
        """A phone signed out or cut off is never woken again: its push subscriptions go with
        the token that made them, in the same transaction."""
        await tx.execute("DELETE FROM push_subscriptions WHERE token_id = ?", (token_id,))

    # -- invites -----------------------------------------------------------------------------

    async def create_invite(self, user_id: str, expires_in_s: float | None = None) -> dict[str, Any]:
        """A one-time code a resident's phone exchanges for an access token, so nobody types
        or copies tokens. Kept as a hash, like tokens; shown once."""
        if (await self.get_user(user_id))["kind"] != "resident":
            raise Conflict(f"'{user_id}' is a door station: invites are for residents' phones; "
                           f"pair a door with `intercom-server door pair {user_id}`")
        return await self._one_time_code(user_id, DEFAULT_INVITE_LIFETIME_S if expires_in_s is None else expires_in_s)

    async def create_pairing(self, door_id: str, expires_in_s: float | None = None) -> dict[str, Any]:
        """A door's invite: `intercom pair LINK` on the board exchanges it for the door's own
        token, so no secret is copied between SSH sessions by hand. Short-lived by default: the
        installer pairs the door while standing at it."""
        if (await self.get_user(door_id))["kind"] != "door":
            raise Conflict(f"'{door_id}' is a resident: pairing codes are for door stations; "
                           f"a phone signs in with `intercom-server invite {door_id}`")
        return await self._one_time_code(door_id, DEFAULT_PAIRING_LIFETIME_S if expires_in_s is None else expires_in_s)

    async def _one_time_code(self, user_id: str, lifetime: float) -> dict[str, Any]:
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) \
                or not 0 < lifetime <= MAX_INVITE_LIFETIME_S:
            raise StoreError(f"expires_in_s must be a number of seconds above 0 and at most {MAX_INVITE_LIFETIME_S}")
        now = time.time()
        invite_id = "inv_" + secrets.token_hex(8)
        code = secrets.token_urlsafe(24)  # 192 bits: short enough for a QR code, far too many to guess
        await self.db.execute("INSERT INTO invites VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                              (invite_id, user_id, hash_token(code), now, now + lifetime))
        return {"invite_id": invite_id, "user_id": user_id, "code": code, "expires_at": iso(now + lifetime)}

    async def redeem_invite(self, code: str, now: float | None = None, kind: str = "resident") -> dict[str, Any]:
        """Exchange an invite's (or, with kind="door", a pairing's) code for a new access token,
        exactly once.

        The single UPDATE is the check and the claim together, so two phones racing with the
        same code cannot both win. Unknown, used and expired codes get the same answer, and so
        does a door's code given to the web app: a browser never signs in as a door."""
        now = time.time() if now is None else now
        what = "invite" if kind == "resident" else "pairing code"
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE invites SET redeemed_at = ? WHERE code_hash = ? AND redeemed_at IS NULL AND expires_at > ? "
                "AND user_id IN (SELECT user_id FROM users WHERE kind = ?) RETURNING invite_id, user_id",
                (now, hash_token(code), now, kind))
            if row is None:
                raise Unauthenticated(f"this {what} is unknown, already used or expired; ask for a new one")
            token = await self.issue_token(row["user_id"], db=tx)
            await tx.execute("UPDATE invites SET token_id = ? WHERE invite_id = ?", (token["token_id"], row["invite_id"]))
        return {**token, "user": await self.get_user(row["user_id"])}

    async def list_invites(self, user_id: str) -> list[dict[str, Any]]:
        await self.get_user(user_id)
        rows = await self.db.fetch("SELECT * FROM invites WHERE user_id = ? ORDER BY created_at", (user_id,))
        return [{"invite_id": r["invite_id"], "created_at": iso(r["created_at"]), "expires_at": iso(r["expires_at"]),
                 "redeemed_at": iso(r["redeemed_at"]) if r["redeemed_at"] else None, "token_id": r["token_id"]}
                for r in rows]

    async def verify_token(self, user_id: str, token: str, now: float | None = None) -> bool:
        return await self.check_token(user_id, token, now) is not None

    async def check_token(self, user_id: str, token: str,
                          now: float | None = None) -> tuple[str, float | None] | None:
        """The (token_id, expires_at) of a valid token of this user, else None.

        Constant-time over the candidate hashes, so timing says nothing about the secret. The
        server keeps the id with the session, to end it when the token is revoked or expires."""
        digest = hash_token(token)
        now = time.time() if now is None else now
        rows = await self.db.fetch("SELECT token_id, token_hash, expires_at FROM tokens WHERE user_id = ? "
                                   "AND revoked_at IS NULL", (user_id,))
        found = None
        for row in rows:
            match = hmac.compare_digest(row["token_hash"], digest)
            if match and (row["expires_at"] is None or row["expires_at"] > now):
                found = (str(row["token_id"]), row["expires_at"])
        return found

    async def invalid_tokens(self, token_ids: Iterable[str], now: float | None = None) -> set[str]:
        """Which of these tokens are revoked, expired or gone."""
        ids = list(dict.fromkeys(token_ids))
        now = time.time() if now is None else now
        valid: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            valid.update(r[0] for r in await self.db.fetch(
                f"SELECT token_id FROM tokens WHERE token_id IN ({','.join('?' * len(chunk))}) "
                "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)", (*chunk, now)))
        return set(ids) - valid

    async def token_owner(self, token: str, now: float | None = None) -> Bearer | None:
        """Whose a bearer token is, for HTTP requests that carry no user id."""
        digest = hash_token(token)
        now = time.time() if now is None else now
        row = await self.db.fetchrow("SELECT user_id, token_id, token_hash, expires_at FROM tokens "
                                     "WHERE token_hash = ? AND revoked_at IS NULL", (digest,))
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None
        return Bearer(str(row["user_id"]), str(row["token_id"]), row["expires_at"])

    # -- push subscriptions ------------------------------------------------------------------

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

    # -- calls -----------------------------------------------------------------------------

    # Each write below reads the call now and hands plain values to the engine: the call goes
    # on changing while the write waits its turn.

    @staticmethod
    def _insert_call(call: ServerCall, snapshot: bytes | None) -> list[Statement]:
        row = (call.call_id, call.caller.user_id, call.caller.device_id, json.dumps(list(call.callees)),
               int(call.video), call.created_at, snapshot)
        parties = [("INSERT INTO call_parties VALUES (?, ?) ON CONFLICT DO NOTHING", (call.call_id, u))
                   for u in dict.fromkeys((call.caller.user_id, *call.callees))]
        return [("INSERT INTO calls (call_id, caller_id, caller_device, callees, video, created_at, snapshot) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", row), *parties]

    def record_call(self, call: ServerCall, snapshot: bytes | None) -> asyncio.Future[None]:
        """Written at the dial, so a crash mid-call leaves a trace that start-up closes."""
        return self.db.write(self._insert_call(call, snapshot))

    def set_snapshot(self, call_id: str, snapshot: bytes) -> asyncio.Future[None]:
        return self.db.write([("UPDATE calls SET snapshot = ? WHERE call_id = ?", (snapshot, call_id))])

    def accept_call(self, call: ServerCall) -> asyncio.Future[None]:
        """Written when it happens: a crash mid-call leaves a record that says who answered."""
        accepted = call.accepted_by
        assert accepted is not None
        values = (accepted.user_id, accepted.device_id, call.accepted_at, call.call_id)
        return self.db.write([(
            "UPDATE calls SET accepted_by_user = ?, accepted_by_device = ?, accepted_at = ? WHERE call_id = ?",
            values)])

    def finish_call(self, call: ServerCall, snapshot: bytes | None = None) -> asyncio.Future[None]:
        """The call's end; a call whose first write had failed (the bell rang anyway) is
        recorded whole now (a missed press is recorded whole at once, with its picture)."""
        by = call.ended_by
        accepted = call.accepted_by
        values = (accepted.user_id if accepted else None, accepted.device_id if accepted else None, call.accepted_at,
                  call.ended_at, str(call.end_reason), by.user_id if by else None, by.device_id if by else None,
                  json.dumps([{"at": iso(t), "event": e, **d} for t, e, d in call.timeline]), call.call_id)
        return self.db.write([*self._insert_call(call, snapshot), (
            "UPDATE calls SET accepted_by_user = ?, accepted_by_device = ?, accepted_at = ?, ended_at = ?, "
            "end_reason = ?, ended_by_user = ?, ended_by_device = ?, timeline = ? WHERE call_id = ?", values)])

    async def close_interrupted_calls(self, started_before: float | None = None) -> int:
        """Calls live when the server last stopped can no longer be reached: they end `unknown`.
        In a cluster, only those older than any call can live (`started_before`): their state
        was lost with Redis."""
        now = time.time()
        return await self.db.execute("UPDATE calls SET ended_at = ?, end_reason = 'unknown' WHERE ended_at IS NULL "
                                     "AND created_at < ?", (now, now if started_before is None else started_before))

    def _call_json(self, row: Any, timeline: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "call_id": row["call_id"],
            "caller": {"user_id": row["caller_id"], "device_id": row["caller_device"]},
            "callees": json.loads(row["callees"]),
            "video": bool(row["video"]),
            "created_at": iso(row["created_at"]),
            "accepted_by": ({"user_id": row["accepted_by_user"], "device_id": row["accepted_by_device"]}
                            if row["accepted_by_user"] else None),
            "accepted_at": iso(row["accepted_at"]) if row["accepted_at"] else None,
            "ended_at": iso(row["ended_at"]) if row["ended_at"] else None,
            "end_reason": row["end_reason"],
            "ended_by": ({"user_id": row["ended_by_user"], "device_id": row["ended_by_device"]}
                         if row["ended_by_user"] else None),
            "duration_s": (round(row["ended_at"] - row["accepted_at"], 3)
                           if row["ended_at"] and row["accepted_at"] else None),
            "has_snapshot": bool(row["has_snapshot"]),
            "has_message": bool(row["has_message"]),
        }
        if timeline:
            result["timeline"] = json.loads(row["timeline"])
        return result

    _CALL_COLUMNS = ("call_id, caller_id, caller_device, callees, video, created_at, accepted_by_user, "
                     "accepted_by_device, accepted_at, ended_at, end_reason, ended_by_user, ended_by_device, "
                     "timeline, snapshot IS NOT NULL AS has_snapshot, "
                     "EXISTS (SELECT 1 FROM visitor_messages m WHERE m.call_id = calls.call_id) AS has_message")

    async def get_call(self, call_id: str) -> dict[str, Any]:
        await self.db.flushed()
        row = await self.db.fetchrow(f"SELECT {self._CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,))
        if row is None:
            raise NotFound(f"no call '{call_id}'")
        return self._call_json(row, timeline=True)

    async def call_parties(self, call_id: str) -> list[str]:
        await self.db.flushed()
        return [r[0] for r in await self.db.fetch("SELECT user_id FROM call_parties WHERE call_id = ?", (call_id,))]

    async def list_calls(self, user_id: str | None, limit: int,
                         before: tuple[float, str] | None) -> list[dict[str, Any]]:
        """Newest first; `before` is the (created_at, call_id) of the last call of the previous page."""
        await self.db.flushed()
        where, args = [], []  # type: list[str], list[Any]
        if user_id is not None:
            where.append("call_id IN (SELECT call_id FROM call_parties WHERE user_id = ?)")
            args.append(user_id)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND call_id < ?))")
            args += [before[0], before[0], before[1]]
        sql = f"SELECT {self._CALL_COLUMNS}, created_at AS ts FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, call_id DESC LIMIT ?"
        rows = await self.db.fetch(sql, (*args, limit))
        return [{**self._call_json(r, timeline=False), "_cursor": (r["ts"], r["call_id"])} for r in rows]

    async def snapshot(self, call_id: str) -> bytes:
        await self.db.flushed()
        row = await self.db.fetchrow("SELECT snapshot FROM calls WHERE call_id = ?", (call_id,))
        if row is None or row["snapshot"] is None:
            raise NotFound(f"no snapshot for call '{call_id}'")
        return bytes(row["snapshot"])

    async def users_of(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(user_ids)
        if not ids:
            return {}
        rows = await self.db.fetch(f"SELECT * FROM users WHERE user_id IN ({','.join('?' * len(ids))})", ids)
        return {r["user_id"]: self._user_json(r) for r in rows}

    # -- visitors' messages (the files are the MessageBox's) -----------------------------------------

    async def add_message(self, call_id: str, size: int, at: float) -> None:
        await self.db.execute("INSERT INTO visitor_messages (call_id, bytes, created_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (call_id) DO UPDATE SET bytes = excluded.bytes, "
                              "created_at = excluded.created_at", (call_id, size, at))

    async def delete_message(self, call_id: str) -> None:
        await self.db.execute("DELETE FROM visitor_messages WHERE call_id = ?", (call_id,))

    async def has_message(self, call_id: str) -> bool:
        return await self.db.fetchrow("SELECT 1 FROM visitor_messages WHERE call_id = ?", (call_id,)) is not None

    async def messages(self) -> list[tuple[str, int, float]]:
        """Every message, oldest first: (call_id, bytes, created_at)."""
        return [(r[0], r[1], r[2]) for r in
                await self.db.fetch("SELECT call_id, bytes, created_at FROM visitor_messages ORDER BY created_at")]

    async def call_row(self, call_id: str) -> Any | None:
        await self.db.flushed()
        return await self.db.fetchrow(
            "SELECT caller_id, accepted_by_user, ended_at, callees FROM calls WHERE call_id = ?", (call_id,))

    # -- who may be rung: do-not-disturb, quiet hours, away ------------------------------------------

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

    # -- webhooks: the secret signs each delivery, so it is kept as given (the file is 0600) --------

    async def add_webhook(self, site_id: str, url: str, events: list[str], allow_http: bool) -> dict[str, Any]:
        """A receiver for this site's events; the answer holds its signing secret, shown once."""
        await self.get_site(site_id)
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
        await self.get_site(site_id)
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

    # -- the door's audit log ----------------------------------------------------------------

    def audit(self, site_id: str, at: float, action: str, outcome: str, by: DeviceRef, call_id: str,
              door_id: str | None, detail: str | None) -> asyncio.Future[int]:
        """An entry of the door log; the future gives its id once it is on disk."""
        values = (site_id, at, action, outcome, by.user_id, by.device_id, call_id, door_id, detail)
        return self.db.write([(
            "INSERT INTO audit (site_id, at, action, outcome, user_id, device_id, call_id, door_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING audit_id", values)])

    def settle_audit(self, audit_id: int, outcome: str, detail: str | None) -> asyncio.Future[None]:
        """The outcome of an opening whose entry was written before the door was asked."""
        return self.db.write([("UPDATE audit SET outcome = ?, detail = ? WHERE audit_id = ?",
                               (outcome, detail, audit_id))])

    async def list_audit(self, site_id: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        """Newest first; `before` is the audit_id of the last entry of the previous page."""
        await self.db.flushed()
        await self.get_site(site_id)
        rows = await self.db.fetch(
            "SELECT * FROM audit WHERE site_id = ? AND audit_id < ? ORDER BY audit_id DESC LIMIT ?",
            (site_id, before if before is not None else 2**62, limit))
        return [{"audit_id": r["audit_id"], "at": iso(r["at"]), "action": r["action"], "outcome": r["outcome"],
                 "by": {"user_id": r["user_id"], "device_id": r["device_id"]}, "call_id": r["call_id"] or None,
                 "door_id": r["door_id"], "detail": r["detail"]} for r in rows]

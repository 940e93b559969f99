"""Access tokens (as hashes only), invites and pairings: the one-time codes that become tokens."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Any

from intercom_protocol.calls import iso

from .database import Database
from .records import (
    DEFAULT_INVITE_LIFETIME_S,
    DEFAULT_PAIRING_LIFETIME_S,
    MAX_INVITE_LIFETIME_S,
    MAX_TOKEN_LIFETIME_S,
    Bearer,
    Conflict,
    NotFound,
    StoreError,
    Unauthenticated,
    UserKind,
    hash_token,
)
from .store_users import Users


class Tokens:
    def __init__(self, db: Database, users: Users) -> None:
        self.db = db
        self.users = users

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
        await self.users.get_user(user_id)
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

    async def create_invite(self, user_id: str, expires_in_s: float | None = None) -> dict[str, Any]:
        """A one-time code a resident's phone exchanges for an access token, so nobody types
        or copies tokens. Kept as a hash, like tokens; shown once."""
        if (await self.users.get_user(user_id)).kind != UserKind.RESIDENT:
            raise Conflict(f"'{user_id}' is a door station: invites are for residents' phones; "
                           f"pair a door with `intercom-server door pair {user_id}`")
        return await self._one_time_code(user_id, DEFAULT_INVITE_LIFETIME_S if expires_in_s is None else expires_in_s)

    async def create_pairing(self, door_id: str, expires_in_s: float | None = None) -> dict[str, Any]:
        """A door's invite: `intercom pair LINK` on the board exchanges it for the door's own
        token, so no secret is copied between SSH sessions by hand. Short-lived by default: the
        installer pairs the door while standing at it."""
        if (await self.users.get_user(door_id)).kind != UserKind.DOOR:
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
        what = "invite" if kind == UserKind.RESIDENT else "pairing code"
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE invites SET redeemed_at = ? WHERE code_hash = ? AND redeemed_at IS NULL AND expires_at > ? "
                "AND user_id IN (SELECT user_id FROM users WHERE kind = ?) RETURNING invite_id, user_id",
                (now, hash_token(code), now, kind))
            if row is None:
                raise Unauthenticated(f"this {what} is unknown, already used or expired; ask for a new one")
            token = await self.issue_token(row["user_id"], db=tx)
            await tx.execute("UPDATE invites SET token_id = ? WHERE invite_id = ?", (token["token_id"], row["invite_id"]))
        return {**token, "user": await self.users.get_user(row["user_id"])}

    async def list_invites(self, user_id: str) -> list[dict[str, Any]]:
        await self.users.get_user(user_id)
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

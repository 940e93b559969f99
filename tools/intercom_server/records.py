"""What the store's parts share: its refusals (in the protocol's words), the checks of ids and
names, and the limits the Platform API states."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from intercom_protocol.calls import iso
from intercom_protocol.messages import ErrorCode


class UserKind(StrEnum):
    """What a user is: a door station calls residents of its site, a resident calls its doors.
    A `str`, so a user's JSON and the protocol carry it as the word itself."""
    DOOR = "door"
    RESIDENT = "resident"


USER_KINDS = tuple(str(k) for k in UserKind)


@dataclass(frozen=True, slots=True)
class Site:
    """A house or a building: its doors ring its residents and no one else."""
    site_id: str
    name: str
    created_at: float

    def json(self) -> dict[str, Any]:
        return {"site_id": self.site_id, "name": self.name, "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class User:
    """A door station or a resident. Immutable once made (only its tokens change), so a copy
    held in memory stays true."""
    user_id: str
    kind: UserKind
    site_id: str
    display_name: str

    def json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "kind": str(self.kind), "site_id": self.site_id,
                "display_name": self.display_name}

    def caller_json(self) -> dict[str, str]:
        """As a ring names its caller to the phones: who, not where."""
        return {"user_id": self.user_id, "display_name": self.display_name, "kind": str(self.kind)}


@dataclass(frozen=True, slots=True)
class Party:
    """One device of one user, as the call history names who answered or ended a call."""
    user_id: str
    device_id: str

    def json(self) -> dict[str, str]:
        return {"user_id": self.user_id, "device_id": self.device_id}


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as the history keeps it. Times are epoch seconds here and ISO 8601 in its JSON;
    `timeline` is there when one call is read, not in a page of the history."""
    call_id: str
    caller: Party
    callees: tuple[str, ...]
    video: bool
    created_at: float
    accepted_by: Party | None
    accepted_at: float | None
    ended_at: float | None
    end_reason: str | None
    ended_by: Party | None
    has_snapshot: bool
    has_message: bool
    timeline: list[dict[str, Any]] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None or self.accepted_at is None:
            return None
        return round(self.ended_at - self.accepted_at, 3)

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "call_id": self.call_id,
            "caller": self.caller.json(),
            "callees": list(self.callees),
            "video": self.video,
            "created_at": iso(self.created_at),
            "accepted_by": self.accepted_by.json() if self.accepted_by else None,
            "accepted_at": iso(self.accepted_at) if self.accepted_at else None,
            "ended_at": iso(self.ended_at) if self.ended_at else None,
            "end_reason": self.end_reason,
            "ended_by": self.ended_by.json() if self.ended_by else None,
            "duration_s": self.duration_s,
            "has_snapshot": self.has_snapshot,
            "has_message": self.has_message,
        }
        if self.timeline is not None:
            result["timeline"] = self.timeline
        return result


def record_json(value: Any) -> Any:
    """`json.dumps`'s `default`: a record answers as its JSON, so a handler can return records."""
    if isinstance(value, (Site, User, Party, CallRecord)):
        return value.json()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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

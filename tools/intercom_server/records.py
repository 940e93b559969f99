"""What the store's parts share: its refusals (in the protocol's words), the checks of ids and
names, and the limits the Platform API states."""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Any, NamedTuple

from intercom_protocol.messages import ErrorCode


class UserKind(StrEnum):
    """What a user is: a door station calls residents of its site, a resident calls its doors.
    A `str`, so a user's JSON and the protocol carry it as the word itself."""
    DOOR = "door"
    RESIDENT = "resident"


USER_KINDS = tuple(str(k) for k in UserKind)


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

"""Wire protocol v1: the JSON messages the door, the server and the residents exchange.

Sans-I/O on purpose: parsing and building messages touches no socket, so every rule of the
contract (docs/protocol.md) is checked here once and tested without a network. The server
uses `parse_request` on what clients send; clients use `parse_incoming` on what the server
sends, which is lenient about fields it does not know so that newer servers stay compatible.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

PROTOCOL_PATH = "/v1/ws"
#: A base64 snapshot of 256 KiB is ~342 KiB of text; SDP adds a few KiB.
MAX_MESSAGE_BYTES = 512 * 1024
MAX_SNAPSHOT_BYTES = 256 * 1024
MAX_CALLEES = 64
#: Calls one device may claim when it signs in (a door or a phone holds one or two).
MAX_CLAIMED_CALLS = 16
#: Quick replies a door offers, each {id, label}; the label is what the resident taps.
MAX_QUICK_REPLIES = 8
MAX_REPLY_LABEL = 80
QUICK_REPLY_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
MAX_RING_TIMEOUT_S = 300.0
#: A press reported after an outage older than this is history, not news.
MAX_MISSED_AGE_S = 7 * 24 * 3600
#: Close code when the first message is not a successful authenticate in time.
CLOSE_UNAUTHENTICATED = 4401
#: Close code when the session's access token was revoked or expired: signing in again fails.
CLOSE_TOKEN_REVOKED = 4403
#: Close code for a session replaced by the same device signing in again elsewhere (another tab).
CLOSE_REPLACED = 4409
#: WebSocket's own "service restart": the server process stops (a rolling restart of a
#: cluster); connect again at once, through the load balancer, to another process.
CLOSE_SERVICE_RESTART = 1012
#: An escaped UTF-16 surrogate, the only way JSON text can carry a string that is not valid
#: Unicode (a WebSocket text frame is checked UTF-8 already).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    INTERNAL = "internal"


class EndReason(StrEnum):
    """Why a call ended (Sendbird's vocabulary)."""

    NO_ANSWER = "no_answer"
    CANCELED = "canceled"
    DECLINED = "declined"
    OTHER_DEVICE_ACCEPTED = "other_device_accepted"
    COMPLETED = "completed"
    CONNECTION_LOST = "connection_lost"
    TIMED_OUT = "timed_out"
    DIAL_FAILED = "dial_failed"
    UNKNOWN = "unknown"
    #: Every callee was in do-not-disturb, in quiet hours, or their site away: nobody was rung.
    UNAVAILABLE = "unavailable"


class ProtocolError(Exception):
    """A message the receiver cannot act on; becomes an `error` reply, never a disconnect."""

    def __init__(self, code: ErrorCode, message: str, re: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.re = re

    def reply(self) -> dict[str, Any]:
        return error(self.re, self.code, self.message)


B = TypeVar("B")


@dataclass(frozen=True)
class Request(Generic[B]):
    """A validated client request: its type, its `id`, and its typed body (`REQUEST_BODIES`)."""

    type: str
    id: str
    body: B


def _check_description(value: Any, kind: str) -> None:
    if not isinstance(value, dict) or value.get("type") != kind or not isinstance(value.get("sdp"), str):
        raise ValueError(f'must be {{"type": "{kind}", "sdp": "..."}}')
    if not value["sdp"].startswith("v=0"):
        raise ValueError("sdp is not a session description (it must start with v=0)")


def _check_callees(value: Any, kind: str) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of user ids")
    if len(value) > MAX_CALLEES:
        raise ValueError(f"at most {MAX_CALLEES} callees")
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError("must contain only non-empty strings")


def _check_ring_timeout(value: Any, kind: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_RING_TIMEOUT_S:
        raise ValueError(f"must be a number of seconds in (0, {MAX_RING_TIMEOUT_S:g}]")


def _check_snapshot(value: Any, kind: str) -> None:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    if len(value) * 3 // 4 > MAX_SNAPSHOT_BYTES:
        raise ValueError(f"is larger than {MAX_SNAPSHOT_BYTES // 1024} KiB")


def _check_past_time(value: Any, kind: str) -> None:
    """An ISO 8601 UTC time in the last week and not in the future (a minute of clock skew)."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time such as 2026-11-21T09:30:00Z")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 time such as 2026-11-21T09:30:00Z") from None
    if at.tzinfo is None:
        raise ValueError("must carry its time zone (Z for UTC)")
    age = time.time() - at.timestamp()
    if not -60 <= age <= MAX_MISSED_AGE_S:
        raise ValueError("must be within the last 7 days, not in the future")


def _call_ids(value: Any, kind: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_CLAIMED_CALLS:
        raise ValueError(f"must be a list of at most {MAX_CLAIMED_CALLS} call ids")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise ValueError("must contain only call ids (non-empty strings)")


def check_quick_replies(value: Any, kind: str = "") -> None:
    if not isinstance(value, list) or len(value) > MAX_QUICK_REPLIES:
        raise ValueError(f"must be a list of at most {MAX_QUICK_REPLIES} quick replies")
    for item in value:
        if not isinstance(item, dict) or set(item) != {"id", "label"} or not isinstance(item["id"], str) \
                or not QUICK_REPLY_ID.match(item["id"]) or not isinstance(item["label"], str) \
                or not 0 < len(item["label"].strip()) <= MAX_REPLY_LABEL:
            raise ValueError(f'must contain {{"id": "a-z, 0-9, _ or -", "label": "1 to {MAX_REPLY_LABEL} characters"}}')
    if len({item["id"] for item in value}) != len(value):
        raise ValueError("must not name one id twice")


#: What a bridge (the SIP gateway) may say of itself in `authenticate` and `status`.
BRIDGE_STATES = frozenset({"registering", "registered", "failed", "unregistered"})


def _check_bridge(value: Any, kind: str) -> None:
    if not isinstance(value, dict) or set(value) - {"kind", "registration", "detail"}:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bridge must be {kind, registration, detail}")
    if not isinstance(value.get("kind"), str) or not 0 < len(value["kind"]) <= 32:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bridge.kind must be a short string, such as 'sip'")
    if value.get("registration") not in BRIDGE_STATES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bridge.registration must be one of {', '.join(sorted(BRIDGE_STATES))}")
    if not isinstance(value.get("detail", ""), str) or len(value.get("detail", "")) > 300:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "bridge.detail must be a string of at most 300 characters")


def _nonempty_str(value: Any, kind: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError("must be a non-empty string of at most 256 characters")


def _boolean(value: Any, kind: str) -> None:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")


def _field(check: Callable[[Any, str], None], arg: str = "", *, optional: bool = False) -> Any:
    """A request field and the check its value must pass; optional fields default to None."""
    metadata = {"check": check, "arg": arg}
    return field(default=None, metadata=metadata) if optional else field(metadata=metadata)


# The client requests: one typed body each, its fields checked in the order written here.


@dataclass(frozen=True, kw_only=True)
class Authenticate:
    user_id: str = _field(_nonempty_str)
    access_token: str = _field(_nonempty_str)
    device_id: str | None = _field(_nonempty_str, optional=True)
    calls: list[str] | None = _field(_call_ids, optional=True)
    #: A door's quick replies, offered to the residents its visitor's ring reaches.
    quick_replies: list[dict[str, str]] | None = _field(check_quick_replies, optional=True)
    #: A bridge's state (the SIP gateway's registration), shown to the operator in /healthz.
    bridge: dict[str, str] | None = _field(_check_bridge, optional=True)


@dataclass(frozen=True, kw_only=True)
class Dial:
    callees: list[str] = _field(_check_callees)
    video: bool | None = _field(_boolean, optional=True)
    offer: dict[str, Any] = _field(_check_description, "offer")
    ring_timeout_s: float | None = _field(_check_ring_timeout, optional=True)
    snapshot: str | None = _field(_check_snapshot, optional=True)


@dataclass(frozen=True, kw_only=True)
class Accept:
    call_id: str = _field(_nonempty_str)
    answer: dict[str, Any] = _field(_check_description, "answer")


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    call_id: str = _field(_nonempty_str)
    snapshot: str = _field(_check_snapshot)


@dataclass(frozen=True, kw_only=True)
class Decline:
    call_id: str = _field(_nonempty_str)


@dataclass(frozen=True, kw_only=True)
class End:
    call_id: str = _field(_nonempty_str)


@dataclass(frozen=True, kw_only=True)
class Missed:
    callees: list[str] = _field(_check_callees)
    pressed_at: str = _field(_check_past_time)
    snapshot: str | None = _field(_check_snapshot, optional=True)


@dataclass(frozen=True, kw_only=True)
class Action:
    call_id: str = _field(_nonempty_str)
    name: str = _field(_nonempty_str)
    #: For `quick_reply`: the id of the door's quick reply.
    reply: str | None = _field(_nonempty_str, optional=True)


@dataclass(frozen=True, kw_only=True)
class Status:
    """A bridge's state changed (the SIP gateway lost or regained its registration)."""
    bridge: dict[str, str] = _field(_check_bridge)


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Deauthenticate:
    pass


#: Every client request, by type: the one table of protocol v1's requests.
REQUEST_BODIES: dict[str, type[Any]] = {
    "authenticate": Authenticate, "dial": Dial, "accept": Accept, "snapshot": Snapshot, "decline": Decline,
    "end": End, "missed": Missed, "action": Action, "status": Status, "ping": Ping, "deauthenticate": Deauthenticate,
}
REQUEST_TYPES = frozenset(REQUEST_BODIES)


# The server's events: one typed class each. The server builds its messages from them; clients
# parse what they receive into them (`parse_event`), leniently: a field they do not know is
# ignored, so a newer server stays compatible.


def _omitted_when_none() -> Any:
    """An optional field that is left out of the message when it has no value."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """A callee's device rings (`expires_in_s`: the ring's lifetime, by the receiver's clock)."""

    type: ClassVar[str] = "incoming"
    call_id: str
    caller: dict[str, Any]
    video: bool = True
    offer: dict[str, Any]
    created_at: str
    expires_in_s: float | None = _omitted_when_none()
    snapshot_url: str | None = _omitted_when_none()
    #: What the resident may send the visitor without answering ({id, label} each).
    quick_replies: list[dict[str, str]] | None = _omitted_when_none()


@dataclass(frozen=True, kw_only=True)
class Ringing:
    """To the caller: how many devices ring (0: nobody is online now)."""

    type: ClassVar[str] = "ringing"
    call_id: str
    devices: int


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """To the caller: who answered, and the answer to its offer."""

    type: ClassVar[str] = "accepted"
    call_id: str
    by: dict[str, Any]
    answer: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class SnapshotReady:
    """The visitor's picture, sent after the ring, can be fetched."""

    type: ClassVar[str] = "snapshot"
    call_id: str
    snapshot_url: str


@dataclass(frozen=True, kw_only=True)
class Ended:
    type: ClassVar[str] = "ended"
    call_id: str
    reason: str
    by: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class MissedPress:
    """A press the door could not dial in time, reported afterwards."""

    type: ClassVar[str] = "missed"
    call_id: str
    caller: dict[str, Any]
    pressed_at: str
    snapshot_url: str | None = _omitted_when_none()


Event = Incoming | Ringing | Accepted | SnapshotReady | Ended | MissedPress
#: Every server event, by type: the one table of protocol v1's events.
EVENTS: dict[str, type[Event]] = {cls.type: cls for cls in (Incoming, Ringing, Accepted, SnapshotReady, Ended, MissedPress)}
#: What the server sends without being asked (docs/protocol.md); each carries a `call_id`.
EVENT_TYPES = tuple(EVENTS)


def event_message(event: Event) -> dict[str, Any]:
    """The wire form of an event."""
    message: dict[str, Any] = {"type": event.type}
    for item in fields(event):
        value = getattr(event, item.name)
        if value is not None or not item.metadata.get("omit_none"):
            message[item.name] = value
    return message


def parse_event(data: dict[str, Any]) -> Event | None:
    """A received event as its typed class; None for anything else (a reply, `pong`, a type
    this client does not know, or an event that lacks what it must carry)."""
    cls = EVENTS.get(str(data.get("type")))
    if cls is None or not isinstance(data.get("call_id"), str):
        return None
    known = {item.name for item in fields(cls)}
    try:
        return cls(**{name: value for name, value in data.items() if name in known})
    except TypeError:  # a required field is missing
        return None
#: Replies a client sends to the server's own requests (e.g. the door answering `action`).
REPLY_TYPES = frozenset({"ok", "error"})


def decode(text: str | bytes) -> dict[str, Any]:
    """Decode one frame into a JSON object, or raise ProtocolError(bad_request/too_large)."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "JSON nested too deeply") from None
    if _has_invalid_text(text, data):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            "text must be valid Unicode: a \\u escape names a lone surrogate")
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
    if not isinstance(data.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message needs a string 'type'", _re_of(data))
    return data


def _has_invalid_text(text: str | bytes, data: Any) -> bool:
    """Whether a decoded frame holds a lone surrogate (`"\\ud800"`): valid JSON, but not text
    that UTF-8 can store or send on, so a device id holding one once broke the audit insert
    after the door had opened. Checked only when the raw frame has such an escape."""
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if not _SURROGATE_ESCAPE.search(raw):
        return False
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _re_of(data: dict[str, Any]) -> str | None:
    value = data.get("id")
    return value if isinstance(value, str) else None


def parse_request(text: str | bytes) -> Request[Any] | dict[str, Any]:
    """Validate a frame a client sent to the server.

    Returns a Request, or the raw dict for a reply (`ok`/`error` with `re`) to one of the
    server's own requests. Raises ProtocolError, carrying the request id when there was one,
    so the caller can answer with `error` and keep the connection.
    """
    data = decode(text)
    kind = data["type"]
    if kind in REPLY_TYPES:
        if not isinstance(data.get("re"), str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{kind}' needs a string 're'")
        return data
    re = _re_of(data)
    if kind not in REQUEST_BODIES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown message type '{kind}'", re)
    if re is None or not re or len(re) > 128:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request needs a string 'id' of 1 to 128 characters")
    spec = REQUEST_BODIES[kind]
    values: dict[str, Any] = {}
    for item in fields(spec):
        name = item.name
        if name not in data:
            if item.default is MISSING:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{kind}' needs '{name}'", re)
            continue
        try:
            item.metadata["check"](data[name], item.metadata["arg"])
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{kind}.{name}' {exc}", re) from None
        values[name] = data[name]
    unknown = sorted(set(data) - {item.name for item in fields(spec)} - {"type", "id"})
    if unknown:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{kind}' has unknown fields: {', '.join(unknown)}", re)
    body = spec(**values)
    return Request(kind, re, body)


def parse_incoming(text: str | bytes) -> dict[str, Any]:
    """Decode a frame a client received; unknown fields are kept, not rejected."""
    return decode(text)


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def ok(re: str | None, **body: Any) -> dict[str, Any]:
    return {"type": "ok", "re": re, **body}


def error(re: str | None, code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"type": "error", "re": re, "code": str(code), "message": message}


def event(kind: str, **body: Any) -> dict[str, Any]:
    return {"type": kind, **body}


def request(kind: str, id: str, **body: Any) -> dict[str, Any]:
    return {"type": kind, "id": id, **body}

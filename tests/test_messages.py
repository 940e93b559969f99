"""The wire format: what the server accepts, and the exact error for what it does not."""

import json
import time

import pytest

from intercom_protocol import messages as m
from intercom_protocol.calls import iso
from intercom_protocol.messages import ErrorCode, ProtocolError, Request

from .conftest import ANSWER, OFFER


def parse(obj: object) -> Request | dict:
    return m.parse_request(json.dumps(obj))


def test_every_request_type_parses_with_its_fields():
    samples = {
        "authenticate": {"user_id": "alice", "access_token": "t", "device_id": "phone"},
        "dial": {"callees": ["alice"], "video": True, "offer": OFFER, "ring_timeout_s": 20, "snapshot": "AAAA"},
        "accept": {"call_id": "c1", "answer": ANSWER},
        "snapshot": {"call_id": "c1", "snapshot": "AAAA"},
        "decline": {"call_id": "c1"},
        "end": {"call_id": "c1"},
        "action": {"call_id": "c1", "name": "open_door"},
        "missed": {"callees": ["alice"], "pressed_at": iso(time.time() - 600), "snapshot": "AAAA"},
        "ping": {},
        "deauthenticate": {},
    }
    assert set(samples) == m.REQUEST_TYPES
    for kind, body in samples.items():
        req = parse({"type": kind, "id": "r1", **body})
        assert req == Request(kind, "r1", m.REQUEST_BODIES[kind](**body))


def test_replies_to_server_requests_pass_through():
    assert parse({"type": "ok", "re": "s1"}) == {"type": "ok", "re": "s1"}
    with pytest.raises(ProtocolError) as exc:
        parse({"type": "ok"})
    assert exc.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("text, code, fragment, re", [
    ("{not json", ErrorCode.BAD_REQUEST, "not valid JSON", None),
    ("[1, 2]", ErrorCode.BAD_REQUEST, "JSON object", None),
    ('{"id": "r1"}', ErrorCode.BAD_REQUEST, "'type'", "r1"),
    ('{"type": "teleport", "id": "r2"}', ErrorCode.BAD_REQUEST, "unknown message type 'teleport'", "r2"),
    ('{"type": "ping"}', ErrorCode.BAD_REQUEST, "'id'", None),
    ('{"type": "dial", "id": "r3", "callees": []}', ErrorCode.BAD_REQUEST, "'dial.callees' must be a non-empty", "r3"),
    ('{"type": "dial", "id": "r4", "callees": ["a"]}', ErrorCode.BAD_REQUEST, "'dial' needs 'offer'", "r4"),
    ('{"type": "accept", "id": "r5", "call_id": "c", "answer": {"type": "offer", "sdp": "v=0"}}',
     ErrorCode.BAD_REQUEST, "'accept.answer' must be", "r5"),
    ('{"type": "end", "id": "r6", "call_id": "c", "extra": 1}', ErrorCode.BAD_REQUEST, "unknown fields: extra", "r6"),
    ('{"type": "dial", "id": "r7", "callees": ["a"], "offer": {"type": "offer", "sdp": "v=0"}, "ring_timeout_s": true}',
     ErrorCode.BAD_REQUEST, "ring_timeout_s", "r7"),
])
def test_malformed_messages_get_a_specific_error_carrying_the_request_id(text, code, fragment, re):
    with pytest.raises(ProtocolError) as exc:
        m.parse_request(text)
    assert exc.value.code is code
    assert fragment in exc.value.message
    reply = exc.value.reply()
    assert reply == {"type": "error", "re": re, "code": str(code), "message": exc.value.message}


def test_oversized_frames_are_too_large_before_any_parsing():
    with pytest.raises(ProtocolError) as exc:
        m.parse_request("x" * (m.MAX_MESSAGE_BYTES + 1))
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_snapshot_over_256_kib_is_refused():
    big = "A" * ((m.MAX_SNAPSHOT_BYTES * 4) // 3 + 8)
    with pytest.raises(ProtocolError, match="larger than 256 KiB"):
        parse({"type": "dial", "id": "r", "callees": ["a"], "offer": OFFER, "snapshot": big})


def test_clients_keep_unknown_fields_of_server_events():
    event = m.parse_incoming('{"type": "ringing", "call_id": "c", "devices": 2, "future_field": 1}')
    assert event["future_field"] == 1


@pytest.mark.parametrize("pressed_at, why", [
    ("yesterday", "ISO 8601"),
    ("2026-11-21T09:30:00", "time zone"),
    (iso(time.time() + 3600), "not in the future"),
    (iso(time.time() - 8 * 24 * 3600), "last 7 days"),
    (1732181400, "ISO 8601"),
])
def test_a_missed_press_needs_a_recent_time_with_its_zone(pressed_at, why):
    with pytest.raises(ProtocolError) as exc:
        parse({"type": "missed", "id": "r1", "callees": ["alice"], "pressed_at": pressed_at})
    assert exc.value.code is ErrorCode.BAD_REQUEST and why in exc.value.message and exc.value.re == "r1"

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
        "status": {"bridge": {"kind": "sip", "registration": "failed", "detail": "fritz.box did not answer"}},
        "ping": {},
        "deauthenticate": {},
    }
    assert set(samples) == m.REQUEST_TYPES
    for kind, body in samples.items():
        req = parse({"type": kind, "id": "r1", **body})
        assert req == Request(kind, "r1", m.REQUEST_BODIES[kind](**body))


@pytest.mark.parametrize("bridge", [
    "sip", {"kind": "sip"}, {"kind": "sip", "registration": "maybe"}, {"kind": "", "registration": "registered"},
    {"kind": "sip", "registration": "registered", "detail": "x" * 301},
    {"kind": "sip", "registration": "registered", "extra": 1},
])
def test_a_malformed_bridge_state_is_a_bad_request(bridge):
    for kind, body in (("status", {"bridge": bridge}),
                       ("authenticate", {"user_id": "a", "access_token": "t", "bridge": bridge})):
        with pytest.raises(ProtocolError) as exc:
            parse({"type": kind, "id": "r1", **body})
        assert exc.value.code is ErrorCode.BAD_REQUEST and "bridge" in exc.value.message


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


def test_events_are_built_and_read_back_by_one_table():
    by = {"user_id": "alice", "device_id": "phone"}
    samples = [
        m.Incoming(call_id="c1", caller={"user_id": "door"}, offer=OFFER, created_at=iso(time.time()), expires_in_s=29.5),
        m.Ringing(call_id="c1", devices=2),
        m.Accepted(call_id="c1", by=by, answer=ANSWER),
        m.SnapshotReady(call_id="c1", snapshot_url="/v1/direct_calls/c1/snapshot"),
        m.Ended(call_id="c1", reason="completed"),
        m.MissedPress(call_id="c2", caller={"user_id": "door"}, pressed_at=iso(time.time() - 60)),
    ]
    assert [type(e).type for e in samples] == list(m.EVENT_TYPES)
    for event in samples:
        message = m.event_message(event)
        assert m.parse_event(json.loads(m.encode(message))) == event
    # Left out when it has no value, sent as null when "nobody" is the answer.
    assert "snapshot_url" not in m.event_message(samples[0]) and m.event_message(samples[4])["by"] is None
    # Lenient, as a client of a newer server must be: unknown fields are ignored...
    assert m.parse_event({"type": "ringing", "call_id": "c1", "devices": 1, "new": True}) == m.Ringing(call_id="c1", devices=1)
    # ...and what is not an event it can act on is None, never an exception.
    assert m.parse_event({"type": "ringing", "call_id": "c1"}) is None  # lacks devices
    assert m.parse_event({"type": "pong"}) is None and m.parse_event({"type": "ended", "call_id": 7}) is None

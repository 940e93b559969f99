"""Every transition of the call contract, decided by the sans-I/O machines alone."""

import pytest

from intercom_protocol.calls import (
    LINK_GRACE_S,
    MEDIA_GONE_GRACE_S,
    MEDIA_SILENCE_S,
    CallError,
    CallState,
    ClientCall,
    DeviceRef,
    InvalidTransition,
    ServerCall,
)
from intercom_protocol.messages import ErrorCode

from .conftest import ANSWER, OFFER

DOOR = DeviceRef("door", "door")
ALICE_PHONE = DeviceRef("alice", "phone")
ALICE_TABLET = DeviceRef("alice", "tablet")
BOB_PHONE = DeviceRef("bob", "phone")


def new_call(devices=(ALICE_PHONE, ALICE_TABLET, BOB_PHONE)) -> tuple[ServerCall, list]:
    call = ServerCall(call_id="c1", caller=DOOR, caller_info={"user_id": "door", "display_name": "Door", "kind": "door"},
                      callees=("alice", "bob"), video=True, offer=OFFER, created_at=1000.0, ring_timeout_s=30)
    return call, call.ring(list(devices), 1000.0)


def by_target(sends) -> dict:
    out: dict = {}
    for s in sends:
        out.setdefault(s.to, []).append(s.message)
    return out


def ended_reasons(sends) -> dict:
    return {s.to: s.message["reason"] for s in sends if s.message["type"] == "ended"}


def test_dial_rings_every_device_of_every_callee_and_tells_the_caller_how_many():
    call, sends = new_call()
    sent = by_target(sends)
    for device in (ALICE_PHONE, ALICE_TABLET, BOB_PHONE):
        [incoming] = sent[device]
        assert incoming["type"] == "incoming" and incoming["offer"] == OFFER and incoming["caller"]["kind"] == "door"
    assert sent[DOOR] == [{"type": "ringing", "call_id": "c1", "devices": 3}]
    assert call.state is CallState.RINGING
    assert call.ring_deadline == 1030.0


def test_nobody_online_rings_zero_devices_and_a_device_that_signs_in_then_rings():
    call, sends = new_call(devices=())
    assert by_target(sends)[DOOR][0]["devices"] == 0
    late = call.reach(ALICE_PHONE, 1005.0)
    assert [s.message["type"] for s in late] == ["incoming"] and late[0].to == ALICE_PHONE
    assert call.reach(DeviceRef("mallory", "x"), 1005.0) == []  # not a callee
    assert call.reach(ALICE_PHONE, 1006.0) == []  # already ringing


def test_first_accept_wins_and_other_devices_are_told():
    call, _ = new_call()
    sends = call.accept(ALICE_TABLET, ANSWER, 1002.0)
    sent = by_target(sends)
    assert sent[DOOR] == [{"type": "accepted", "call_id": "c1", "by": {"user_id": "alice", "device_id": "tablet"},
                           "answer": ANSWER}]
    assert ended_reasons(sends) == {ALICE_PHONE: "other_device_accepted", BOB_PHONE: "other_device_accepted"}
    assert call.state is CallState.CONNECTED and call.accepted_by == ALICE_TABLET


def test_two_devices_accepting_at_once_one_wins_the_other_gets_conflict():
    call, _ = new_call()
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    with pytest.raises(CallError) as exc:
        call.accept(BOB_PHONE, ANSWER, 1002.0)
    assert exc.value.code is ErrorCode.CONFLICT
    assert call.accepted_by == ALICE_PHONE
    with pytest.raises(CallError) as exc:
        call.decline(BOB_PHONE, 1002.0)
    assert exc.value.code is ErrorCode.CONFLICT


def test_decline_from_one_of_several_devices_keeps_the_others_ringing():
    call, _ = new_call()
    assert call.decline(BOB_PHONE, 1001.0) == []
    assert call.state is CallState.RINGING
    assert set(call.ringing) == {ALICE_PHONE, ALICE_TABLET}
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    assert call.accepted_by == ALICE_PHONE


def test_decline_from_every_device_ends_declined_with_one_ended_each():
    call, _ = new_call()
    call.decline(ALICE_PHONE, 1001.0)
    call.decline(ALICE_TABLET, 1001.5)
    sends = call.decline(BOB_PHONE, 1002.0)
    assert call.state is CallState.ENDED and call.end_reason == "declined"
    assert ended_reasons(sends) == {DOOR: "declined", ALICE_PHONE: "declined", ALICE_TABLET: "declined",
                                    BOB_PHONE: "declined"}
    assert len(sends) == 4


def test_caller_ending_while_ringing_cancels_for_every_ringing_device():
    call, _ = new_call()
    sends = call.end(DOOR, 1003.0)
    assert ended_reasons(sends) == {DOOR: "canceled", ALICE_PHONE: "canceled", ALICE_TABLET: "canceled",
                                    BOB_PHONE: "canceled"}
    assert sends[0].message["by"] == {"user_id": "door", "device_id": "door"}


def test_end_after_accept_completes_from_either_party():
    for ender in (DOOR, ALICE_PHONE):
        call, _ = new_call()
        call.accept(ALICE_PHONE, ANSWER, 1002.0)
        sends = call.end(ender, 1010.0)
        assert ended_reasons(sends) == {DOOR: "completed", ALICE_PHONE: "completed"}
        assert call.ended_by == ender


def test_end_crossing_an_accept_whichever_arrives_first_decides():
    call, _ = new_call()
    call.end(DOOR, 1003.0)  # the cancel got there first
    with pytest.raises(CallError) as exc:
        call.accept(ALICE_PHONE, ANSWER, 1003.0)
    assert exc.value.code is ErrorCode.CONFLICT and call.end_reason == "canceled"

    call, _ = new_call()
    call.accept(ALICE_PHONE, ANSWER, 1003.0)  # the accept got there first
    call.end(DOOR, 1003.0)
    assert call.end_reason == "completed"


def test_a_ringing_callee_that_ends_declines():
    call, _ = new_call(devices=(ALICE_PHONE,))
    sends = call.end(ALICE_PHONE, 1001.0)
    assert call.end_reason == "declined" and ended_reasons(sends)[DOOR] == "declined"


def test_ring_timeout_ends_no_answer_but_not_after_an_accept():
    call, _ = new_call()
    sends = call.expire(1030.0)
    assert call.end_reason == "no_answer" and len(ended_reasons(sends)) == 4

    call, _ = new_call()
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    assert call.expire(1030.0) == []
    assert call.state is CallState.CONNECTED


def test_max_duration_times_out_a_connected_call():
    call, _ = new_call()
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    sends = call.time_out(4600.0)
    assert ended_reasons(sends) == {DOOR: "timed_out", ALICE_PHONE: "timed_out"}


def test_losing_a_party_ends_connection_lost_losing_a_ringing_phone_does_not():
    call, _ = new_call()
    assert call.lose(BOB_PHONE, 1001.0) == []
    assert call.state is CallState.RINGING and BOB_PHONE not in call.ringing
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    sends = call.lose(ALICE_PHONE, 1005.0)
    assert call.end_reason == "connection_lost" and DOOR in ended_reasons(sends)


def test_after_a_decline_the_last_ringing_device_dropping_off_ends_declined():
    call, _ = new_call(devices=(ALICE_PHONE, BOB_PHONE))
    call.decline(ALICE_PHONE, 1001.0)
    sends = call.lose(BOB_PHONE, 1002.0)
    assert call.end_reason == "declined" and ended_reasons(sends)[DOOR] == "declined"


def test_strangers_and_ended_calls_are_refused():
    call, _ = new_call()
    stranger = DeviceRef("mallory", "laptop")
    for action in (lambda: call.accept(stranger, ANSWER, 1.0), lambda: call.decline(stranger, 1.0),
                   lambda: call.end(stranger, 1.0)):
        with pytest.raises(CallError) as exc:
            action()
        assert exc.value.code is ErrorCode.FORBIDDEN
    call.end(DOOR, 1003.0)
    for action in (lambda: call.end(DOOR, 1.0), lambda: call.decline(ALICE_PHONE, 1.0)):
        with pytest.raises(CallError) as exc:
            action()
        assert exc.value.code is ErrorCode.CONFLICT
    assert call.expire(1030.0) == [] and call.time_out(1.0) == [] and call.lose(DOOR, 1.0) == []


def test_timeline_records_each_step():
    call, _ = new_call(devices=(ALICE_PHONE,))
    call.accept(ALICE_PHONE, ANSWER, 1002.0)
    call.end(ALICE_PHONE, 1010.0)
    assert [e for _, e, _ in call.timeline] == ["ringing", "accepted", "ended"]


def test_client_call_follows_the_legal_path_for_caller_and_callee():
    caller = ClientCall(role="caller")
    caller.dialed("c1")
    caller.ringing()
    caller.accepted(1.0, {"user_id": "alice"})
    assert caller.media_state("connected", 1.1) is None and caller.state is CallState.CONNECTED
    caller.ended("completed")
    assert caller.state is CallState.ENDED and caller.end_reason == "completed" and not caller.live
    caller.ended("unknown")  # a second `ended` changes nothing
    assert caller.end_reason == "completed"

    callee = ClientCall.incoming("c2", {"user_id": "door"})
    assert callee.state is CallState.RINGING
    callee.ended("other_device_accepted")
    assert callee.end_reason == "other_device_accepted"


@pytest.mark.parametrize("steps", [
    ["accepted"],                   # dialing -> connecting
    ["ringing", "ringing"],
])
def test_client_call_refuses_illegal_steps(steps):
    call = ClientCall(role="caller")
    *first, last = steps
    for step in first:
        getattr(call, step)()
    with pytest.raises(InvalidTransition):
        getattr(call, last)(*([0.0] if last == "accepted" else []))


def test_media_connecting_before_an_answer_changes_nothing():
    call = ClientCall(role="caller")
    call.ringing()
    assert call.media_state("connected", 1.0) is None and call.state is CallState.RINGING
    assert call.media_state("closed", 1.0) is None and call.live  # a ring's peer connection has nothing to lose


# -- a party's own clocks: the fault cases, against a given clock -----------------------------


def test_a_caller_gives_up_by_its_own_deadline_when_the_server_never_says_no_answer():
    call = ClientCall.dial(now=100.0, ring_timeout_s=30)
    call.dialed("c1")
    call.ringing()
    assert call.deadline() == 135.0  # the ring timeout plus the margin
    assert call.expire(134.9) is None and call.live
    assert call.expire(135.0) == "no_answer"
    assert call.state is CallState.ENDED and call.unanswered and call.claims() == []


def test_a_ring_whose_link_is_gone_gives_up_but_an_answered_call_waits_for_its_media():
    ringing = ClientCall.dial(now=0.0, ring_timeout_s=60)
    ringing.dialed("c1")
    ringing.link_lost(10.0)
    assert ringing.deadline() == 10.0 + LINK_GRACE_S
    assert ringing.expire(10.0 + LINK_GRACE_S) == "connection_lost" and ringing.unanswered
    answered = ClientCall.dial(now=0.0, ring_timeout_s=60)
    answered.dialed("c2")
    answered.ringing()
    answered.accepted(1.0)
    answered.media_state("connected", 1.5)
    answered.link_lost(10.0)
    answered.media_heard(10.0)
    # Only the media's own silence clock runs: the lost link does not end it.
    assert answered.deadline() == 10.0 + MEDIA_SILENCE_S and answered.expire(19.9) is None and answered.live
    assert answered.claims() == ["c2"]


@pytest.mark.parametrize("role", ["caller", "callee"])
def test_an_answered_call_whose_media_falls_silent_ends_whatever_its_peer_connection_says(role):
    """A party that died or lost its network: the peer connection may stay `connected` (aiortc
    waits ~30 s for ICE consent, then closes instead of failing); the silence decides."""
    call = ClientCall.dial(0.0, 30) if role == "caller" else ClientCall.incoming("c1", {"user_id": "door"}, 0.0, 30)
    if role == "caller":
        call.dialed("c1")
        call.ringing()
    call.accepted(2.0)
    assert call.deadline() == 2.0 + MEDIA_SILENCE_S  # a peer that never connects is as silent
    call.media_state("connected", 2.5)
    for t in (4.0, 6.0, 8.0):  # the I/O layer reports packets every couple of seconds
        call.media_heard(t)
    assert call.expire(2.0 + MEDIA_SILENCE_S) is None and call.live  # heard since: not over
    assert call.deadline() == 8.0 + MEDIA_SILENCE_S
    assert call.expire(8.0 + MEDIA_SILENCE_S - 0.01) is None
    assert call.expire(8.0 + MEDIA_SILENCE_S) == "connection_lost"
    assert not call.live and not call.unanswered and call.deadline() is None
    call.media_heard(30.0)  # a late report changes nothing
    assert call.end_reason == "connection_lost"


@pytest.mark.parametrize("state", ["failed", "closed"])
def test_an_answered_call_ends_when_its_peer_connection_fails_or_closes_by_itself(state):
    """With the signaling link up, the server's word comes first: the other side's hang-up
    closes the media before the server's `ended` arrives, and that call was `completed`."""
    call = ClientCall.incoming("c1", {"user_id": "door"}, 0.0, 30)
    call.accepted(1.0)
    call.media_state("connected", 1.2)
    assert call.media_state("disconnected", 3.0) is None and call.live  # may come back
    assert call.media_state(state, 4.0) is None and call.live
    assert call.deadline() == 4.0 + MEDIA_GONE_GRACE_S
    call.media_heard(5.0)  # the last packets read before it closed change nothing
    assert call.deadline() == 4.0 + MEDIA_GONE_GRACE_S
    call.ended("completed")  # the server's `ended` came in time
    assert call.end_reason == "completed"
    silent = ClientCall.incoming("c2", {"user_id": "door"}, 0.0, 30)
    silent.accepted(1.0)
    silent.media_state(state, 4.0)
    assert silent.expire(4.0 + MEDIA_GONE_GRACE_S - 0.01) is None
    assert silent.expire(4.0 + MEDIA_GONE_GRACE_S) == "connection_lost" and not silent.live


@pytest.mark.parametrize("state", ["failed", "closed"])
def test_with_the_signaling_link_down_a_gone_peer_connection_ends_the_call_at_once(state):
    call = ClientCall.incoming("c1", {"user_id": "door"}, 0.0, 30)
    call.accepted(1.0)
    call.media_state("connected", 1.2)
    call.link_lost(2.0)
    assert call.media_state(state, 4.0) == "connection_lost" and not call.live
    assert call.media_state(state, 5.0) is None  # once


def test_signing_in_again_keeps_a_listed_call_and_ends_a_forgotten_one():
    kept = ClientCall.dial(now=0.0, ring_timeout_s=60)
    kept.dialed("c1")
    kept.link_lost(5.0)
    assert kept.signed_in({"c1", "other"}) is None and kept.live
    assert kept.link_lost_at is None and kept.deadline() == 65.0  # the link clock stopped
    forgotten = ClientCall.incoming("c2", {"user_id": "door"}, now=0.0, expires_in_s=30)
    forgotten.accepted(1.0)
    assert forgotten.signed_in(set()) == "connection_lost" and not forgotten.live
    assert not forgotten.unanswered  # a callee's end plays nothing at a door


def test_a_ring_stops_at_its_lifetime_and_a_call_without_an_id_is_not_claimed():
    ring = ClientCall.incoming("c1", {"user_id": "door"}, now=50.0, expires_in_s=12.5)
    assert ring.deadline() == 62.5 and ring.expire(62.5) == "no_answer" and not ring.unanswered
    dialing = ClientCall.dial(now=0.0, ring_timeout_s=30)
    assert dialing.claims() == [] and dialing.signed_in(set()) is None and dialing.live


def test_a_call_kept_as_json_is_the_same_call_at_every_step():
    """A cluster keeps each call in Redis as JSON between events: nothing may be lost on the way."""
    import json

    door, phone, tablet = DeviceRef("door", "d"), DeviceRef("alice", "phone"), DeviceRef("bob", "tablet")
    call = ServerCall("c1", door, {"user_id": "door", "display_name": "Door", "kind": "door"}, ("alice", "bob"),
                      True, {"type": "offer", "sdp": "v=0"}, 1000.0, 30, unavailable=("carol",),
                      quick_replies=({"id": "coming", "label": "I'm coming"},))

    def same() -> None:
        again = ServerCall.from_json(json.loads(json.dumps(call.to_json())))
        assert again == call

    same()
    call.ring([phone, tablet], 1000.1)
    same()
    call.add_snapshot(door, "/v1/direct_calls/c1/snapshot", 1000.2)
    call.decline(tablet, 1000.3)
    same()
    call.accept(phone, {"type": "answer", "sdp": "v=0"}, 1001.0)
    same()
    call.end(door, 1010.0)
    same()
    assert ServerCall.from_json(call.to_json()).end_reason == "completed"

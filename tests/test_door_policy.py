"""The door's call policy without processes, sockets or timers: each input and the effects the
station must carry out (tones, dials, ends, timers), as `test_calls.py` does for the server."""

from __future__ import annotations

from typing import Any

import pytest

from intercom_protocol.calls import (
    LINK_GRACE_S,
    MEDIA_GONE_GRACE_S,
    MEDIA_SILENCE_S,
    RING_MARGIN_S,
    ArmClock,
    CallState,
)
from intercom_protocol.door import (
    Answer,
    Decline,
    DoorPolicy,
    DoorRules,
    KeepPress,
    PlaceCall,
    QuickReply,
    RecordMessage,
    ReportMissed,
    RingGroup,
    SendPicture,
    StartCallTimers,
    StopTone,
    Teardown,
    TellEnded,
    Tone,
    UseAnswer,
    offline_message,
)
from intercom_protocol.messages import ErrorCode, Incoming, ProtocolError

from .conftest import ANSWER, OFFER, ring_event
from .conftest import received as ev

ALICE = {"user_id": "alice", "display_name": "Alice", "kind": "resident"}
T0 = 1000.0  # the door's monotonic clock
WALL = 1_790_000_000.0


def door(*groups: tuple[str, ...], **rules: Any) -> DoorPolicy:
    ring_groups = tuple(RingGroup(g, 30.0) for g in groups or (("alice", "bob"),))
    policy = DoorPolicy(DoorRules(ring_groups, **rules))
    policy.link_up()
    return policy


def ring(call_id: str, caller: dict[str, Any] = ALICE) -> Incoming:
    return ring_event(call_id, caller)


def kinds(effects: list[Any]) -> list[str]:
    return [type(e).__name__ for e in effects]


def tones(effects: list[Any]) -> list[str]:
    return [e.name for e in effects if isinstance(e, Tone)]


def placed(policy: DoorPolicy, call_id: str = "c1") -> PlaceCall:
    """A press, and the server's `ok` for the dial."""
    effects = policy.press(T0, WALL)
    place = next(e for e in effects if isinstance(e, PlaceCall))
    assert policy.dialed(place.call, call_id, []) == [SendPicture(place.call)]
    return place


def ringing(policy: DoorPolicy, call_id: str = "c1") -> PlaceCall:
    place = placed(policy, call_id)
    assert policy.event(ev({"type": "ringing", "call_id": call_id, "devices": 2}), T0) == [Tone("ringback", loop=True)]
    return place


def test_a_press_chimes_and_dials_the_first_ring_group_with_its_own_deadline() -> None:
    policy = door(("alice", "bob"), ("caretaker",))
    effects = policy.press(T0, WALL)
    assert kinds(effects) == ["Tone", "ArmClock", "PlaceCall"] and tones(effects) == ["chime"]
    place = effects[2]
    assert isinstance(place, PlaceCall) and (place.group, place.callees, place.ring_timeout_s) == (0, ("alice", "bob"), 30.0)
    assert effects[1] == ArmClock(place.call, T0 + 30.0 + RING_MARGIN_S)
    assert policy.state == "calling"
    assert policy.dialed(place.call, "c1", []) == [SendPicture(place.call)] and policy.calls_placed == 1
    assert policy.claims() == ["c1"]


def test_an_answer_starts_the_media_and_the_maximum_call_time() -> None:
    policy = door(max_call_s=120.0, warning_before_s=15.0)
    place = ringing(policy)
    policy.last_error = "an old error"
    effects = policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice"}, "answer": ANSWER}), T0 + 3)
    assert effects == [StopTone("ringback"), UseAnswer(ANSWER), ArmClock(place.call, T0 + 3 + MEDIA_SILENCE_S),
                       StartCallTimers(place.call, 105.0, 120.0)]
    assert policy.last_error is None and place.call.state is CallState.CONNECTING
    assert policy.media("connected", T0 + 3.1) == [] and policy.state == "connected"
    assert policy.call_timer(place.call, "warning") == [Tone("warning")]
    assert policy.call_timer(place.call, "limit") == [TellEnded("c1", untold=place.call)]
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": "completed"}), T0 + 120)
    assert effects == [Teardown()] and policy.state == "idle"
    assert policy.last_call == {"call_id": "c1", "end_reason": "completed", "peer": "alice", "role": "caller"}


@pytest.mark.parametrize("reason", ["declined", "connection_lost", "timed_out"])
def test_a_ring_that_ends_unanswered_plays_nobody_answered(reason: str) -> None:
    policy = door()
    ringing(policy)
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": reason}), T0 + 5)
    assert effects == [Teardown(), Tone("no_answer")]


def test_no_answer_escalates_to_the_next_group_then_gives_up() -> None:
    policy = door(("alice",), ("caretaker",))
    ringing(policy)
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": "no_answer"}), T0 + 30)
    assert kinds(effects) == ["Teardown", "ArmClock", "PlaceCall"]
    second = effects[2]
    assert isinstance(second, PlaceCall) and (second.group, second.callees) == (1, ("caretaker",))
    policy.dialed(second.call, "c2", [])
    assert policy.event(ev({"type": "ended", "call_id": "c2", "reason": "no_answer"}), T0 + 60) == [Teardown(), Tone("no_answer")]


def test_a_group_nobody_of_which_can_be_rung_escalates_at_once_then_the_visitor_hears_nobody() -> None:
    """The server ends a ring `unavailable` when everyone called is in do-not-disturb, quiet
    hours or away: the door rings the next group without waiting out the ring."""
    policy = door(("alice",), ("caretaker",))
    ringing(policy)
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": "unavailable"}), T0 + 0.01)
    assert kinds(effects) == ["Teardown", "ArmClock", "PlaceCall"]
    second = effects[2]
    assert isinstance(second, PlaceCall) and (second.group, second.callees) == (1, ("caretaker",))
    policy.dialed(second.call, "c2", [])
    assert policy.event(ev({"type": "ended", "call_id": "c2", "reason": "unavailable"}), T0 + 0.02) == \
        [Teardown(), Tone("no_answer")]


REPLIES = (QuickReply("coming", "I'm coming", "/clips/coming.wav"),
           QuickReply("leave", "Please leave it at the door", "/clips/leave.wav", ends_call=True))


def test_a_quick_reply_plays_while_it_rings_and_the_ringback_comes_back_after_it() -> None:
    policy = door(("alice",), ("caretaker",), quick_replies=REPLIES)
    ringing(policy)
    assert policy.quick_reply("c1", "coming", ALICE).clip == "/clips/coming.wav"
    assert policy.reply_played() == [Tone("ringback", loop=True)]
    assert policy.replies_played == 1
    # A reply that does not end the ring: no answer still goes to the next group.
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": "no_answer"}), T0 + 30)
    assert kinds(effects) == ["Teardown", "ArmClock", "PlaceCall"]


def test_a_quick_reply_that_ends_the_ring_leaves_the_visitor_with_it_alone() -> None:
    policy = door(("alice",), ("caretaker",), quick_replies=REPLIES)
    ringing(policy)
    policy.quick_reply("c1", "leave", ALICE)
    assert policy.reply_played() == []  # no ringback after it
    # The server ends the ring for everyone: no "nobody answered" tone over it, no next group.
    assert policy.event(ev({"type": "ended", "call_id": "c1", "reason": "declined"}), T0 + 2) == [Teardown()]


def test_a_quick_reply_is_refused_when_the_ring_is_over_or_unknown() -> None:
    policy = door(quick_replies=REPLIES)
    with pytest.raises(ProtocolError) as exc:
        policy.quick_reply("c1", "coming", ALICE)
    assert exc.value.code == ErrorCode.CONFLICT
    ringing(policy)
    with pytest.raises(ProtocolError) as exc:
        policy.quick_reply("c1", "bribe", ALICE)
    assert exc.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(ProtocolError):
        policy.quick_reply("c9", "coming", ALICE)
    policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice", "device_id": "p"},
                     "answer": ANSWER}), T0 + 1)
    with pytest.raises(ProtocolError) as exc:
        policy.quick_reply("c1", "coming", ALICE)  # answered: they talk instead
    assert exc.value.code == ErrorCode.CONFLICT


def test_with_visitor_messages_nobody_answering_records_a_message_and_presses_wait_for_it() -> None:
    policy = door(("alice",), ("caretaker",), visitor_messages=True)
    ringing(policy)
    effects = policy.event(ev({"type": "ended", "call_id": "c1", "reason": "no_answer"}), T0 + 30)
    second = effects[2]
    assert isinstance(second, PlaceCall)  # the next group first
    policy.dialed(second.call, "c2", [])
    effects = policy.event(ev({"type": "ended", "call_id": "c2", "reason": "unavailable"}), T0 + 31)
    assert effects == [Teardown(), RecordMessage("c2")]  # no "nobody answered" tone: the message's greeting
    policy.recording = True  # the station records
    assert policy.press(T0 + 35, WALL + 35) == [] and policy.ignored_presses == 1
    assert policy.state == "recording" and policy.last_ignored == "the door is recording the visitor's message"
    policy.recording = False
    assert any(isinstance(e, PlaceCall) for e in policy.press(T0 + 60, WALL + 60))


def test_a_press_while_the_server_is_unreachable_records_a_message_kept_with_the_press() -> None:
    policy = door(visitor_messages=True)
    policy.link_lost(T0)
    effects = policy.press(T0 + 1, WALL)
    assert effects[1:] == [KeepPress(WALL), RecordMessage(offline_message(WALL))]
    assert policy.recording


def test_the_door_hanging_up_while_ringing_cancels_without_a_tone() -> None:
    policy = door()
    place = ringing(policy)
    assert policy.hang_up() == [TellEnded("c1", untold=place.call)]
    # The server's `ended` tears it down; had the server not been told, the door does.
    assert policy.event(ev({"type": "ended", "call_id": "c1", "reason": "canceled"}), T0 + 1) == [Teardown()]
    assert policy.untold(place.call) == []  # already over: nothing more


def test_a_hang_up_the_server_does_not_hear_ends_the_call_here() -> None:
    policy = door()
    place = ringing(policy)
    policy.hang_up()
    assert policy.untold(place.call) == [Teardown()]
    assert policy.last_call is not None and policy.last_call["end_reason"] == "canceled"


def test_a_press_during_a_call_is_ignored_and_counted_with_why() -> None:
    policy = door()
    ringing(policy)
    assert policy.devices_rung == 2  # what the server said rings, for the installer's status
    assert policy.press(T0 + 1, WALL + 1) == [] and policy.ignored_presses == 1
    assert policy.last_ignored == "the door is already in a call (ringing)"
    policy.event(ev({"type": "ended", "call_id": "c1", "reason": "declined"}), T0 + 2)
    effects = policy.press(T0 + 3, WALL + 3)
    assert any(isinstance(e, PlaceCall) for e in effects) and policy.devices_rung is None  # this call: not yet known


def test_stopping_the_daemon_ends_the_live_call() -> None:
    policy = door()
    place = ringing(policy)
    policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice"}, "answer": ANSWER}), T0 + 1)
    assert policy.stop() == [TellEnded("c1"), Teardown()]
    assert place.call.end_reason == "completed" and policy.stop() == []


def test_events_of_another_call_change_nothing() -> None:
    policy = door()
    place = ringing(policy)
    assert policy.event(ev({"type": "ended", "call_id": "c9", "reason": "completed"}), T0) == []
    assert policy.event(ev({"type": "accepted", "call_id": "c9", "by": {"user_id": "bob"}, "answer": ANSWER}), T0) == []
    assert place.call.state is CallState.RINGING


def test_a_resident_looks_outside_and_the_door_answers_with_a_tone() -> None:
    policy = door()
    effects = policy.incoming(ring("c5"))
    call = policy.call
    assert call is not None and effects == [Answer(call, OFFER)]
    effects = policy.answered(call, T0)
    assert effects[0] == Tone("announce") and kinds(effects) == ["Tone", "ArmClock", "StartCallTimers"]
    assert policy.calls_answered == 1 and policy.state == "connected"
    quiet = door(announce=False)
    quiet.incoming(ring("c6"))
    assert quiet.call is not None and tones(quiet.answered(quiet.call, T0)) == []


def test_the_door_declines_when_busy_or_for_callers_off_its_list() -> None:
    policy = door(auto_answer=("bob",))
    assert policy.incoming(ring("c5")) == [Decline("c5")] and policy.call is None
    open_door = door()
    assert open_door.incoming(ring("c5", {**ALICE, "kind": "door"})) == [Decline("c5")]
    ringing(open_door)
    assert open_door.incoming(ring("c6")) == [Decline("c6")]


def test_an_offer_the_door_cannot_answer_is_declined() -> None:
    policy = door()
    policy.incoming(ring("c5"))
    assert policy.call is not None
    assert policy.answer_failed(policy.call, "no H.264") == [Teardown(), Decline("c5")]
    assert policy.state == "idle"


def test_a_press_while_a_resident_looks_outside_ends_the_view_and_rings_everyone() -> None:
    policy = door()
    policy.incoming(ring("c5"))
    assert policy.call is not None
    policy.answered(policy.call, T0)
    effects = policy.press(T0, WALL)
    assert kinds(effects) == ["TellEnded", "Teardown", "Tone", "ArmClock", "PlaceCall"]
    assert effects[0] == TellEnded("c5") and tones(effects) == ["chime"]
    assert policy.last_call is not None and policy.last_call["end_reason"] == "completed"


def test_a_ring_group_naming_an_unknown_resident_says_so() -> None:
    policy = door()
    place = policy.press(T0, WALL)[-1]
    assert isinstance(place, PlaceCall)
    policy.dialed(place.call, "c1", ["bob"])
    assert policy.last_error is not None and "bob" in policy.last_error


def test_a_press_while_offline_chimes_is_kept_and_reported_oldest_first() -> None:
    policy = door(("alice",), ("caretaker",))
    policy.link_lost(T0)
    assert policy.press(T0, WALL) == [Tone("chime"), KeepPress(WALL)]
    policy.keep_press(WALL, b"\xff\xd8jpeg")
    policy.press(T0 + 5, WALL + 5)
    policy.keep_press(WALL + 5, None)
    assert policy.last_error is not None and policy.missed_to_report() is None  # not while offline
    policy.link_up()
    assert policy.signed_in(set()) == [ReportMissed()]
    first = policy.missed_to_report()
    assert first is not None and first["callees"] == ["alice", "caretaker"] and first["snapshot"] == "/9hqcGVn"
    assert first["pressed_at"].startswith("2026-") and first["pressed_at"].endswith("Z")
    assert policy.missed_result("not_stored", "disk full") is False and len(policy.missed) == 2  # kept
    assert policy.missed_result("reported", "c7") is True and policy.missed_reported == 1
    second = policy.missed_to_report()
    assert second is not None and "snapshot" not in second
    assert policy.missed_result("refused", "too old") is True and policy.missed_to_report() is None
    assert policy.missed_reported == 1


def test_a_dial_the_server_never_answered_keeps_the_press_and_one_it_refused_does_not() -> None:
    policy = door()
    place = policy.press(T0, WALL)[-1]
    assert isinstance(place, PlaceCall)
    effects = policy.dial_failed(place.call, 0, "", server_heard=False)
    assert effects == [KeepPress(WALL), Teardown(), Tone("no_answer")]
    assert policy.last_error is not None and "kept" in policy.last_error and place.call.end_reason == "dial_failed"
    place = policy.press(T0 + 9, WALL + 9)[-1]
    assert isinstance(place, PlaceCall)
    assert policy.dial_failed(place.call, 0, "forbidden: no", server_heard=True) == [Teardown(), Tone("no_answer")]


def test_a_dial_placed_after_the_door_gave_up_is_ended() -> None:
    assert door().late_dial("c3") == [TellEnded("c3"), ReportMissed()]


def test_a_ring_past_the_doors_own_deadline_gives_up_and_escalates() -> None:
    policy = door(("alice",), ("caretaker",))
    place = ringing(policy)
    deadline = place.call.deadline()
    assert deadline == T0 + 30.0 + RING_MARGIN_S
    assert policy.clock(place.call, deadline - 1) == [ArmClock(place.call, deadline)]  # early: armed again
    effects = policy.clock(place.call, deadline)
    assert kinds(effects) == ["Teardown", "TellEnded", "ArmClock", "PlaceCall"]
    assert effects[1] == TellEnded("c1", wait=False) and place.call.end_reason == "no_answer"
    assert policy.clock(place.call, deadline + 1) == []  # the old call's clock: nothing


def test_a_ring_whose_server_is_gone_gives_up_after_the_grace() -> None:
    policy = door()
    place = ringing(policy)
    assert policy.link_lost(T0 + 1) == [ArmClock(place.call, T0 + 1 + LINK_GRACE_S)]
    effects = policy.clock(place.call, T0 + 1 + LINK_GRACE_S)
    assert effects == [Teardown(), Tone("no_answer")]  # not told: the server is unreachable
    assert place.call.end_reason == "connection_lost"


def test_a_call_the_server_no_longer_knows_ends_and_one_it_knows_goes_on() -> None:
    policy = door()
    place = ringing(policy)
    policy.link_lost(T0 + 1)
    policy.link_up()
    assert policy.signed_in({"c1"}) == [ArmClock(place.call, place.call.deadline()), ReportMissed()]
    assert place.call.live
    policy.link_lost(T0 + 2)
    policy.link_up()
    effects = policy.signed_in(set())
    assert kinds(effects) == ["ArmClock", "Teardown", "Tone", "ReportMissed"] and tones(effects) == ["no_answer"]


def test_an_answered_call_survives_the_link_and_ends_when_its_media_fails() -> None:
    policy = door()
    place = ringing(policy)
    policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice"}, "answer": ANSWER}), T0 + 1)
    policy.media("connected", T0 + 1.1)
    # Only the media's silence clock runs for a connected call: the lost link does not end it.
    assert policy.link_lost(T0 + 2) == [ArmClock(place.call, T0 + 1.1 + MEDIA_SILENCE_S)]
    assert policy.media("failed", T0 + 3) == [Teardown()]  # offline: the server cannot be told
    assert place.call.end_reason == "connection_lost"


@pytest.mark.parametrize("connected", [True, False])
def test_a_dead_call_never_holds_the_bell(connected: bool) -> None:
    """The resident hung up or died while the door's link to the server was down, and aiortc
    says nothing for ~30 s, then `closed`: the door's own silence clock ends the call, and
    the next press rings (or is kept while the server is unreachable)."""
    policy = door()
    place = ringing(policy)
    policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice"}, "answer": ANSWER}), T0 + 1)
    policy.media("connected", T0 + 1.2)
    policy.media_heard(place.call, T0 + 4)
    if not connected:
        policy.link_lost(T0 + 5)
    # A visitor presses while the door still believes in the call: ignored for now, not lost.
    assert policy.press(T0 + 6, WALL + 6) == [] and policy.last_ignored == "the door is already in a call (connected)"
    assert policy.clock(place.call, T0 + 1.2 + MEDIA_SILENCE_S) == [ArmClock(place.call, T0 + 4 + MEDIA_SILENCE_S)]
    effects = policy.clock(place.call, T0 + 4 + MEDIA_SILENCE_S)
    told = ["TellEnded"] if connected else []
    # No "nobody answered" tone (somebody did answer); the held press rings now, or is kept.
    assert kinds(effects) == [*told, "Teardown", *(["Tone", "ArmClock", "PlaceCall"] if connected
                                                   else ["Tone", "KeepPress"])]
    assert effects[-1] == KeepPress(WALL + 6) if not connected else effects[0] == TellEnded("c1", wait=False)
    assert policy.last_call is not None and policy.last_call["end_reason"] == "connection_lost"
    assert policy.state == ("calling" if connected else "idle")


def test_a_press_during_a_call_that_ends_as_calls_do_is_not_rung_again() -> None:
    policy = door()
    place = ringing(policy)
    policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "alice"}, "answer": ANSWER}), T0 + 1)
    assert policy.press(T0 + 2, WALL) == []  # the resident is talking to the visitor
    assert policy.event(ev({"type": "ended", "call_id": "c1", "reason": "completed"}), T0 + 30) == [Teardown()]
    assert place.call.state is CallState.ENDED and policy.state == "idle"


def test_a_peer_connection_that_closes_by_itself_ends_the_call() -> None:
    policy = door()
    policy.incoming(ring("c5"))
    assert policy.call is not None
    call = policy.call
    policy.answered(call, T0)
    policy.media("connected", T0 + 0.1)
    # The server may still explain (a hang-up closes the media first): its word is awaited.
    assert policy.media("closed", T0 + 5) == [ArmClock(call, T0 + 5 + MEDIA_GONE_GRACE_S)]
    assert policy.state == "connected"
    assert policy.clock(call, T0 + 5 + MEDIA_GONE_GRACE_S) == [TellEnded("c5", wait=False), Teardown()]
    assert policy.state == "idle" and call.end_reason == "connection_lost"


def test_the_door_opens_only_for_its_live_or_last_call_with_a_relay() -> None:
    policy = door()
    by = {"user_id": "alice", "device_id": "phone"}
    with pytest.raises(ProtocolError) as refused:
        policy.open_door("c1", by, relay=True)
    assert refused.value.code is ErrorCode.FORBIDDEN
    ringing(policy)
    policy.open_door("c1", by, relay=True)
    with pytest.raises(ProtocolError) as refused:
        policy.open_door("c1", by, relay=False)
    assert refused.value.code is ErrorCode.CONFLICT
    policy.event(ev({"type": "ended", "call_id": "c1", "reason": "completed"}), T0)
    policy.open_door("c1", by, relay=True)  # the last call: the resident opens after hanging up
    policy.door_opened("c1", by, 2.0, WALL)
    assert policy.door_openings == [{"at": "2026-09-21T14:13:20.000Z", "call_id": "c1", "by": "alice",
                                     "device_id": "phone", "pulse_s": 2.0}]

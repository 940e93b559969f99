"""A resident's call policy without processes, sockets or timers (the command-line resident
carries it out with aiortc)."""

from __future__ import annotations

from typing import Any

from intercom_protocol.calls import MEDIA_GONE_GRACE_S, MEDIA_SILENCE_S, ArmClock, CallState
from intercom_protocol.messages import Incoming
from intercom_protocol.resident import (
    AnswerRing,
    Decline,
    DialDoor,
    Ended,
    FetchPicture,
    HangUp,
    HangUpAfter,
    Missed,
    OpenDoor,
    ResidentPolicy,
    ResidentRules,
    Rings,
    UseAnswer,
)

from .conftest import ANSWER, OFFER, ring_event
from .conftest import received as ev

DOOR = {"user_id": "frontdoor", "display_name": "Front door", "kind": "door"}
T0 = 500.0


def ring(call_id: str = "c1", **extra: Any) -> Incoming:
    return ring_event(call_id, DOOR, **extra)


def kinds(effects: list[Any]) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_a_ring_is_shown_with_its_picture_and_answered_by_choice() -> None:
    policy = ResidentPolicy(ResidentRules(answer="auto", answer_delay_s=1.5, hangup_after_s=20))
    effects = policy.incoming(ring(snapshot_url="/v1/calls/c1/snapshot"), T0)
    call = policy.call
    assert call is not None and call.state is CallState.RINGING
    assert effects == [ArmClock(call, T0 + 30), Rings(call, ring(snapshot_url="/v1/calls/c1/snapshot")),
                       FetchPicture("c1", "/v1/calls/c1/snapshot"), AnswerRing(call, OFFER, 1.5)]
    effects = policy.answered(call, T0 + 2)
    assert kinds(effects) == ["ArmClock", "Answered", "HangUpAfter"]
    assert effects[0] == ArmClock(call, T0 + 2 + MEDIA_SILENCE_S)  # the media's silence clock
    assert effects[2] == HangUpAfter(call, 20)
    assert policy.media("connected", T0 + 2.1) and call.state is CallState.CONNECTED


def test_a_resident_ends_a_call_whose_door_went_silent_and_tells_the_server() -> None:
    policy = ResidentPolicy(ResidentRules(answer="auto", hangup_after_frames=None))
    policy.incoming(ring(), T0)
    call = policy.call
    assert call is not None
    policy.answered(call, T0 + 1)
    policy.media("connected", T0 + 1.1)
    policy.media_heard(call, T0 + 3)
    assert policy.clock(call, T0 + 1.1 + MEDIA_SILENCE_S) == [ArmClock(call, T0 + 3 + MEDIA_SILENCE_S)]
    assert policy.clock(call, T0 + 3 + MEDIA_SILENCE_S) == [HangUp(call), Ended(call, "connection_lost")]
    assert not call.live
    # and a peer connection that closes by itself (aiortc, after ICE consent expires)
    policy.incoming(ring("c2"), T0 + 20)
    again = policy.call
    assert again is not None and again.call_id == "c2"
    policy.answered(again, T0 + 21)
    assert policy.media("closed", T0 + 25) == [ArmClock(again, T0 + 25 + MEDIA_GONE_GRACE_S)]  # the server's word first
    assert policy.clock(again, T0 + 25 + MEDIA_GONE_GRACE_S) == [HangUp(again), Ended(again, "connection_lost")]
    # but with the server unreachable nobody will explain: at once
    policy.incoming(ring("c3"), T0 + 60)
    third = policy.call
    assert third is not None and third.call_id == "c3"
    policy.answered(third, T0 + 61)
    policy.link_lost(T0 + 62)
    assert policy.media("failed", T0 + 63) == [HangUp(third), Ended(third, "connection_lost")]


def test_declining_or_letting_it_ring_is_the_residents_choice() -> None:
    declining = ResidentPolicy(ResidentRules(answer="decline"))
    assert declining.incoming(ring(), T0)[-1] == Decline("c1", busy=False)
    ignoring = ResidentPolicy(ResidentRules(answer="ignore"))
    assert kinds(ignoring.incoming(ring(), T0)) == ["ArmClock", "Rings"]


def test_a_second_ring_while_busy_is_declined_and_the_same_ring_again_is_one_ring() -> None:
    policy = ResidentPolicy()
    policy.incoming(ring("c1"), T0)
    assert policy.incoming(ring("c1"), T0 + 1) == []  # after a reconnection
    assert policy.incoming(ring("c2"), T0 + 1) == [Decline("c2", busy=True)]
    assert policy.call is not None and policy.call.call_id == "c1"
    # Once the first is over (a door ending a look outside to ring everyone), the next one rings.
    assert kinds(policy.event(ev({"type": "ended", "call_id": "c1", "reason": "completed"}), T0 + 2)) == ["Ended"]
    assert "Rings" in kinds(policy.incoming(ring("c3"), T0 + 2))


def test_a_ring_stops_by_its_own_clock_when_its_end_never_comes() -> None:
    policy = ResidentPolicy(ResidentRules(answer="ignore"))
    policy.incoming(ring(), T0)
    call = policy.call
    assert call is not None
    assert policy.clock(call, T0 + 10) == [ArmClock(call, T0 + 30)]
    assert policy.clock(call, T0 + 30) == [Ended(call, "no_answer")] and not call.live


def test_events_read_before_the_dial_reply_reached_its_task_are_not_lost() -> None:
    """A door that declines at once: the dial's `ok` and the call's `ended` are read in one
    go, before the dialing task has taken the call id from the reply."""
    policy = ResidentPolicy(ResidentRules(look_outside="frontdoor"))
    effects = policy.signed_in(set(), T0)
    call = policy.call
    assert call is not None and effects == [ArmClock(call, call.deadline()), DialDoor(call, "frontdoor")]
    assert policy.event(ev({"type": "ringing", "call_id": "c1", "devices": 1}), T0) == []
    assert policy.event(ev({"type": "ended", "call_id": "c1", "reason": "declined", "by": None}), T0) == []
    assert call.live  # not yet known to be this call
    assert policy.dialed(call, "c1", T0) == [Ended(call, "declined")]
    assert not call.live and call.end_reason == "declined"


def test_the_door_answering_a_look_outside_starts_the_media() -> None:
    policy = ResidentPolicy()
    (_, dial) = policy.look_outside("frontdoor", T0)
    assert isinstance(dial, DialDoor)
    policy.dialed(dial.call, "c1", T0)
    effects = policy.event(ev({"type": "accepted", "call_id": "c1", "by": {"user_id": "frontdoor"}, "answer": ANSWER}), T0)
    assert effects[0] == UseAnswer(dial.call, ANSWER) and kinds(effects) == ["UseAnswer", "ArmClock", "Answered"]
    assert dial.call.state is CallState.CONNECTING
    assert policy.look_outside("frontdoor", T0) == []  # one call at a time


def test_frames_open_the_door_and_hang_up_when_asked() -> None:
    policy = ResidentPolicy(ResidentRules(open_door=True, hangup_after_frames=3))
    policy.incoming(ring(), T0)
    call = policy.call
    assert call is not None
    policy.answered(call, T0)
    assert policy.video_frame(call, 1) == [OpenDoor(call)]
    assert policy.video_frame(call, 2) == []
    assert policy.video_frame(call, 3) == [HangUp(call)]
    policy.event(ev({"type": "ended", "call_id": "c1", "reason": "completed"}), T0)
    assert policy.hang_up(call) == []  # over: nothing to end


def test_a_call_the_server_no_longer_lists_is_over_and_a_listed_one_goes_on() -> None:
    policy = ResidentPolicy(ResidentRules(answer="ignore"))
    policy.incoming(ring(), T0)
    call = policy.call
    assert call is not None
    assert policy.link_lost(T0 + 1) == [ArmClock(call, T0 + 16)]  # the ring gives up after the link grace
    assert policy.signed_in({"c1"}, T0 + 2) == [ArmClock(call, T0 + 30)]
    policy.link_lost(T0 + 3)
    assert policy.signed_in(set(), T0 + 4) == [Ended(call, "connection_lost"), ArmClock(call, None)]


def test_missed_presses_and_other_calls_events() -> None:
    policy = ResidentPolicy()
    missed = {"type": "missed", "call_id": "c9", "caller": DOOR, "pressed_at": "2026-11-22T08:00:00Z"}
    assert policy.event(ev(missed), T0) == [Missed(ev(missed))]
    policy.incoming(ring("c1"), T0)
    assert policy.event(ev({"type": "ended", "call_id": "c2", "reason": "completed"}), T0) == []
    assert policy.event(ev({"type": "snapshot", "call_id": "c1", "snapshot_url": "/s"}), T0) == [FetchPicture("c1", "/s")]

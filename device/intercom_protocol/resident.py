"""A resident device's call policy, with no I/O: what a ring, a server event, a timer, the link
or a received frame does to the resident's calls.

The rules of a resident's side of protocol v1: a ring while busy is declined, the same ring
again after a reconnection is one ring, the events of the resident's own dial that arrive
before the dial's reply are kept for it, a ring stops by its own clock, a call the server no
longer lists is over, and the resident's choices (answer, decline, let it ring; hang up after
so many frames or seconds; open the door once the visitor is on screen; look outside once
signed in). `intercom_resident.client.Resident` carries out the effects with aiortc; the web
app follows the same rules in the browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import messages as m
from .calls import MEDIA_GONE, ArmClock, CallState, ClientCall

#: The server's default ring timeout: a door answers a look outside at once, or declines.
LOOK_OUTSIDE_RING_S = 30.0


@dataclass(frozen=True)
class ResidentRules:
    """What this resident does when the door rings."""

    answer: Literal["auto", "decline", "ignore"] = "auto"
    answer_delay_s: float = 0.0
    hangup_after_frames: int | None = 60
    hangup_after_s: float | None = None
    open_door: bool = False  # press "open" once the visitor is on screen
    look_outside: str | None = None  # call this door once signed in


# -- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rings:
    """A new ring: show it (and fetch the visitor's picture when it has one)."""

    call: ClientCall
    ring: m.Incoming


@dataclass(frozen=True)
class AnswerRing:
    """After `delay_s`, if the call still rings, answer it; report `answered` or `accept_failed`."""

    call: ClientCall
    offer: dict[str, Any]
    delay_s: float


@dataclass(frozen=True)
class Decline:
    call_id: str
    busy: bool  # declined because another call is live (not the resident's choice)


@dataclass(frozen=True)
class DialDoor:
    """Look outside: offer, `dial`; report `dialed` or `dial_failed`."""

    call: ClientCall
    door: str


@dataclass(frozen=True)
class FetchPicture:
    call_id: str
    snapshot_url: str


@dataclass(frozen=True)
class UseAnswer:
    """The door's answer to the resident's offer (a look outside)."""

    call: ClientCall
    answer: dict[str, Any]


@dataclass(frozen=True)
class Answered:
    call: ClientCall
    by: dict[str, Any] | None


@dataclass(frozen=True)
class HangUpAfter:
    call: ClientCall
    delay_s: float


@dataclass(frozen=True)
class HangUp:
    """Send `end` for the call."""

    call: ClientCall


@dataclass(frozen=True)
class OpenDoor:
    call: ClientCall


@dataclass(frozen=True)
class MediaConnected:
    call: ClientCall


@dataclass(frozen=True)
class Ended:
    """The call is over here: its clock and media go, and the end is reported once."""

    call: ClientCall
    reason: str


@dataclass(frozen=True)
class Missed:
    """A press the door could not report in time (`missed` event)."""

    press: m.MissedPress


Effect = (ArmClock | Rings | AnswerRing | Decline | DialDoor | FetchPicture | UseAnswer | Answered | HangUpAfter | HangUp
          | OpenDoor | MediaConnected | Ended | Missed)


@dataclass
class ResidentPolicy:
    rules: ResidentRules = field(default_factory=ResidentRules)
    call: ClientCall | None = None
    #: Events of our own dial that came while its reply was still on the way.
    _early: list[m.Event] = field(default_factory=list)

    def claims(self) -> list[str]:
        return self.call.claims() if self.call is not None else []

    # -- rings -------------------------------------------------------------------------------------

    def incoming(self, ring: m.Incoming, now: float) -> list[Effect]:
        if self.call is not None and self.call.call_id == ring.call_id:
            return []  # the same ring again, after a reconnection
        if self.call is not None and self.call.live:
            return [Decline(ring.call_id, busy=True)]
        lifetime = ring.expires_in_s
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
            lifetime = None
        # The ring's own clock: it stops by itself if its `ended` never comes.
        call = self.call = ClientCall.incoming(ring.call_id, ring.caller, now, lifetime)
        effects: list[Effect] = [ArmClock.of(call), Rings(call, ring)]
        if ring.snapshot_url:
            effects.append(FetchPicture(ring.call_id, ring.snapshot_url))
        if self.rules.answer == "decline":
            effects.append(Decline(ring.call_id, busy=False))
        elif self.rules.answer == "auto":
            effects.append(AnswerRing(call, ring.offer, self.rules.answer_delay_s))
        return effects

    def answered(self, call: ClientCall, now: float) -> list[Effect]:
        """The server took our `accept`."""
        if not call.live:
            return []
        call.accepted(now)
        effects: list[Effect] = [ArmClock.of(call), Answered(call, None)]
        if self.rules.hangup_after_s is not None:
            effects.append(HangUpAfter(call, self.rules.hangup_after_s))
        return effects

    # -- looking outside -----------------------------------------------------------------------------

    def look_outside(self, door: str, now: float) -> list[Effect]:
        if self.call is not None:
            return []
        call = self.call = ClientCall.dial(now, LOOK_OUTSIDE_RING_S)
        return [ArmClock.of(call), DialDoor(call, door)]

    def dialed(self, call: ClientCall, call_id: str, now: float) -> list[Effect]:
        """The dial's reply named the call: what the server said of it meanwhile applies now."""
        call.dialed(call_id)
        early, self._early = self._early, []
        effects: list[Effect] = []
        for event in early:
            if event.call_id == call_id:
                effects += self.event(event, now)
        return effects

    def dial_failed(self) -> None:
        self._early = []

    # -- the call's life -------------------------------------------------------------------------------

    def event(self, event: m.Event, now: float) -> list[Effect]:
        """A server event other than `incoming`."""
        call = self.call
        if isinstance(event, m.MissedPress):
            return [Missed(event)]
        if call is not None and call.live and call.call_id is None:
            # Our dial's `ok` and the call's first events (a door declining at once) are read
            # in one go, before the dialing task has taken the call id from the reply: keep
            # them for it instead of dropping them as another call's.
            self._early.append(event)
            return []
        if call is None or event.call_id != call.call_id:
            return []
        if isinstance(event, m.SnapshotReady):
            return [FetchPicture(event.call_id, event.snapshot_url)]
        if isinstance(event, m.Accepted) and call.live:
            if call.state is CallState.DIALING:
                call.ringing()  # its `ringing` was read with the dial's reply: it did happen
            call.accepted(now, event.by)
            return [UseAnswer(call, event.answer), ArmClock.of(call), Answered(call, event.by)]
        if isinstance(event, m.Ended):
            return self._finish(call, event.reason)
        return []

    def media(self, state: str, now: float) -> list[Effect]:
        call = self.call
        if call is None or not call.live:
            return []
        connecting = call.state is CallState.CONNECTING
        reason = call.media_state(state, now)
        if reason is not None:
            return self._media_lost(call, str(reason))
        if connecting and call.state is CallState.CONNECTED:
            return [MediaConnected(call)]
        return [ArmClock.of(call)] if state in MEDIA_GONE and call.answered else []  # the server's word first

    def media_heard(self, call: ClientCall, now: float) -> None:
        """Packets arrived on the answered call's media lately: its silence clock starts again."""
        if call is self.call:
            call.media_heard(now)

    def video_frame(self, call: ClientCall | None, count: int) -> list[Effect]:
        """The `count`th video frame of this call was decoded."""
        if call is None:
            return []
        effects: list[Effect] = []
        if count == 1 and self.rules.open_door:
            effects.append(OpenDoor(call))
        if count == self.rules.hangup_after_frames:
            effects += self.hang_up(call)
        return effects

    def hang_up(self, call: ClientCall) -> list[Effect]:
        return [HangUp(call)] if call.live and call.call_id else []

    def clock(self, call: ClientCall, now: float) -> list[Effect]:
        if call is not self.call:
            return []
        answered = call.answered
        reason = call.expire(now)
        if reason is None:
            return [ArmClock.of(call)]
        return self._media_lost(call, str(reason)) if answered else [Ended(call, str(reason))]

    # -- the link ----------------------------------------------------------------------------------------

    def link_lost(self, now: float) -> list[Effect]:
        call = self.call
        if call is None or not call.live:
            return []
        call.link_lost(now)
        return [ArmClock.of(call)]

    def signed_in(self, live_calls: set[str], now: float) -> list[Effect]:
        """A call the server no longer lists is over here too; a look outside starts now."""
        effects: list[Effect] = []
        call = self.call
        if call is not None and call.live:
            reason = call.signed_in(live_calls)
            if reason is not None:
                effects.append(Ended(call, str(reason)))
            effects.append(ArmClock.of(call))
        if self.rules.look_outside and self.call is None:
            effects += self.look_outside(self.rules.look_outside, now)
        return effects

    # -- inside ----------------------------------------------------------------------------------------------

    @staticmethod
    def _media_lost(call: ClientCall, reason: str) -> list[Effect]:
        """An answered call whose media is gone (`call` has ended it): over here at once, and
        the server told, if it can be, so the other side is not left waiting for it."""
        return [HangUp(call), Ended(call, reason)] if call.call_id else [Ended(call, reason)]

    def _finish(self, call: ClientCall, reason: str) -> list[Effect]:
        """Marked over at once, so that a ring read right after the `ended` (a door ending a
        look outside to ring everyone) is not declined as busy."""
        if not call.live:
            return []
        call.ended(reason)
        return [Ended(call, reason)]

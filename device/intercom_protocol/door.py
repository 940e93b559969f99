"""The door station's call policy, with no I/O: what a press, a server event, a media state, a
timer or the link does to the door's calls.

`DoorPolicy` holds every rule of the door: ring groups and escalation, the press during a call
(ignored) or during a look outside (the view ends and everyone rings), busy, who may look
outside, the door's own clocks (the shared `ClientCall`), the "nobody answered" tone, the
presses kept while the server is unreachable, and the checks before the strike opens. Each
input returns the effects the I/O layer (`intercom.station.Station`) must carry out, in order;
where an effect needs the network or the camera, the I/O layer reports the result back as an
input (`dialed`, `dial_failed`, `answered`, ...). So the policy is tested without processes,
sockets or timers (`tests/test_door_policy.py`), and the station is left with the media, the
pins and the server connection.

Times are given: `now` is the door's monotonic clock, `wall` the time of day (a kept press
says when the visitor came).
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from .calls import (
    LINK_GRACE_S,
    MEDIA_GONE,
    MEDIA_GONE_GRACE_S,
    MEDIA_SILENCE_S,
    ArmClock,
    CallState,
    ClientCall,
    iso,
)
from .messages import Accepted, Ended, EndReason, ErrorCode, Event, Incoming, ProtocolError, Ringing

log = logging.getLogger("intercom.station")

#: Presses kept while the server is unreachable, to report once it is back (oldest dropped).
MAX_MISSED = 20
#: Door openings remembered for the installer's status.
MAX_OPENINGS = 20


@dataclass(frozen=True)
class RingGroup:
    """Residents rung together; the next group is rung when nobody in this one answers."""

    residents: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class DoorRules:
    """The installer's choices that the policy applies (a reload replaces them)."""

    ring_groups: tuple[RingGroup, ...]
    auto_answer: tuple[str, ...] | None = None  # who may look outside; None: every resident
    announce: bool = True  # a tone tells the visitor that someone looks
    max_call_s: float = 180.0
    warning_before_s: float = 15.0
    quick_replies: tuple[QuickReply, ...] = ()
    #: When nobody answers, the visitor may leave a message (recorded and sent to the server).
    visitor_messages: bool = False


@dataclass(frozen=True)
class QuickReply:
    """A clip the door plays to its visitor when a resident taps it on the ring screen."""

    id: str
    label: str
    clip: str  # the audio file
    #: Whether it answers the visitor for everyone: the other phones stop ringing.
    ends_call: bool = False


@dataclass
class MissedPress:
    pressed_at: float  # wall clock: the resident wants to know when someone was at the door
    snapshot: bytes | None


# -- effects: what the I/O layer carries out, in order ------------------------------------------


@dataclass(frozen=True)
class Tone:
    name: str
    loop: bool = False


@dataclass(frozen=True)
class StopTone:
    name: str


@dataclass(frozen=True)
class PlaceCall:
    """Make the peer connection, gather, send `dial`; report `dialed` or `dial_failed`."""

    call: ClientCall
    group: int
    callees: tuple[str, ...]
    ring_timeout_s: float


@dataclass(frozen=True)
class SendPicture:
    """The visitor's picture follows the placed call in its own `snapshot` message."""

    call: ClientCall


@dataclass(frozen=True)
class KeepPress:
    """Take a picture (the dial's, when one was on its way) and report it with `keep_press`."""

    pressed_at: float


@dataclass(frozen=True)
class Answer:
    """Answer a resident's look outside; report `answered` or `answer_failed`."""

    call: ClientCall
    offer: dict[str, Any]


@dataclass(frozen=True)
class UseAnswer:
    """The resident's answer to the door's offer: the media can start."""

    answer: dict[str, Any]


@dataclass(frozen=True)
class Decline:
    call_id: str


@dataclass(frozen=True)
class RecordMessage:
    """Nobody can answer: tell the visitor, then record their message for the call's residents.
    `name` is the call's id, or for a press the server did not hear `offline_message(pressed_at)`
    until the press is reported and has its call."""
    name: str


def offline_message(pressed_at: float) -> str:
    """The name of a message recorded while the server was unreachable."""
    return f"press-{round(pressed_at * 1000)}"


@dataclass(frozen=True)
class TellEnded:
    """Send `end` for this call. `wait`: before the next effect; else in the background (a
    frozen server must not hold up the door). `untold`: if the server could not be told,
    report `untold`, so the call ends here instead (the server's `ended` would have done it)."""

    call_id: str
    wait: bool = True
    untold: ClientCall | None = None


@dataclass(frozen=True)
class Teardown:
    """The live call is over here: timers, tones, the speaker and the peer connection go."""


@dataclass(frozen=True)
class StartCallTimers:
    """The maximum call time: `call_timer("warning")` after `warning_in_s`, `"limit"` after `limit_in_s`."""

    call: ClientCall
    warning_in_s: float
    limit_in_s: float


@dataclass(frozen=True)
class ReportMissed:
    """Report the kept presses (`missed_to_report` / `missed_result`)."""


Effect = (Tone | StopTone | PlaceCall | SendPicture | KeepPress | Answer | UseAnswer | Decline | TellEnded | Teardown
          | ArmClock | StartCallTimers | ReportMissed | RecordMessage)
MissedOutcome = Literal["reported", "refused", "not_stored", "unreachable"]


@dataclass
class DoorPolicy:
    rules: DoorRules
    #: Whether the door is signed in to the server now (the I/O layer keeps it up to date).
    connected: bool = False
    call: ClientCall | None = None
    #: The ring group of the current (or last) call the door placed.
    group: int = 0
    last_call: dict[str, Any] | None = None
    missed: deque[MissedPress] = field(default_factory=lambda: deque(maxlen=MAX_MISSED))
    calls_placed: int = 0
    calls_answered: int = 0
    ignored_presses: int = 0
    #: Why the last ignored press was ignored, for the installer's status and the demo.
    last_ignored: str | None = None
    #: Devices the server rang for the current (or last) call; 0: nobody is signed in.
    devices_rung: int | None = None
    missed_reported: int = 0
    door_openings: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    #: Quick replies played, for the installer's status.
    replies_played: int = 0
    #: The call a quick reply ended: the visitor heard the reply, so no tone and no next group.
    _replied: str | None = None
    #: A visitor's message is being recorded: presses meanwhile are ignored.
    recording: bool = False
    messages_recorded: int = 0
    _pressed_at: float = 0.0
    #: When a press ignored during the door's answered call came (wall clock): if that call
    #: turns out to be dead (its media gone), nobody heard the visitor, so the press rings then.
    _held_press: float | None = None

    # -- what the installer sees ---------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.call is not None and self.call.live

    @property
    def state(self) -> str:
        """idle, calling (dialing or ringing either way), connected, or recording (a visitor's
        message)."""
        if self.call is None or not self.call.live:
            return "recording" if self.recording else "idle"
        return "calling" if self.call.ringing_state else "connected"

    def claims(self) -> list[str]:
        """The call this door holds, told to the server at every sign-in."""
        return self.call.claims() if self.call is not None else []

    # -- the bell --------------------------------------------------------------------------------

    def press(self, now: float, wall: float) -> list[Effect]:
        call = self.call
        if call is not None and call.live and call.role == "caller":
            if call.answered:
                self._held_press = wall
            return self._ignore(f"the door is already in a call ({call.state})")
        if self.recording:
            return self._ignore("the door is recording the visitor's message")
        self._pressed_at = wall
        effects: list[Effect] = []
        if call is not None and call.live:
            # A resident looking outside must not stop a visitor from ringing: the view ends
            # and every resident is rung, the one who was looking included.
            log.info("bell pressed while %s looks outside: ending the view and ringing the residents",
                     (call.peer or {}).get("user_id"))
            effects += self._tell_ended(call)
            effects += self._teardown(EndReason.COMPLETED)
        effects.append(Tone("chime"))  # the visitor hears the press worked, server or not
        if not self.connected:
            self.last_error = "bell pressed while the server is unreachable; will report it when back"
            log.warning("%s", self.last_error)
            effects.append(KeepPress(wall))
            if self.rules.visitor_messages:  # nobody can be rung: the visitor may leave a message
                self.recording = True
                effects.append(RecordMessage(offline_message(wall)))
            return effects
        log.info("bell pressed: calling %s", ", ".join(self.rules.ring_groups[0].residents))
        return effects + self._dial(0, now)

    def _ignore(self, why: str) -> list[Effect]:
        self.ignored_presses += 1
        self.last_ignored = why
        log.info("bell pressed, ignored: %s", why)
        return []

    def keep_press(self, pressed_at: float, snapshot: bytes | None) -> None:
        self.missed.append(MissedPress(pressed_at, snapshot))

    def _dial(self, group: int, now: float) -> list[Effect]:
        ring = self.rules.ring_groups[group]
        self.group = group
        self.devices_rung = None
        # The call's own ring deadline: a server that dies or freezes while it rings never
        # says `no_answer`, and the visitor must not hear the ringback for ever.
        call = self.call = ClientCall.dial(now, ring.timeout_s)
        return [ArmClock.of(call), PlaceCall(call, group, ring.residents, ring.timeout_s)]

    def dialed(self, call: ClientCall, call_id: str, unknown: list[str]) -> list[Effect]:
        """The server placed the call (`ok` of `dial`); `unknown`: ring-group names it has no resident for."""
        call.dialed(call_id)
        if unknown:
            self.last_error = f"the server has no resident {', '.join(map(str, unknown))} for this door: check calls.ring_groups"
            log.warning("%s; the others ring", self.last_error)
        self.calls_placed += 1
        log.info("call %s placed", call_id)
        return [SendPicture(call)]

    def dial_failed(self, call: ClientCall, group: int, error: str, server_heard: bool) -> list[Effect]:
        """`dial` was refused (`server_heard`) or never answered: the first ring group's press is
        kept to report once the server is back, since the server never heard it."""
        failed = f"dial failed: {error or 'no answer from the server in time'}"
        log.error("%s", failed)
        effects: list[Effect] = []
        if group == 0 and not server_heard:
            effects.append(KeepPress(self._pressed_at))
            failed += "; the press is kept and will be reported when the server is back"
        self.last_error = failed
        return [*effects, *self._teardown(EndReason.DIAL_FAILED), Tone("no_answer")]

    def late_dial(self, call_id: str) -> list[Effect]:
        """The dial's `ok` came after the door gave up on it: end that call, or the residents
        would be rung for a visitor the door no longer serves; the server answers again, so
        the kept press goes to it."""
        log.warning("the server placed call %s after the door had given up on it: ending it", call_id)
        return [TellEnded(call_id), ReportMissed()]

    # -- the presses the server did not hear -----------------------------------------------------

    def missed_to_report(self) -> dict[str, Any] | None:
        """The body of the next `missed` to send, oldest press first; None when none is left."""
        if not self.missed or not self.connected:
            return None
        press = self.missed[0]
        callees = sorted({r for group in self.rules.ring_groups for r in group.residents})
        body: dict[str, Any] = {"callees": callees, "pressed_at": iso(press.pressed_at)}
        if press.snapshot:
            body["snapshot"] = base64.b64encode(press.snapshot).decode()
        return body

    def missed_result(self, outcome: MissedOutcome, detail: str = "") -> bool:
        """What became of the oldest kept press; whether to go on with the next one. A press
        the server could not store or did not hear is kept for the next connection; one it
        refused is dropped (it never will take it)."""
        pressed_at = iso(self.missed[0].pressed_at)
        if outcome == "unreachable":
            return False
        if outcome == "not_stored":
            log.warning("the server could not store the press from %s: %s; keeping it", pressed_at, detail)
            return False
        if outcome == "refused":
            log.error("the server refused a missed press from %s: %s; dropping it", pressed_at, detail)
        else:
            self.missed_reported += 1
            log.info("reported the press at %s while offline as %s", pressed_at, detail)
        self.missed.popleft()
        return True

    # -- residents looking outside ---------------------------------------------------------------

    def may_look_outside(self, caller: dict[str, Any]) -> bool:
        allowed = self.rules.auto_answer
        if allowed is None:  # the server routes only its own site's residents to this door
            return caller.get("kind") == "resident"
        return caller.get("user_id") in allowed

    def incoming(self, ring: Incoming) -> list[Effect]:
        busy = self.live
        if busy or not self.may_look_outside(ring.caller):
            log.info("declining call %s from %s: %s", ring.call_id, ring.caller.get("user_id"),
                     "the door is in a call" if busy else "not on the auto-answer list")
            return [Decline(ring.call_id)]
        call = self.call = ClientCall.incoming(ring.call_id, ring.caller)
        return [Answer(call, ring.offer)]

    def answered(self, call: ClientCall, now: float) -> list[Effect]:
        """The server took the door's `accept`."""
        call.accepted(now)  # the peer stays the resident who called
        self.calls_answered += 1
        log.info("%s is looking outside (call %s)", (call.peer or {}).get("user_id"), call.call_id)
        return [*([Tone("announce")] if self.rules.announce else []), *self._start_call_clock(call)]

    def answer_failed(self, call: ClientCall, error: str) -> list[Effect]:
        """An offer the door cannot answer (no H.264, say): the call ends, the door goes on."""
        log.warning("could not answer call %s: %s", call.call_id, error)
        assert call.call_id is not None
        return [*self._teardown(EndReason.DECLINED), Decline(call.call_id)]

    # -- the call's life ---------------------------------------------------------------------------

    def event(self, event: Event, now: float) -> list[Effect]:
        """A server event about the door's call (`incoming` is `incoming`)."""
        call = self.call
        if call is None or not call.live or event.call_id != call.call_id:
            return []
        if isinstance(event, Ringing):
            call.ringing()
            self.devices_rung = event.devices
            log.info("ringing on %d device(s)", event.devices)
            return [Tone("ringback", loop=True)]
        if isinstance(event, Accepted):
            call.accepted(now, event.by)
            self.last_error = None  # a call got through: an older error no longer describes the door
            log.info("answered by %s", event.by.get("user_id"))
            return [StopTone("ringback"), UseAnswer(event.answer), *self._start_call_clock(call)]
        if isinstance(event, Ended):
            log.info("call %s ended: %s", call.call_id, event.reason)
            effects = self._teardown(event.reason)
            if self._replied == call.call_id:
                return effects  # a resident's quick reply answered the visitor
            return effects + self._unanswered(event.reason, now) if call.unanswered else effects
        return []

    def media(self, state: str, now: float) -> list[Effect]:
        """The live call's peer connection changed state."""
        call = self.call
        if call is None or not call.live:
            return []
        connecting = call.state is CallState.CONNECTING
        if call.media_state(state, now) is not None:
            log.warning("the call's media is gone (peer connection %s) and the server is unreachable: ending the call",
                        state)
            return self._media_lost(call, now)
        if connecting and call.state is CallState.CONNECTED:
            log.info("media connected")
        if state in MEDIA_GONE and call.answered:
            log.info("the call's media is gone (peer connection %s): waiting %.0fs for the server's word", state,
                     MEDIA_GONE_GRACE_S)
            return [ArmClock.of(call)]
        return []

    def media_heard(self, call: ClientCall, now: float) -> None:
        """Packets arrived on the answered call's media lately (the I/O layer looks every
        second or two): its silence clock starts again."""
        if call is self.call:
            call.media_heard(now)

    def _media_lost(self, call: ClientCall, now: float) -> list[Effect]:
        """The answered call is over here (`call` has ended it): the server is told if it can
        be, and the door is ready to ring again whether it could or not. A press it ignored
        meanwhile was a visitor nobody heard: it rings now (or is kept while offline)."""
        held, self._held_press = self._held_press, None
        effects: list[Effect] = [*([TellEnded(call.call_id, wait=False)] if call.call_id and self.connected else []),
                                 *self._teardown(EndReason.CONNECTION_LOST)]
        if held is not None:
            log.info("the press ignored during that call rings now")
            effects += self.press(now, held)
        return effects

    def clock(self, call: ClientCall, now: float) -> list[Effect]:
        """The call's own clock fired (see `ArmClock`)."""
        if call is not self.call:
            return []
        answered = call.answered
        reason = call.expire(now)
        if reason is None:
            return [ArmClock.of(call)]
        if answered:
            log.warning("call %s: %s: the call is over", call.call_id,
                        "its media is gone and the server said nothing" if call.media_gone_at is not None else
                        f"nothing received from {(call.peer or {}).get('user_id')} for {MEDIA_SILENCE_S:.0f}s")
            return self._media_lost(call, now)
        if reason == EndReason.NO_ANSWER:
            log.warning("call %s: no answer and no word from the server by the door's own deadline: giving up",
                        call.call_id)
        else:
            log.warning("server gone for %.0fs while ringing: nobody can answer; giving up", LINK_GRACE_S)
        effects = self._teardown(reason)
        if call.call_id and self.connected:
            effects.append(TellEnded(call.call_id, wait=False))
        return effects + self._unanswered(reason, now)

    def call_timer(self, call: ClientCall, what: Literal["warning", "limit"]) -> list[Effect]:
        if call is not self.call or not call.live:
            return []
        if what == "warning":
            log.info("call %s ends in %.0fs", call.call_id, self.rules.warning_before_s)
            return [Tone("warning")]
        log.info("call %s reached the maximum call time (%.0fs): hanging up", call.call_id, self.rules.max_call_s)
        return self.hang_up()

    def hang_up(self) -> list[Effect]:
        """End the call from the door; the server's `ended` tears it down, or the door does
        when the server cannot be told."""
        call = self.call
        if call is None or not call.live:
            return []
        if call.call_id and self.connected:
            return [TellEnded(call.call_id, untold=call)]
        return self._teardown(self._own_end_reason(call))

    def untold(self, call: ClientCall) -> list[Effect]:
        """A `TellEnded(untold=call)` that did not reach the server."""
        if call is not self.call or not call.live:
            return []
        return self._teardown(self._own_end_reason(call))

    def stop(self) -> list[Effect]:
        """The daemon stops: a live call is ended cleanly."""
        call = self.call
        if call is None or not call.live:
            return []
        return [*self._tell_ended(call), *self._teardown(self._own_end_reason(call))]

    # -- the link to the server --------------------------------------------------------------------

    def link_up(self) -> None:
        """Signed in: from now on a press dials. (What the server still knows of the call is
        `signed_in`, handled in turn with the other events.)"""
        self.connected = True

    def link_lost(self, now: float) -> list[Effect]:
        self.connected = False
        call = self.call
        if call is None or not call.live:
            return []
        call.link_lost(now)
        return [ArmClock.of(call)]

    def signed_in(self, live_calls: set[str]) -> list[Effect]:
        """Signed in again: a call the server no longer knows (it restarted, or ended the call
        while the link was down) is over here too, instead of ringing or filming for nobody.
        The presses kept meanwhile are reported."""
        effects: list[Effect] = []
        call = self.call
        if call is not None and call.live:
            reason = call.signed_in(live_calls)
            effects.append(ArmClock.of(call))
            if reason is None:
                if call.call_id:
                    log.info("call %s goes on after the reconnection", call.call_id)
            else:
                log.warning("the server no longer knows call %s: ending it", call.call_id)
                effects += self._teardown(reason)
                if call.unanswered:
                    effects.append(Tone("no_answer"))
        return [*effects, ReportMissed()]

    # -- the door action ---------------------------------------------------------------------------

    def open_door(self, call_id: str, by: dict[str, Any], relay: bool) -> None:
        """Whether the strike may open for a resident the server has checked: only in a call
        this door knows (the live one or the last one), and only with a relay. Raises the
        refusal the server is answered with; every refusal is logged."""
        known = {c for c in ((self.call.call_id if self.call else None), (self.last_call or {}).get("call_id")) if c}
        who = by.get("user_id", "?")
        if call_id not in known:
            log.warning("refused to open the door for %s: call %s is not this door's current or last call", who, call_id)
            raise ProtocolError(ErrorCode.FORBIDDEN, "not this door's current or last call")
        if not relay:
            log.warning("asked to open the door for %s, but no relay is configured", who)
            raise ProtocolError(ErrorCode.CONFLICT, "this door has no relay configured (hardware.pins.relay)")

    def quick_reply(self, call_id: str, reply_id: str, by: dict[str, Any]) -> QuickReply:
        """The reply a resident rung by this door's visitor asked for, if the door's ring is
        still on; raises the refusal otherwise."""
        call = self.call
        if call is None or call.call_id != call_id or call.role != "caller" or not call.live or not call.ringing_state:
            raise ProtocolError(ErrorCode.CONFLICT, "the visitor's ring is over")
        reply = next((r for r in self.rules.quick_replies if r.id == reply_id), None)
        if reply is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"this door has no quick reply '{reply_id}'")
        if reply.ends_call:
            self._replied = call_id
        self.replies_played += 1
        log.info("playing the quick reply '%s' from %s", reply.id, by.get("user_id", "?"))
        return reply

    def reply_played(self) -> list[Effect]:
        """A quick reply's clip ended: the ringback again if the ring goes on."""
        call = self.call
        if call is not None and call.live and call.role == "caller" and call.ringing_state \
                and self._replied != call.call_id:
            return [Tone("ringback", loop=True)]
        return []

    def door_opened(self, call_id: str, by: dict[str, Any], pulse_s: float, wall: float) -> None:
        who = by.get("user_id", "?")
        self.door_openings.append({"at": iso(wall), "call_id": call_id, "by": who, "device_id": by.get("device_id"),
                                   "pulse_s": pulse_s})
        del self.door_openings[:-MAX_OPENINGS]
        log.info("door opened for %s (call %s), strike energised for %.1fs", who, call_id, pulse_s)

    # -- inside --------------------------------------------------------------------------------------

    def _start_call_clock(self, call: ClientCall) -> list[Effect]:
        """Answered: the ring's clocks stop; the maximum call time counts from the answer, with
        its warning tone before it."""
        limit, warn = self.rules.max_call_s, self.rules.warning_before_s
        return [ArmClock.of(call), StartCallTimers(call, limit - warn, limit)]

    def _tell_ended(self, call: ClientCall) -> list[Effect]:
        return [TellEnded(call.call_id)] if call.call_id and self.connected else []

    def _unanswered(self, reason: str, now: float) -> list[Effect]:
        """The visitor's ring ended with nobody on the line: the next ring group if the group
        did not answer or could not be rung (do-not-disturb, quiet hours), else the "nobody
        answered" tone (declined, server gone, nobody anywhere can be rung...)."""
        if reason in (EndReason.NO_ANSWER, EndReason.UNAVAILABLE) and self.group + 1 < len(self.rules.ring_groups):
            log.info("%s: escalating to ring group %d",
                     "no answer" if reason == EndReason.NO_ANSWER else "nobody in this group can be rung now",
                     self.group + 2)
            return self._dial(self.group + 1, now)
        if reason != EndReason.CANCELED:
            call_id = self.call.call_id if self.call is not None else None
            if self.rules.visitor_messages and call_id:
                log.info("nobody can answer: recording the visitor's message for call %s", call_id)
                return [RecordMessage(call_id)]
            return [Tone("no_answer")]
        return []

    def _teardown(self, reason: str) -> list[Effect]:
        self._held_press = None  # a press during a call that ended as calls do was heard by someone
        call = self.call
        if call is not None and call.live:
            call.ended(str(reason))
        if call is not None and call.state is CallState.ENDED:
            self.last_call = {"call_id": call.call_id, "end_reason": call.end_reason,
                              "peer": (call.peer or {}).get("user_id"), "role": call.role}
        return [Teardown()]

    @staticmethod
    def _own_end_reason(call: ClientCall) -> EndReason:
        """What the server would record for an end from the door."""
        if call.role == "caller" and call.ringing_state:
            return EndReason.CANCELED
        return EndReason.COMPLETED

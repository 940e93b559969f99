"""The call state machines, with no I/O, shared by the server, the door and the residents.

`ServerCall` is how the server routes one call between the caller's device and every device
of every callee. Each method takes an event and returns the messages to deliver (`Send`), so
the rules of the contract (first accept wins, decline from every device, end crossing an
accept, ...) are decided in one place and tested without sockets or timers. The server's I/O
layer delivers the messages and arms the timers named by `ring_deadline`.

`ClientCall` is a party's own view (door or resident): dialing/ringing -> connecting ->
connected -> ended, with illegal steps refused loudly rather than silently ignored. It keeps
the party's own clocks, fed with time like `ServerCall`, so that no call waits for ever on a
server that crashed, froze or forgot: a ring has a deadline of its own, a ring whose signaling
link is gone gives up, and a sign-in that does not list the call ends it. An answered call
survives a signaling outage: its media decides, and a call whose media is gone ends here
whatever the peer connection reports (`failed`, `closed` by itself, or nothing while no
packet arrives for `MEDIA_SILENCE_S`), so a dead call never holds a party.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .messages import (
    Accepted,
    Ended,
    EndReason,
    ErrorCode,
    Incoming,
    MissedPress,
    Ringing,
    SnapshotReady,
    event_message,
)


class CallState(StrEnum):
    DIALING = "dialing"
    RINGING = "ringing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    ENDED = "ended"


@dataclass(frozen=True, order=True)
class DeviceRef:
    """One connected device of one user: a user may be signed in on several at once."""

    user_id: str
    device_id: str

    def as_json(self) -> dict[str, str]:
        return {"user_id": self.user_id, "device_id": self.device_id}


@dataclass(frozen=True)
class Send:
    """A message the I/O layer must deliver to one device."""

    to: DeviceRef
    message: dict[str, Any]


class CallError(Exception):
    """A request the call refuses; the I/O layer answers it with `error`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ServerCall:
    call_id: str
    caller: DeviceRef
    caller_info: dict[str, Any]  # {user_id, display_name, kind}
    callees: tuple[str, ...]
    video: bool
    offer: dict[str, Any]
    created_at: float
    ring_timeout_s: float
    snapshot_url: str | None = None
    #: Callees the server does not ring (do-not-disturb, quiet hours, away): still parties of
    #: the call, so it is in their history, but no device of theirs rings or is woken.
    unavailable: tuple[str, ...] = ()
    #: The calling door's quick replies ({id, label}), offered with the ring.
    quick_replies: tuple[dict[str, str], ...] = ()
    state: CallState = CallState.DIALING
    #: Devices that were sent `incoming` and have not yet declined or been told it ended.
    ringing: dict[DeviceRef, None] = field(default_factory=dict)
    declined: dict[DeviceRef, None] = field(default_factory=dict)
    #: Every device that was ever sent `incoming`: a late request from one gets `conflict`.
    reached: dict[DeviceRef, None] = field(default_factory=dict)
    accepted_by: DeviceRef | None = None
    accepted_at: float | None = None
    end_reason: EndReason | None = None
    ended_by: DeviceRef | None = None
    ended_at: float | None = None
    #: (time, event, detail): what the Platform API shows as the call's timeline.
    timeline: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The whole call, for a store shared by several server processes (a cluster): any of
        them can take the next event. `from_json(to_json())` is the same call."""
        def refs(devices: dict[DeviceRef, None]) -> list[list[str]]:
            return [[d.user_id, d.device_id] for d in devices]

        def ref(device: DeviceRef | None) -> list[str] | None:
            return None if device is None else [device.user_id, device.device_id]
        return {
            "call_id": self.call_id, "caller": ref(self.caller), "caller_info": self.caller_info,
            "callees": list(self.callees), "video": self.video, "offer": self.offer, "created_at": self.created_at,
            "ring_timeout_s": self.ring_timeout_s, "snapshot_url": self.snapshot_url,
            "unavailable": list(self.unavailable), "quick_replies": [dict(r) for r in self.quick_replies],
            "state": str(self.state), "ringing": refs(self.ringing), "declined": refs(self.declined),
            "reached": refs(self.reached), "accepted_by": ref(self.accepted_by), "accepted_at": self.accepted_at,
            "end_reason": None if self.end_reason is None else str(self.end_reason), "ended_by": ref(self.ended_by),
            "ended_at": self.ended_at, "timeline": [[t, e, d] for t, e, d in self.timeline],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerCall:
        def refs(items: list[list[str]]) -> dict[DeviceRef, None]:
            return {DeviceRef(u, d): None for u, d in items}

        def ref(item: list[str] | None) -> DeviceRef | None:
            return None if item is None else DeviceRef(item[0], item[1])
        caller = ref(data["caller"])
        assert caller is not None
        return cls(
            call_id=data["call_id"], caller=caller, caller_info=data["caller_info"], callees=tuple(data["callees"]),
            video=data["video"], offer=data["offer"], created_at=data["created_at"],
            ring_timeout_s=data["ring_timeout_s"], snapshot_url=data["snapshot_url"],
            unavailable=tuple(data["unavailable"]), quick_replies=tuple(data["quick_replies"]),
            state=CallState(data["state"]), ringing=refs(data["ringing"]), declined=refs(data["declined"]),
            reached=refs(data["reached"]), accepted_by=ref(data["accepted_by"]), accepted_at=data["accepted_at"],
            end_reason=None if data["end_reason"] is None else EndReason(data["end_reason"]),
            ended_by=ref(data["ended_by"]), ended_at=data["ended_at"],
            timeline=[(t, e, d) for t, e, d in data["timeline"]])

    @property
    def rung_callees(self) -> tuple[str, ...]:
        return tuple(c for c in self.callees if c not in self.unavailable)

    @property
    def ring_deadline(self) -> float:
        return self.created_at + self.ring_timeout_s

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    def involves(self, device: DeviceRef) -> bool:
        return device == self.caller or device in self.reached

    def holds(self, device: DeviceRef) -> bool:
        """Whether this device is still in the call: its caller, the device that answered, or
        one that still rings. A device that declined or lost to another answer is not."""
        return not self.ended and (device == self.caller or device == self.accepted_by or device in self.ringing)

    def summary_for(self, device: DeviceRef) -> dict[str, Any]:
        """What a device is told of this call when it signs in (see `authenticate.calls`)."""
        role = "caller" if device == self.caller else "callee"
        return {"call_id": self.call_id, "state": str(self.state), "role": role}

    def _log(self, now: float, what: str, **detail: Any) -> None:
        self.timeline.append((now, what, detail))

    def incoming_event(self, now: float) -> dict[str, Any]:
        """`expires_in_s` is the ring's remaining lifetime, counted by the receiver's own clock
        (no clock skew between them): a ring that arrives late, or whose `ended` is lost, stops
        by itself instead of ringing for a visitor who left."""
        return event_message(Incoming(call_id=self.call_id, caller=self.caller_info, video=self.video, offer=self.offer,
                                      created_at=iso(self.created_at),
                                      expires_in_s=round(max(0.0, self.ring_deadline - now), 3),
                                      quick_replies=[dict(r) for r in self.quick_replies] or None,
                                      snapshot_url=self.snapshot_url or None))

    def ring(self, devices: list[DeviceRef], now: float) -> list[Send]:
        """The dial reached these callee devices (possibly none: nobody online yet)."""
        if self.state is not CallState.DIALING:
            raise CallError(ErrorCode.CONFLICT, f"call is {self.state}, not dialing")
        self.state = CallState.RINGING
        self.ringing = dict.fromkeys(devices)
        self.reached = dict.fromkeys(devices)
        self._log(now, "ringing", devices=len(devices))
        sends = [Send(d, self.incoming_event(now)) for d in devices]
        sends.append(Send(self.caller, event_message(Ringing(call_id=self.call_id, devices=len(devices)))))
        return sends

    def reach(self, device: DeviceRef, now: float) -> list[Send]:
        """A callee device came online while the call rings: it rings too."""
        if self.state is not CallState.RINGING or device.user_id not in self.rung_callees or self.involves(device):
            return []
        self.ringing[device] = None
        self.reached[device] = None
        self._log(now, "reached", **device.as_json())
        return [Send(device, self.incoming_event(now))]

    def add_snapshot(self, device: DeviceRef, url: str, now: float) -> list[Send]:
        """The caller's picture of the visitor, sent after the dial so the phones ring first.

        The door would otherwise hold its dial until the camera's next keyframe is encoded
        (up to a frame interval, 67 ms at 15 fps); now every phone rings at once and shows
        the picture a frame later. Devices reached from now on get it in `incoming`."""
        if device != self.caller:
            raise CallError(ErrorCode.FORBIDDEN, "only the caller sends the call's snapshot")
        if self.state is CallState.ENDED:
            raise CallError(ErrorCode.CONFLICT, f"call already ended ({self.end_reason})")
        if self.snapshot_url is not None:
            raise CallError(ErrorCode.CONFLICT, "the call already has its snapshot")
        self.snapshot_url = url
        self._log(now, "snapshot")
        watching = [*self.ringing, *([self.accepted_by] if self.accepted_by else [])]
        return [Send(d, event_message(SnapshotReady(call_id=self.call_id, snapshot_url=url))) for d in watching]

    def accept(self, device: DeviceRef, answer: dict[str, Any], now: float) -> list[Send]:
        if self.state is CallState.ENDED:
            raise CallError(ErrorCode.CONFLICT, f"call already ended ({self.end_reason})")
        if self.accepted_by is not None:
            raise CallError(ErrorCode.CONFLICT, "call was already accepted on another device")
        if device not in self.ringing:
            if device in self.declined:
                raise CallError(ErrorCode.CONFLICT, "this device declined the call")
            if device in self.reached:
                raise CallError(ErrorCode.CONFLICT, "this device no longer rings for this call")
            raise CallError(ErrorCode.FORBIDDEN, "this device is not ringing for this call")
        self.accepted_by = device
        self.accepted_at = now
        self.state = CallState.CONNECTED
        del self.ringing[device]
        others = list(self.ringing)
        self.ringing.clear()
        self._log(now, "accepted", **device.as_json())
        sends = [Send(self.caller, event_message(Accepted(call_id=self.call_id, by=device.as_json(), answer=answer)))]
        sends += [
            Send(d, event_message(Ended(call_id=self.call_id, reason=EndReason.OTHER_DEVICE_ACCEPTED, by=device.as_json())))
            for d in others
        ]
        return sends

    def decline(self, device: DeviceRef, now: float) -> list[Send]:
        if self.state is CallState.ENDED:
            raise CallError(ErrorCode.CONFLICT, f"call already ended ({self.end_reason})")
        if device in self.declined:
            return []
        if device not in self.ringing:
            if device == self.accepted_by:
                raise CallError(ErrorCode.CONFLICT, "call is already accepted on this device: end it instead")
            if device in self.reached:
                raise CallError(ErrorCode.CONFLICT, "this device no longer rings for this call")
            raise CallError(ErrorCode.FORBIDDEN, "this device is not ringing for this call")
        del self.ringing[device]
        self.declined[device] = None
        self._log(now, "declined", **device.as_json())
        if not self.ringing:
            return self._finish(EndReason.DECLINED, device, now)
        return []

    def end(self, device: DeviceRef, now: float) -> list[Send]:
        """`end` from a party: cancels before accept, completes after; a ringing callee declines."""
        if self.state is CallState.ENDED:
            raise CallError(ErrorCode.CONFLICT, f"call already ended ({self.end_reason})")
        if device == self.caller:
            reason = EndReason.COMPLETED if self.accepted_by else EndReason.CANCELED
            return self._finish(reason, device, now)
        if device == self.accepted_by:
            return self._finish(EndReason.COMPLETED, device, now)
        if device in self.ringing or device in self.declined:
            return self.decline(device, now)
        if device in self.reached:
            raise CallError(ErrorCode.CONFLICT, "this device no longer rings for this call")
        raise CallError(ErrorCode.FORBIDDEN, "this device is not a party of this call")

    def missed(self, devices: list[DeviceRef], now: float) -> list[Send]:
        """A press the door could not dial (the server was unreachable), reported afterwards:
        the record says when it happened and why nobody rang; the residents' devices online
        now are told, so a visitor is not silently lost."""
        if self.state is not CallState.DIALING:
            raise CallError(ErrorCode.CONFLICT, f"call is {self.state}, not dialing")
        self._log(self.created_at, "pressed_offline")
        self._log(now, "reported", devices=len(devices))
        self.state = CallState.ENDED
        self.end_reason = EndReason.DIAL_FAILED
        self.ended_by = self.caller
        self.ended_at = now
        missed = MissedPress(call_id=self.call_id, caller=self.caller_info, pressed_at=iso(self.created_at),
                             snapshot_url=self.snapshot_url or None)
        return [Send(d, event_message(missed)) for d in devices]

    def expire(self, now: float) -> list[Send]:
        """The ring timeout passed: nobody answered."""
        if self.state is not CallState.RINGING:
            return []
        return self._finish(EndReason.NO_ANSWER, None, now)

    def time_out(self, now: float) -> list[Send]:
        """The maximum call duration passed."""
        if self.state is CallState.ENDED:
            return []
        return self._finish(EndReason.TIMED_OUT, None, now)

    def abort(self, reason: EndReason, now: float) -> list[Send]:
        """The server itself ends the call (shutting down, internal failure)."""
        if self.state is CallState.ENDED:
            return []
        return self._finish(reason, None, now)

    def lose(self, device: DeviceRef, now: float) -> list[Send]:
        """A device's connection is gone for good (after the grace period)."""
        if self.state is CallState.ENDED:
            return []
        if device == self.caller or device == self.accepted_by:
            return self._finish(EndReason.CONNECTION_LOST, device, now)
        if device in self.ringing:
            # A phone that dropped off while ringing simply stops ringing; others may answer.
            del self.ringing[device]
            self._log(now, "lost", **device.as_json())
            if not self.ringing and self.declined:
                return self._finish(EndReason.DECLINED, None, now)
        return []

    def _finish(self, reason: EndReason, by: DeviceRef | None, now: float) -> list[Send]:
        """Every device still involved gets exactly one `ended`."""
        self.state = CallState.ENDED
        self.end_reason = reason
        self.ended_by = by
        self.ended_at = now
        self._log(now, "ended", reason=str(reason), **(by.as_json() if by else {}))
        message = event_message(Ended(call_id=self.call_id, reason=str(reason), by=by.as_json() if by else None))
        targets = [self.caller]
        if self.accepted_by:
            targets.append(self.accepted_by)
        targets += list(self.ringing) + list(self.declined)
        self.ringing.clear()
        return [Send(d, dict(message)) for d in dict.fromkeys(targets)]


class InvalidTransition(Exception):
    pass


# The legal steps of a party's own view of a call.
_CLIENT_STEPS: dict[CallState, frozenset[CallState]] = {
    CallState.DIALING: frozenset({CallState.RINGING, CallState.ENDED}),
    CallState.RINGING: frozenset({CallState.CONNECTING, CallState.ENDED}),
    CallState.CONNECTING: frozenset({CallState.CONNECTED, CallState.ENDED}),
    CallState.CONNECTED: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


#: A caller's own ring deadline is the ring timeout it asked for plus this: the server's
#: `no_answer` normally comes first, but a server that crashed or froze never sends it.
RING_MARGIN_S = 5.0
#: How long a ring outlives the loss of its signaling link: nobody can answer through a
#: server that is gone, and the link usually comes back within a few seconds if it comes.
LINK_GRACE_S = 15.0
#: How long an answered call may receive nothing at all (no RTP, no RTCP, no DTLS) before it
#: is over. Every party sends RTCP at least every few seconds on every stream it receives, so
#: a live call is never this quiet, even from a phone that sends no sound; a party that died
#: or lost its network is, and its peer connection may say nothing for ~30 s (ICE consent)
#: or ever (aiortc closes itself instead of failing).
MEDIA_SILENCE_S = 10.0
#: The peer connection's states that mean its media is gone for good. aiortc reports
#: `closed` when the other side's DTLS closes or ICE consent expires; browsers `failed`.
MEDIA_GONE = frozenset({"failed", "closed"})
#: How long a call whose peer connection is gone waits for the server's `ended` while the
#: signaling link is up: the other side's hang-up closes the media (DTLS) before the server's
#: word arrives, and that call ended `completed`, not `connection_lost`. With the link down
#: nobody will say a word: the call ends at once.
MEDIA_GONE_GRACE_S = 3.0


@dataclass(frozen=True)
class ArmClock:
    """The effect a party's policy returns for its call's own clock: one timer at `deadline`
    (the party's monotonic clock) that reports back when it fires; None disarms it."""

    call: ClientCall
    deadline: float | None

    @classmethod
    def of(cls, call: ClientCall) -> ArmClock:
        return cls(call, call.deadline())


@dataclass
class ClientCall:
    """A party's view of one call; the caller starts in `dialing`, a callee in `ringing`.

    Times are the party's own monotonic clock. The I/O layer arms one timer at `deadline()`
    and calls `expire(now)` when it fires; it reports the signaling link with `link_lost` and
    `signed_in`. Each returns the end reason when it ended the call, else None."""

    role: str  # "caller" or "callee"
    call_id: str | None = None
    state: CallState = CallState.DIALING
    end_reason: str | None = None
    peer: dict[str, Any] | None = None
    #: Until when this call may ring (caller: its own deadline; callee: the ring's lifetime).
    ring_until: float | None = None
    #: When the signaling link went, while it is gone.
    link_lost_at: float | None = None
    #: Whether the call ended before anyone answered it (the visitor hears "nobody answered").
    unanswered: bool = False
    #: When the answered call's media was last heard from (see `media_heard`); None before.
    media_heard_at: float | None = None
    #: When its peer connection failed or closed, while the server may still explain why.
    media_gone_at: float | None = None

    @classmethod
    def dial(cls, now: float, ring_timeout_s: float) -> ClientCall:
        return cls(role="caller", ring_until=now + ring_timeout_s + RING_MARGIN_S)

    @classmethod
    def incoming(cls, call_id: str, caller: dict[str, Any], now: float | None = None,
                 expires_in_s: float | None = None) -> ClientCall:
        ring_until = now + expires_in_s if now is not None and expires_in_s is not None else None
        return cls(role="callee", call_id=call_id, state=CallState.RINGING, peer=caller, ring_until=ring_until)

    @property
    def ringing_state(self) -> bool:
        return self.state in (CallState.DIALING, CallState.RINGING)

    @property
    def answered(self) -> bool:
        return self.state in (CallState.CONNECTING, CallState.CONNECTED)

    def deadline(self) -> float | None:
        """When `expire` must next be called; None while no clock runs."""
        if self.answered:
            times = [t for t in (None if self.media_heard_at is None else self.media_heard_at + MEDIA_SILENCE_S,
                                 None if self.media_gone_at is None else self.media_gone_at + MEDIA_GONE_GRACE_S)
                     if t is not None]
            return min(times) if times else None
        if not self.ringing_state:
            return None
        times = [t for t in (self.ring_until,
                             None if self.link_lost_at is None else self.link_lost_at + LINK_GRACE_S) if t is not None]
        return min(times) if times else None

    def expire(self, now: float) -> EndReason | None:
        """The call's own clocks at `now`: a ring past its deadline ends `no_answer`, a ring
        whose link has been gone too long ends `connection_lost`, and so does an answered call
        whose media has been silent for `MEDIA_SILENCE_S`."""
        if self.answered:
            deadline = self.deadline()
            return self._end_by_clock(EndReason.CONNECTION_LOST) if deadline is not None and now >= deadline else None
        if not self.ringing_state:
            return None
        if self.ring_until is not None and now >= self.ring_until:
            return self._end_by_clock(EndReason.NO_ANSWER)
        if self.link_lost_at is not None and now >= self.link_lost_at + LINK_GRACE_S:
            return self._end_by_clock(EndReason.CONNECTION_LOST)
        return None

    def link_lost(self, now: float) -> None:
        if self.live and self.link_lost_at is None:
            self.link_lost_at = now

    def signed_in(self, live_call_ids: set[str]) -> EndReason | None:
        """Signed in again; the server listed the calls it knows for this device. A call it
        does not list is over (it restarted, or ended the call while the link was down)."""
        self.link_lost_at = None
        if self.live and self.call_id and self.call_id not in live_call_ids:
            return self._end_by_clock(EndReason.CONNECTION_LOST)
        return None

    def claims(self) -> list[str]:
        """What this party tells the server it still holds when it signs in."""
        return [self.call_id] if self.live and self.call_id else []

    def _end_by_clock(self, reason: EndReason) -> EndReason:
        self.ended(str(reason))
        return reason

    def _step(self, to: CallState) -> None:
        if to not in _CLIENT_STEPS[self.state]:
            raise InvalidTransition(f"call {self.call_id}: {self.state} -> {to} is not allowed")
        self.state = to

    def dialed(self, call_id: str) -> None:
        """The server accepted the dial and named the call."""
        if self.state is not CallState.DIALING:
            raise InvalidTransition(f"call id given while {self.state}")
        self.call_id = call_id

    def ringing(self) -> None:
        self._step(CallState.RINGING)

    def accepted(self, now: float, by: dict[str, Any] | None = None) -> None:
        """Caller: the answer arrived. Callee: our accept was taken. The media's clock starts:
        a peer that never connects is as silent as one that died."""
        if by is not None:
            self.peer = by
        self._step(CallState.CONNECTING)
        self.media_heard_at = now

    def media_heard(self, now: float) -> None:
        """Something arrived on the answered call's media since the last report. The I/O layer
        reports it every second or two (not every packet); the clock, when it fires, is armed
        again at the new deadline."""
        if self.answered:
            self.media_heard_at = now

    def media_state(self, state: str, now: float) -> EndReason | None:
        """The peer connection's state changed: `connected` completes the call's set-up; a
        state in `MEDIA_GONE` ends an answered call (`connection_lost`): at once while the
        signaling link is down, else `MEDIA_GONE_GRACE_S` later if the server's `ended` has
        not come first (see `deadline`). A ring's peer connection has nothing to lose yet."""
        if state == "connected" and self.state is CallState.CONNECTING:
            self._step(CallState.CONNECTED)
            self.media_heard_at = now
        elif state in MEDIA_GONE and self.answered:
            if self.link_lost_at is not None:
                return self._end_by_clock(EndReason.CONNECTION_LOST)
            if self.media_gone_at is None:
                self.media_gone_at = now
        return None

    def ended(self, reason: str) -> None:
        if self.state is CallState.ENDED:
            return
        self.unanswered = self.role == "caller" and self.ringing_state
        self._step(CallState.ENDED)
        self.end_reason = reason

    @property
    def live(self) -> bool:
        return self.state is not CallState.ENDED

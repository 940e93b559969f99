"""A party's requests about calls (`dial`, `missed`, `snapshot`, `accept`, `decline`, `end`),
from whatever endpoint they came: each checked, turned into a `ServerCall` event, applied
through the call service, answered, then delivered."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from datetime import datetime

from intercom_protocol import messages as m
from intercom_protocol.calls import CallError, DeviceRef, Send, ServerCall
from intercom_protocol.messages import EndReason, ErrorCode, ProtocolError, Request

from .availability import RuleBook
from .background import Background
from .database import DatabaseError
from .directory import Directory
from .events import EventType, party
from .records import User, UserKind
from .service import CallService
from .state import Endpoint, Event

log = logging.getLogger("intercom.server")


def _decode_snapshot(req: Request[m.Dial] | Request[m.Missed] | Request[m.Snapshot]) -> bytes:
    """The picture the request carries (the caller checked it has one)."""
    assert req.body.snapshot is not None
    try:
        return base64.b64decode(req.body.snapshot, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{req.type}.snapshot' is not valid base64", req.id) from None


def _may_call(caller: User, callee: User) -> bool:
    """A door calls residents of its site; a resident calls doors of its site."""
    return caller.site_id == callee.site_id and caller.kind != callee.kind


class CallRequests:
    def __init__(self, service: CallService, directory: Directory, rules: RuleBook, background: Background) -> None:
        self.service = service
        self.directory = directory
        self.rules = rules
        self.background = background
        self.settings = service.settings
        self.store = service.store
        self.push = service.push
        self.events = service.events

    async def _new_call(self, conn: Endpoint, req: Request[m.Dial] | Request[m.Missed], created_at: float,
                        ring_timeout_s: float) -> tuple[ServerCall, bytes | None, list[str]]:
        """Check the callees and the snapshot of a `dial` or `missed`, and make the call.

        Callees that do not exist or may not be called are left out and named in the reply:
        a ring group that names one stale user still rings everyone else. Both kinds are
        named alike, so the reply does not tell whether a user exists on another site. Who
        they are comes from memory (`directory.py`): the bell rings while the database is down."""
        assert conn.user is not None and conn.device is not None
        body = req.body
        dialed = body if isinstance(body, m.Dial) else None  # else a press reported afterwards: no media
        wanted = list(dict.fromkeys(body.callees))
        found = await self.directory.users_of(wanted)
        callees = [c for c in wanted if c in found and _may_call(conn.user, found[c])]
        unknown = [c for c in wanted if c not in callees]
        if not callees:
            names = ", ".join(f"'{c}'" for c in unknown)
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not call {names}: no such user on your site", req.id)
        clock = self.settings.clock()
        unavailable = tuple(c for c in callees if self.rules.why_not(found[c], clock) is not None)
        snapshot = _decode_snapshot(req) if body.snapshot is not None else None
        call_id = "call_" + secrets.token_hex(8)
        call = ServerCall(
            call_id=call_id, caller=conn.device,
            caller_info=conn.user.caller_json(),
            callees=tuple(callees), video=dialed.video is not False if dialed else True,
            offer=dialed.offer if dialed else {}, created_at=created_at,
            ring_timeout_s=ring_timeout_s, snapshot_url=f"/v1/direct_calls/{call_id}/snapshot" if snapshot else None,
            unavailable=unavailable, quick_replies=conn.quick_replies if dialed else ())
        return call, snapshot, unknown

    async def dial(self, conn: Endpoint, req: Request[m.Dial]) -> None:
        """Ring first, store after: the phones are rung before the call is written, so a
        failing disk never silences the bell (the record is completed at the end)."""
        now = time.time()
        call, snapshot, unknown = await self._new_call(
            conn, req, now, float(req.body.ring_timeout_s or self.settings.ring_timeout_s))
        call_id = call.call_id
        # A phone rings if it is connected or can be woken by Web Push; one that is both is
        # one device, rung both ways (its service worker shows no notification while the app
        # is on screen).
        rung = call.rung_callees
        subs = self.push.subscribed(rung, now)
        devices = sorted(set(await self.service.devices_of(rung)) | {s.device for s in subs})
        sends = call.ring(devices, now)
        await self.service.add(call, sends, {"ring": now + call.ring_timeout_s, "max": now + self.settings.max_duration_s})
        conn.send(m.ok(req.id, call_id=call_id, **({"unknown": unknown} if unknown else {})))
        log.info("%s dials %s: %s, %d device(s) ringing%s%s", call.caller.user_id, ",".join(call.callees), call_id,
                 len(devices), f"; not callers' users: {', '.join(unknown)}" if unknown else "",
                 f"; not rung now (do-not-disturb, quiet hours, away): {', '.join(call.unavailable)}"
                 if call.unavailable else "")
        self.service.deliver_new(call, sends)
        self.push.ring(call, subs, now)
        self.background.store("record the call", self.store.calls.record_call(call, snapshot))
        if call.caller_info["kind"] == UserKind.DOOR:
            self.events.call(EventType.RING, call, now, callees=list(call.callees), devices_ringing=len(devices))
        if snapshot is not None:
            self.events.call(EventType.PICTURE, call, now, picture=snapshot)
        if not rung:  # nobody may be rung: the door hears so at once (its next group, or nobody)
            await self.service.event(call_id, lambda c: c.abort(EndReason.UNAVAILABLE, time.time()))

    async def missed(self, conn: Endpoint, req: Request[m.Missed]) -> None:
        """A door reports a press it made while it could not reach the server."""
        assert conn.user is not None
        if conn.user.kind != UserKind.DOOR:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a door station reports missed presses", req.id)
        pressed_at = datetime.fromisoformat(req.body.pressed_at).timestamp()
        call, snapshot, _ = await self._new_call(conn, req, pressed_at, 0.0)
        devices = sorted(await self.service.devices_of(call.rung_callees))
        sends = call.missed(devices, time.time())
        self.background.spawn(self._store_missed(conn, req, call, snapshot, sends))

    async def _store_missed(self, conn: Endpoint, req: Request[m.Missed], call: ServerCall, snapshot: bytes | None,
                            sends: list[Send]) -> None:
        """The door forgets a press once it has `ok`: the record is on disk before that, or
        the door keeps the press for its next connection."""
        try:
            await self.store.calls.finish_call(call, snapshot)
        except (DatabaseError, OSError) as exc:
            self.background.store_failed("record a missed press", exc)
            conn.send(m.error(req.id, ErrorCode.INTERNAL, "the press could not be stored; report it again later"))
            return
        await self.service.add(call, sends)
        conn.send(m.ok(req.id, call_id=call.call_id))
        assert conn.user is not None
        log.info("%s reports a press at %s while offline: %s", conn.user.user_id, req.body.pressed_at, call.call_id)
        self.service.deliver_new(call, sends)
        self.push.missed(call, time.time())
        if snapshot is not None:
            self.events.call(EventType.PICTURE, call, call.created_at, picture=snapshot)
        self.events.call(EventType.MISSED, call, call.created_at, offline=True, pressed_at=req.body.pressed_at)

    async def _request(self, conn: Endpoint,
                       req: Request[m.Snapshot] | Request[m.Accept] | Request[m.Decline] | Request[m.End],
                       event: Event) -> ServerCall:
        """A party's request on its call: applied, `ok`, then delivered, in its turn."""
        async with self.service.turn(req.body.call_id):
            call = await self.service.involving(conn.device, req.body.call_id)
            applied = await self.service.apply(call.call_id, event) if call is not None else None
            if applied is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no live call '{req.body.call_id}'", req.id)
            conn.send(m.ok(req.id))
            await self.service.deliver(applied)
        return applied.call

    async def snapshot(self, conn: Endpoint, req: Request[m.Snapshot]) -> None:
        picture = _decode_snapshot(req)
        now = time.time()
        assert conn.device is not None
        device = conn.device
        call = await self._request(conn, req, lambda c: c.add_snapshot(
            device, f"/v1/direct_calls/{c.call_id}/snapshot", now))
        self.background.store("store the visitor's picture", self.store.calls.set_snapshot(call.call_id, picture))
        self.events.call(EventType.PICTURE, call, now, picture=picture)

    async def accept(self, conn: Endpoint, req: Request[m.Accept]) -> None:
        assert conn.user is not None and conn.device is not None
        now, device, answer = time.time(), conn.device, req.body.answer
        call = await self._request(conn, req, lambda c: c.accept(device, answer, now))
        self.push.answered(call, conn.user.display_name, now)
        self.background.store("record the answer", self.store.calls.accept_call(call))
        if call.caller_info["kind"] == UserKind.DOOR:
            self.events.call(EventType.ANSWERED, call, now, by=party(device, conn.user.display_name))
        else:  # a resident looking outside: the door answered, the resident is who is in the call
            self.events.call(EventType.ANSWERED, call, now, by=party(call.caller, call.caller_info["display_name"]))

    async def decline(self, conn: Endpoint, req: Request[m.Decline]) -> None:
        assert conn.device is not None
        device, now = conn.device, time.time()
        await self._request(conn, req, lambda c: c.decline(device, now))

    async def decline_from(self, device: DeviceRef, call_id: str) -> None:
        """A decline from a phone's notification, which has no WebSocket: the phone's service
        worker sends it over HTTP with the phone's token. Raises `CallError`."""
        async with self.service.turn(call_id):
            call = await self.service.involving(device, call_id)
            now = time.time()
            applied = await self.service.apply(call_id, lambda c: c.decline(device, now)) if call else None
            if applied is None:
                raise CallError(ErrorCode.NOT_FOUND, f"no live call '{call_id}' rings this device")
            await self.service.deliver(applied)

    async def end(self, conn: Endpoint, req: Request[m.End]) -> None:
        assert conn.device is not None
        device, now = conn.device, time.time()
        await self._request(conn, req, lambda c: c.end(device, now))

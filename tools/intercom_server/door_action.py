"""The door action (`open_door`): who may open, the door asked, and every attempt in the site's
door log, written before the door is asked (fail closed).

The server checks the resident and the call; the door checks again and pulses its strike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

from intercom_protocol import messages as m
from intercom_protocol.calls import DeviceRef, ServerCall
from intercom_protocol.messages import ErrorCode, ProtocolError, Request

from .background import Background
from .connection import ConnectionGone
from .database import DatabaseError
from .events import EventType
from .records import UserKind
from .service import CallService
from .state import Endpoint

log = logging.getLogger("intercom.server")

_ERROR_CODES = frozenset(str(c) for c in ErrorCode)
#: The `device_id` an integration's openings carry in the door log (its `user_id` is its name).
INTEGRATION_DEVICE = "integration"


class Opening(NamedTuple):
    """How an opening went: `opened`, `refused` or `failed`, with the protocol's error code."""
    outcome: str
    code: str | None
    message: str
    pulse_s: float | None = None


def _unanswered(exc: TimeoutError | ConnectionGone) -> str:
    """Why a request to the door got no answer."""
    if isinstance(exc, TimeoutError):
        return "the door station did not answer in time"
    return "the door station disconnected before it answered"


def _refusal(reply: dict[str, Any]) -> tuple[str, str]:
    """The door's `error` reply as (a known error code, its message, bounded): a garbled one
    is still a refusal."""
    code = reply.get("code")
    return (code if isinstance(code, str) and code in _ERROR_CODES else ErrorCode.INTERNAL,
            str(reply.get("message") or "no reason given")[:200])


class DoorAction:
    """For a resident's device (`request`) and for an integration (`for_integration`), through
    the call service's public face only. The door's user is read from the store, not from
    memory: an opening fails closed, and needs the database for its log anyway."""

    def __init__(self, service: CallService, background: Background) -> None:
        self.service = service
        self.background = background
        self.settings = service.settings
        self.store = service.store

    async def request(self, conn: Endpoint, req: Request[m.Action]) -> None:
        """`open_door`: checked here, carried out by the door, and audited either way."""
        assert conn.user is not None and conn.device is not None
        name, call_id = req.body.name, req.body.call_id
        if name == "quick_reply":
            await self.quick_reply(conn, req)
            return
        if name != "open_door":
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown action '{name}'; the actions are: open_door, "
                                                       "quick_reply", req.id)
        now = time.time()
        call = await self.service.find_call(call_id)
        site_id = conn.user.site_id
        try:
            door = await self._door_of(conn, call, now)
        except ProtocolError as exc:
            self._audit(site_id, conn.device, call_id, None, "refused", exc.message, now)
            raise
        if not await self.service.is_connected(door):
            self._audit(site_id, conn.device, call_id, door, "failed", "the door station is not connected", now)
            raise ProtocolError(ErrorCode.CONFLICT, "the door station is not connected", req.id)
        self.background.spawn(self._open_door(conn, req, door, now))

    async def _door_of(self, conn: Endpoint, call: ServerCall | None, now: float) -> DeviceRef:
        """The door device of a call this resident's device answered or placed, or `forbidden`."""
        assert conn.user is not None and conn.device is not None
        if conn.user.kind != UserKind.RESIDENT:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a resident may open the door")
        me = conn.device
        # Unknown calls and other people's calls are refused alike: the reply reveals nothing.
        if call is None or not call.involves(me):
            raise ProtocolError(ErrorCode.FORBIDDEN, "you are not a party of a call with this door")
        if call.accepted_by is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the call has not been answered")
        if me not in (call.caller, call.accepted_by):
            raise ProtocolError(ErrorCode.FORBIDDEN, "another device answered this call")
        door = call.accepted_by if me == call.caller else call.caller
        door_user = await self.store.users.find_user(door.user_id)
        if door_user is None or door_user.kind != UserKind.DOOR or door_user.site_id != conn.user.site_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the other party is not a door of your site")
        window = self.settings.open_door_window_s
        if call.ended_at is not None and now - call.ended_at > window:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"the call ended more than {window:g} s ago")
        return door

    async def _open_door(self, conn: Endpoint, req: Request[m.Action], door: DeviceRef, now: float) -> None:
        assert conn.user is not None and conn.device is not None
        opening = await self.carry_out(conn.user.site_id, conn.device, conn.user.display_name, req.body.call_id,
                                       door, now)
        if opening.outcome == "opened":
            conn.send(m.ok(req.id))
        else:
            conn.send(m.error(req.id, opening.code or ErrorCode.INTERNAL, opening.message))

    async def quick_reply(self, conn: Endpoint, req: Request[m.Action]) -> None:
        """A resident rung by a visitor's call has the door play one of its quick replies
        ("I'm coming"), without answering. The door plays it, or says why it cannot."""
        assert conn.user is not None and conn.device is not None
        call = await self.service.find_call(req.body.call_id)
        if call is not None and call.ended:
            call = None
        if conn.user.kind != UserKind.RESIDENT or call is None or not call.involves(conn.device) \
                or call.caller_info.get("kind") != UserKind.DOOR:
            raise ProtocolError(ErrorCode.FORBIDDEN, "you are not rung by this door's visitor", req.id)
        if req.body.reply is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'action.reply' names the quick reply to play", req.id)
        if call.accepted_by is not None:
            raise ProtocolError(ErrorCode.CONFLICT, "the call was answered: talk to the visitor instead", req.id)
        reply = next((r for r in call.quick_replies if r["id"] == req.body.reply), None)
        if reply is None:
            offered = ", ".join(r["id"] for r in call.quick_replies) or "none"
            raise ProtocolError(ErrorCode.NOT_FOUND, f"the door has no quick reply '{req.body.reply}'; it has: "
                                                     f"{offered}", req.id)
        if not await self.service.is_connected(call.caller):
            raise ProtocolError(ErrorCode.CONFLICT, "the door station is not connected", req.id)
        self.background.spawn(self._play_reply(conn, req, call, reply))

    async def _play_reply(self, conn: Endpoint, req: Request[m.Action], call: ServerCall,
                          reply: dict[str, str]) -> None:
        assert conn.user is not None and conn.device is not None
        try:
            answer = await self.service.ask(call.caller, "action", self.settings.door_reply_timeout_s,
                                        call_id=call.call_id, name="quick_reply", reply=reply["id"],
                                        by={**conn.device.as_json(), "display_name": conn.user.display_name})
        except (TimeoutError, ConnectionGone) as exc:
            conn.send(m.error(req.id, ErrorCode.INTERNAL, _unanswered(exc)))
            return
        if answer["type"] != "ok":
            code, message = _refusal(answer)
            conn.send(m.error(req.id, code, f"the door refused: {message}"))
            return
        ends = answer.get("ends_call") is True
        log.info("%s/%s sent the quick reply '%s' to %s's visitor (call %s)%s", conn.device.user_id,
                 conn.device.device_id, reply["id"], call.caller.user_id, call.call_id, "; it ends the call" if ends else "")
        conn.send(m.ok(req.id, ends_call=ends))
        if ends:  # answered for everyone: the other phones stop ringing
            now = time.time()
            await self.service.event(call.call_id, lambda c: c.abort(m.EndReason.DECLINED, now))

    async def carry_out(self, site_id: str, by: DeviceRef, display_name: str, call_id: str, door: DeviceRef,
                        now: float) -> Opening:
        """Ask the door, once the request is on the door log; the log gets the door's answer.

        For a resident's device and for an integration alike (`by`), once the server's own
        checks have passed."""
        # Fail closed: the entry is on disk before the door is asked, or the door stays shut.
        try:
            entry = await self._audit(site_id, by, call_id, door, "opening", "asked the door; no answer recorded yet",
                                      now)
        except (DatabaseError, OSError):
            return Opening("failed", ErrorCode.INTERNAL, "the door log cannot be written, so the door was not opened")
        try:
            reply = await self.service.ask(door, "action", self.settings.door_reply_timeout_s, call_id=call_id,
                                       name="open_door", by={**by.as_json(), "display_name": display_name})
        except (TimeoutError, ConnectionGone) as exc:
            why = _unanswered(exc)
            self._settle(by, entry, call_id, "failed", why)
            return Opening("failed", ErrorCode.INTERNAL, why)
        if reply["type"] == "ok":
            self._settle(by, entry, call_id, "opened", None)
            pulse = reply.get("pulse_s")
            pulse_s = float(pulse) if isinstance(pulse, int | float) and 0 < pulse <= 60 else None
            self.service.events.door(EventType.DOOR_OPENED, door.user_id, now, call_id=call_id,
                                 by={**by.as_json(), "display_name": display_name}, pulse_s=pulse_s)
            return Opening("opened", None, "opened", pulse_s)
        code, message = _refusal(reply)
        self._settle(by, entry, call_id, "refused", f"the door: {message}")
        return Opening("refused", code, f"the door refused: {message}")

    async def for_integration(self, integration: str, door_id: str) -> Opening:
        """An opening asked by an integration (Home Assistant over MQTT), whose own switch and
        rate limit have passed: as for a resident, someone must be at the door (a call of
        this door that is ringing, in progress, or ended less than `open_door_window_s` ago),
        the attempt is on the door log before the door is asked, and the door decides."""
        now = time.time()
        by = DeviceRef(integration, INTEGRATION_DEVICE)
        door_user = await self.store.users.find_user(door_id)
        if door_user is None or door_user.kind != UserKind.DOOR:
            return Opening("refused", ErrorCode.NOT_FOUND, f"there is no door '{door_id}'")
        site_id = door_user.site_id
        found = await self._door_call(door_id, now)
        if found is None:
            why = (f"nobody is at the door: no call of this door is ringing, in progress or ended within "
                   f"{self.settings.open_door_window_s:g} s")
            self._audit(site_id, by, "", None, "refused", why, now)
            return Opening("refused", ErrorCode.FORBIDDEN, why)
        call, door = found
        if not await self.service.is_connected(door):
            self._audit(site_id, by, call.call_id, door, "failed", "the door station is not connected", now)
            return Opening("failed", ErrorCode.CONFLICT, "the door station is not connected")
        return await self.carry_out(site_id, by, integration, call.call_id, door, now)

    async def _door_call(self, door_id: str, now: float) -> tuple[ServerCall, DeviceRef] | None:
        """The door's live call, else its latest one that ended within the window, with the
        door's own device in it."""
        window = self.settings.open_door_window_s
        calls = await self.service.calls_of([door_id], live_only=False)
        for call in [*reversed([c for c in calls if not c.ended]), *reversed([c for c in calls if c.ended])]:
            if call.ended_at is not None and now - call.ended_at > window:
                continue
            for device in (call.caller, call.accepted_by):
                if device is not None and device.user_id == door_id:
                    return call, device
        return None

    def _audit(self, site_id: str, by: DeviceRef, call_id: str, door: DeviceRef | None, outcome: str,
               detail: str | None, now: float) -> asyncio.Future[int]:
        """One entry of the site's door log; its failure is logged and counted (and an opening
        waits for it, see `carry_out`)."""
        log.info("open_door by %s/%s for %s: %s%s", by.user_id, by.device_id, call_id or "no call", outcome,
                 f" ({detail})" if detail else "")
        written = self.store.audit_log.audit(site_id=site_id, at=now, action="open_door", outcome=outcome, by=by,
                                       call_id=call_id, door_id=door.user_id if door else None, detail=detail)
        self.background.store("write the door log", written)
        return written

    def _settle(self, by: DeviceRef, entry: int, call_id: str, outcome: str, detail: str | None) -> None:
        log.info("open_door by %s/%s for %s: %s%s", by.user_id, by.device_id, call_id, outcome,
                 f" ({detail})" if detail else "")
        self.background.store("write the door's answer to the door log", self.store.audit_log.settle_audit(entry, outcome, detail))

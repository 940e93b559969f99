"""Presence and call routing: the thin I/O layer around `ServerCall`.

The hub knows which devices are connected and which calls are live; each protocol request is
turned into a call-machine event, and the `Send`s it returns are queued on the target
connections. Each connection has its own outgoing queue and writer task, so one slow phone
never delays the ring on another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from intercom.core import messages as m
from intercom.core.calls import CallError, DeviceRef, Send, ServerCall
from intercom.core.messages import ErrorCode, ProtocolError, Request

from .ice import IceSettings
from .limits import FailureWindow, LimitSettings, TokenBucket
from .store import Store

log = logging.getLogger("intercom.server")

_ERROR_CODES = frozenset(str(c) for c in ErrorCode)
RECENT_CALLS_S = 120.0
RECENT_CALLS_MAX = 10_000


@dataclass
class HubSettings:
    ring_timeout_s: float = 30.0
    max_duration_s: float = 3600.0
    grace_s: float = 10.0
    auth_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    #: A resident may still open the door this long after the call ended (walking to the gate).
    open_door_window_s: float = 30.0
    #: How long the server waits for the door to answer its `action` request.
    door_reply_timeout_s: float = 5.0
    ice: IceSettings = field(default_factory=IceSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


class ConnectionGone(Exception):
    """The device closed before it answered a request of the server."""


class Connection:
    """One WebSocket: its identity once authenticated, its ordered and bounded outgoing
    queue, its message budget, and the server's requests to it that await an answer.

    Thousands of these sit idle on one server, so an idle one holds no queue and no task:
    the outbox and its writer exist only while there is something to send (an asyncio.Queue
    and a parked writer task cost about 4.5 KiB a connection; see bench/results.md)."""

    __slots__ = ("_send_text", "_close", "peer", "user", "device", "bucket", "pending", "_max_queue", "closed",
                 "_closer", "outbox", "_writer", "__weakref__")

    def __init__(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str,
                 limits: LimitSettings) -> None:
        self._send_text = send_text
        self._close = close
        self.peer = peer
        self.user: dict[str, Any] | None = None
        self.device: DeviceRef | None = None
        self.bucket = TokenBucket(limits.messages_per_s, limits.message_burst, time.monotonic())
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._max_queue = limits.send_queue
        self.closed = False
        self._closer: asyncio.Task[None] | None = None
        #: Frames encoded and waiting for the socket, oldest first; None while there are none.
        self.outbox: deque[str] | None = None
        self._writer: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any]) -> None:
        if self.closed or self._closer is not None:
            return
        if self.outbox is None:
            self.outbox = deque()
        if len(self.outbox) >= self._max_queue:
            # A client that does not read would make the server hold its messages forever.
            log.warning("%s does not read its messages; closing it", self.peer)
            if self._writer is not None:
                self._writer.cancel()
            self._closer = asyncio.get_running_loop().create_task(self.close(1008, "too many unread messages"))
            return
        self.outbox.append(m.encode(message))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self.outbox:
                await self._send_text(self.outbox[0])
                self.outbox.popleft()
            self.outbox = None
        except (ConnectionError, RuntimeError):
            return
        finally:
            if asyncio.current_task() is self._writer:
                self._writer = None

    async def close(self, code: int, reason: str) -> None:
        """Flush what is queued (for a few seconds at most), then close the socket."""
        if not self.closed:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionGone())
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer}, timeout=5.0)
            writer.cancel()
        await self._close(code, reason)


def _decode_snapshot(req: Request) -> bytes:
    try:
        return base64.b64decode(req.body["snapshot"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{req.type}.snapshot' is not valid base64", req.id) from None


def _id_of(text: str) -> str | None:
    """The request id of a frame that will not be parsed further, if it is easy to find."""
    try:
        data = m.decode(text)
    except ProtocolError:
        return None
    rid = data.get("id")
    return rid if isinstance(rid, str) else None


class Hub:
    def __init__(self, store: Store, settings: HubSettings) -> None:
        self.store = store
        self.settings = settings
        self.devices: dict[DeviceRef, Connection] = {}
        self.calls: dict[str, ServerCall] = {}
        #: Calls that ended lately, so a request crossing the end learns why (`conflict`)
        #: instead of `not_found`, and a resident may still open the door. Oldest first.
        self.recent: dict[str, ServerCall] = {}
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._grace: dict[DeviceRef, asyncio.TimerHandle] = {}
        limits = settings.limits
        self._auth_by_user = FailureWindow(limits.auth_failures_per_user, limits.auth_window_s)
        self._auth_by_address = FailureWindow(limits.auth_failures_per_address, limits.auth_window_s)
        self._actions: set[asyncio.Task[None]] = set()

    def connection(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str) -> Connection:
        return Connection(send_text, close, peer, self.settings.limits)

    # -- connection life -------------------------------------------------------------------

    async def handle_text(self, conn: Connection, text: str) -> bool:
        """Handle one frame; returns False when the connection must close (deauthenticate)."""
        if not conn.bucket.take(time.monotonic()):
            conn.send(m.error(_id_of(text), ErrorCode.RATE_LIMITED,
                              f"more than {self.settings.limits.messages_per_s:g} messages a second; "
                              f"retry in {conn.bucket.retry_after():.2f} s"))
            return True
        try:
            parsed = m.parse_request(text)
        except ProtocolError as exc:
            conn.send(exc.reply())
            return True
        if not isinstance(parsed, Request):
            self._reply_arrived(conn, parsed)
            return True
        req = parsed
        try:
            if conn.user is None:
                if req.type != "authenticate":
                    raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first", req.id)
                self._authenticate(conn, req)
                return True
            handler = getattr(self, f"_on_{req.type}")
            return handler(conn, req) is not False
        except ProtocolError as exc:
            exc.re = req.id
            conn.send(exc.reply())
        except CallError as exc:
            conn.send(m.error(req.id, exc.code, exc.message))
        except Exception:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("internal error handling %s", req.type)
            conn.send(m.error(req.id, ErrorCode.INTERNAL, "internal error"))
        return True

    @staticmethod
    def _reply_arrived(conn: Connection, reply: dict[str, Any]) -> None:
        """A client's answer to one of the server's requests; unknown or late ones are dropped."""
        fut = conn.pending.get(reply["re"])
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def disconnected(self, conn: Connection) -> None:
        device = conn.device
        if device is None or self.devices.get(device) is not conn:
            return
        del self.devices[device]
        live = [c for c in self.calls.values() if c.involves(device)]
        if not live:
            return
        log.info("%s/%s disconnected during a call; waiting %.0fs for it to return",
                 device.user_id, device.device_id, self.settings.grace_s)
        loop = asyncio.get_running_loop()
        self._grace[device] = loop.call_later(self.settings.grace_s, self._grace_over, device)

    def _grace_over(self, device: DeviceRef) -> None:
        self._grace.pop(device, None)
        now = time.time()
        for call in list(self.calls.values()):
            if call.involves(device):
                self._deliver(call, call.lose(device, now))

    # -- requests --------------------------------------------------------------------------

    def _authenticate(self, conn: Connection, req: Request) -> None:
        user_id = req.body["user_id"]
        clock = time.monotonic()
        wait = max(self._auth_by_user.blocked_for(user_id, clock), self._auth_by_address.blocked_for(conn.peer, clock))
        if wait > 0:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"too many failed sign-ins; try again in {math.ceil(wait)} s", req.id)
        user = self.store.find_user(user_id)
        # The token is checked even for an unknown user, so both fail alike.
        if not self.store.verify_token(user_id, req.body["access_token"]) or user is None:
            self._auth_by_user.fail(user_id, clock)
            self._auth_by_address.fail(conn.peer, clock)
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown user or bad access token", req.id)
        device = DeviceRef(user_id, req.body.get("device_id") or "dev_" + secrets.token_hex(6))
        previous = self.devices.get(device)
        others = sum(1 for d in self.devices if d.user_id == user_id and d != device)
        if others >= self.settings.limits.connections_per_user:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"this user already has {others} devices signed in, the most allowed", req.id)
        if previous is not None and previous is not conn:
            previous.device = None
            asyncio.get_running_loop().create_task(previous.close(4409, "signed in again elsewhere"))
        conn.user = user
        conn.device = device
        self.devices[device] = conn
        returned = self._grace.pop(device, None)
        if returned is not None:
            returned.cancel()
        now = time.time()
        conn.send(m.ok(req.id, user=user, device_id=device.device_id,
                       ice_servers=self.settings.ice.for_user(user_id, now), heartbeat_s=self.settings.heartbeat_s))
        for call in list(self.calls.values()):
            if returned is not None and device in call.ringing:
                conn.send(call.incoming_event())  # it missed nothing else: replay the ring
            else:
                self._deliver(call, call.reach(device, now))

    def _on_authenticate(self, conn: Connection, req: Request) -> None:
        raise ProtocolError(ErrorCode.CONFLICT, "this connection is already authenticated", req.id)

    def _on_ping(self, conn: Connection, req: Request) -> None:
        conn.send(m.ok(req.id))
        conn.send(m.event("pong"))

    def _on_deauthenticate(self, conn: Connection, req: Request) -> bool:
        conn.send(m.ok(req.id))
        return False

    def _new_call(self, conn: Connection, req: Request, created_at: float, ring_timeout_s: float) -> tuple[ServerCall, bytes | None]:
        """Check the callees and the snapshot of a `dial` or `missed`, and make the call."""
        assert conn.user is not None and conn.device is not None
        body = req.body
        callees = list(dict.fromkeys(body["callees"]))
        found = self.store.users_of(callees)
        for callee in callees:
            user = found.get(callee)
            if user is None or not self._may_call(conn.user, user):
                raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not call '{callee}'", req.id)
        snapshot = _decode_snapshot(req) if "snapshot" in body else None
        call_id = "call_" + secrets.token_hex(8)
        call = ServerCall(
            call_id=call_id, caller=conn.device,
            caller_info={k: conn.user[k] for k in ("user_id", "display_name", "kind")},
            callees=tuple(callees), video=body.get("video", True), offer=body.get("offer", {}), created_at=created_at,
            ring_timeout_s=ring_timeout_s, snapshot_url=f"/v1/direct_calls/{call_id}/snapshot" if snapshot else None)
        return call, snapshot

    def _on_dial(self, conn: Connection, req: Request) -> None:
        now = time.time()
        call, snapshot = self._new_call(conn, req, now,
                                        float(req.body.get("ring_timeout_s", self.settings.ring_timeout_s)))
        call_id = call.call_id
        self.store.record_call(call, snapshot)
        self.calls[call_id] = call
        conn.send(m.ok(req.id, call_id=call_id))
        devices = sorted(d for d in self.devices if d.user_id in call.callees)
        loop = asyncio.get_running_loop()
        self._timers[call_id] = [
            loop.call_later(call.ring_timeout_s, lambda: self._deliver(call, call.expire(time.time()))),
            loop.call_later(self.settings.max_duration_s, lambda: self._deliver(call, call.time_out(time.time()))),
        ]
        log.info("%s dials %s: %s, %d device(s) ringing", conn.device.user_id, ",".join(call.callees), call_id,
                 len(devices))
        self._deliver(call, call.ring(devices, now))

    def _on_missed(self, conn: Connection, req: Request) -> None:
        """A door reports a press it made while it could not reach the server."""
        assert conn.user is not None
        if conn.user["kind"] != "door":
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a door station reports missed presses", req.id)
        pressed_at = datetime.fromisoformat(req.body["pressed_at"]).timestamp()
        call, snapshot = self._new_call(conn, req, pressed_at, 0.0)
        self.store.record_call(call, snapshot)
        devices = sorted(d for d in self.devices if d.user_id in call.callees)
        sends = call.missed(devices, time.time())
        self.store.finish_call(call)
        self._remember(call)
        conn.send(m.ok(req.id, call_id=call.call_id))
        log.info("%s reports a press at %s while offline: %s", conn.user["user_id"], req.body["pressed_at"], call.call_id)
        self._deliver(call, sends)

    @staticmethod
    def _may_call(caller: dict[str, Any], callee: dict[str, Any]) -> bool:
        """A door calls residents of its site; a resident calls doors of its site."""
        return caller["site_id"] == callee["site_id"] and caller["kind"] != callee["kind"]

    def _call_for(self, conn: Connection, req: Request) -> ServerCall:
        call = self.calls.get(req.body["call_id"]) or self.recent.get(req.body["call_id"])
        if call is None or conn.device is None or not call.involves(conn.device):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no live call '{req.body['call_id']}'", req.id)
        return call

    def _on_snapshot(self, conn: Connection, req: Request) -> None:
        call = self._call_for(conn, req)
        picture = _decode_snapshot(req)
        sends = call.add_snapshot(conn.device, f"/v1/direct_calls/{call.call_id}/snapshot", time.time())  # type: ignore[arg-type]
        self.store.set_snapshot(call.call_id, picture)
        conn.send(m.ok(req.id))
        self._deliver(call, sends)

    def _on_accept(self, conn: Connection, req: Request) -> None:
        call = self._call_for(conn, req)
        sends = call.accept(conn.device, req.body["answer"], time.time())  # type: ignore[arg-type]
        conn.send(m.ok(req.id))
        self._deliver(call, sends)

    def _on_decline(self, conn: Connection, req: Request) -> None:
        call = self._call_for(conn, req)
        sends = call.decline(conn.device, time.time())  # type: ignore[arg-type]
        conn.send(m.ok(req.id))
        self._deliver(call, sends)

    def _on_end(self, conn: Connection, req: Request) -> None:
        call = self._call_for(conn, req)
        sends = call.end(conn.device, time.time())  # type: ignore[arg-type]
        conn.send(m.ok(req.id))
        self._deliver(call, sends)

    def _on_action(self, conn: Connection, req: Request) -> None:
        """`open_door`: checked here, carried out by the door, and audited either way."""
        assert conn.user is not None and conn.device is not None
        name, call_id = req.body["name"], req.body["call_id"]
        if name != "open_door":
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown action '{name}'; the actions are: open_door", req.id)
        now = time.time()
        call = self.calls.get(call_id) or self.recent.get(call_id)
        try:
            door = self._door_of(conn, call, now)
        except ProtocolError as exc:
            self._audit(conn, call_id, None, "refused", exc.message, now)
            raise
        door_conn = self.devices.get(door)
        if door_conn is None:
            self._audit(conn, call_id, door, "failed", "the door station is not connected", now)
            raise ProtocolError(ErrorCode.CONFLICT, "the door station is not connected", req.id)
        task = asyncio.get_running_loop().create_task(self._open_door(conn, req, door_conn))
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    def _door_of(self, conn: Connection, call: ServerCall | None, now: float) -> DeviceRef:
        """The door device of a call this resident's device answered or placed, or `forbidden`."""
        assert conn.user is not None and conn.device is not None
        if conn.user["kind"] != "resident":
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
        door_user = self.store.find_user(door.user_id)
        if door_user is None or door_user["kind"] != "door" or door_user["site_id"] != conn.user["site_id"]:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the other party is not a door of your site")
        window = self.settings.open_door_window_s
        if call.ended_at is not None and now - call.ended_at > window:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"the call ended more than {window:g} s ago")
        return door

    async def _open_door(self, conn: Connection, req: Request, door_conn: Connection) -> None:
        assert conn.user is not None and conn.device is not None and door_conn.device is not None
        call_id = req.body["call_id"]
        rid = "srv_" + secrets.token_hex(6)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        door_conn.pending[rid] = fut
        door_conn.send(m.request("action", rid, call_id=call_id, name="open_door",
                                 by={**conn.device.as_json(), "display_name": conn.user["display_name"]}))
        timeout = self.settings.door_reply_timeout_s
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except (TimeoutError, ConnectionGone) as exc:
            why = ("the door station did not answer in time" if isinstance(exc, TimeoutError)
                   else "the door station disconnected before it answered")
            self._audit(conn, call_id, door_conn.device, "failed", why, time.time())
            conn.send(m.error(req.id, ErrorCode.INTERNAL, why))
            return
        finally:
            door_conn.pending.pop(rid, None)
        if reply["type"] == "ok":
            self._audit(conn, call_id, door_conn.device, "opened", None, time.time())
            conn.send(m.ok(req.id))
            return
        code = reply.get("code")
        code = code if isinstance(code, str) and code in _ERROR_CODES else ErrorCode.INTERNAL
        message = str(reply.get("message") or "no reason given")[:200]
        self._audit(conn, call_id, door_conn.device, "refused", f"the door: {message}", time.time())
        conn.send(m.error(req.id, code, f"the door refused: {message}"))

    def _audit(self, conn: Connection, call_id: str, door: DeviceRef | None, outcome: str, detail: str | None,
               now: float) -> None:
        assert conn.user is not None and conn.device is not None
        self.store.audit(site_id=conn.user["site_id"], at=now, action="open_door", outcome=outcome,
                         by=conn.device, call_id=call_id, door_id=door.user_id if door else None, detail=detail)
        log.info("open_door by %s/%s for %s: %s%s", conn.device.user_id, conn.device.device_id, call_id, outcome,
                 f" ({detail})" if detail else "")

    # -- delivery --------------------------------------------------------------------------

    def _deliver(self, call: ServerCall, sends: list[Send]) -> None:
        for send in sends:
            target = self.devices.get(send.to)
            if target is not None:
                target.send(send.message)
        if call.ended and call.call_id in self.calls:
            del self.calls[call.call_id]
            self._remember(call)
            for timer in self._timers.pop(call.call_id, []):
                timer.cancel()
            self.store.finish_call(call)
            log.info("%s ended: %s", call.call_id, call.end_reason)

    def _remember(self, call: ServerCall) -> None:
        self.recent[call.call_id] = call
        horizon = (call.ended_at or 0) - RECENT_CALLS_S
        while self.recent:
            oldest = next(iter(self.recent.values()))
            if (oldest.ended_at or 0) >= horizon and len(self.recent) <= RECENT_CALLS_MAX:
                break
            del self.recent[oldest.call_id]

    async def shutdown(self) -> None:
        """Live calls cannot survive a restart: end them so their records are complete."""
        for task in list(self._actions):
            task.cancel()
        now = time.time()
        for call in list(self.calls.values()):
            self._deliver(call, call.abort(m.EndReason.UNKNOWN, now))
        for conn in list(self.devices.values()):
            await conn.close(1001, "server shutting down")

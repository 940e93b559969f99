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
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from intercom.core import messages as m
from intercom.core.calls import CallError, DeviceRef, Send, ServerCall
from intercom.core.messages import ErrorCode, ProtocolError, Request

from .store import Store

log = logging.getLogger("intercom.server")

RECENT_CALLS_S = 120.0
RECENT_CALLS_MAX = 10_000


@dataclass
class HubSettings:
    ring_timeout_s: float = 30.0
    max_duration_s: float = 3600.0
    grace_s: float = 10.0
    auth_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    ice_servers: list[dict[str, Any]] = field(default_factory=list)


class Connection:
    """One WebSocket: its identity once authenticated, and its ordered outgoing queue."""

    def __init__(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str) -> None:
        self._send_text = send_text
        self._close = close
        self.peer = peer
        self.user: dict[str, Any] | None = None
        self.device: DeviceRef | None = None
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(m.encode(message))

    async def _write(self) -> None:
        while (text := await self.queue.get()) is not None:
            try:
                await self._send_text(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int, reason: str) -> None:
        self.queue.put_nowait(None)
        await self.writer
        await self._close(code, reason)


class Hub:
    def __init__(self, store: Store, settings: HubSettings) -> None:
        self.store = store
        self.settings = settings
        self.devices: dict[DeviceRef, Connection] = {}
        self.calls: dict[str, ServerCall] = {}
        #: Calls that ended lately, so a request crossing the end learns why (`conflict`)
        #: instead of `not_found`. Oldest first; trimmed as calls end.
        self.recent: dict[str, ServerCall] = {}
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._grace: dict[DeviceRef, asyncio.TimerHandle] = {}

    # -- connection life -------------------------------------------------------------------

    async def handle_text(self, conn: Connection, text: str) -> bool:
        """Handle one frame; returns False when the connection must close (deauthenticate)."""
        try:
            parsed = m.parse_request(text)
        except ProtocolError as exc:
            conn.send(exc.reply())
            return True
        if not isinstance(parsed, Request):
            return True  # a reply to a server request; none are outstanding in this version
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
        user = self.store.find_user(user_id)
        # The token is checked even for an unknown user, so both fail alike.
        if not self.store.verify_token(user_id, req.body["access_token"]) or user is None:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown user or bad access token", req.id)
        device = DeviceRef(user_id, req.body.get("device_id") or "dev_" + secrets.token_hex(6))
        previous = self.devices.get(device)
        if previous is not None and previous is not conn:
            previous.device = None
            asyncio.get_running_loop().create_task(previous.close(4409, "signed in again elsewhere"))
        conn.user = user
        conn.device = device
        self.devices[device] = conn
        returned = self._grace.pop(device, None)
        if returned is not None:
            returned.cancel()
        conn.send(m.ok(req.id, user=user, device_id=device.device_id, ice_servers=self.settings.ice_servers,
                       heartbeat_s=self.settings.heartbeat_s))
        now = time.time()
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

    def _on_dial(self, conn: Connection, req: Request) -> None:
        assert conn.user is not None and conn.device is not None
        body = req.body
        callees = list(dict.fromkeys(body["callees"]))
        found = self.store.users_of(callees)
        for callee in callees:
            user = found.get(callee)
            if user is None or not self._may_call(conn.user, user):
                raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not call '{callee}'", req.id)
        snapshot = None
        if "snapshot" in body:
            try:
                snapshot = base64.b64decode(body["snapshot"], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(ErrorCode.BAD_REQUEST, "'dial.snapshot' is not valid base64", req.id) from None
        now = time.time()
        call_id = "call_" + secrets.token_hex(8)
        call = ServerCall(
            call_id=call_id, caller=conn.device,
            caller_info={k: conn.user[k] for k in ("user_id", "display_name", "kind")},
            callees=tuple(callees), video=body.get("video", True), offer=body["offer"], created_at=now,
            ring_timeout_s=float(body.get("ring_timeout_s", self.settings.ring_timeout_s)),
            snapshot_url=f"/v1/direct_calls/{call_id}/snapshot" if snapshot else None)
        self.store.record_call(call, snapshot)
        self.calls[call_id] = call
        conn.send(m.ok(req.id, call_id=call_id))
        devices = sorted(d for d in self.devices if d.user_id in callees)
        loop = asyncio.get_running_loop()
        self._timers[call_id] = [
            loop.call_later(call.ring_timeout_s, lambda: self._deliver(call, call.expire(time.time()))),
            loop.call_later(self.settings.max_duration_s, lambda: self._deliver(call, call.time_out(time.time()))),
        ]
        log.info("%s dials %s: %s, %d device(s) ringing", conn.device.user_id, ",".join(callees), call_id, len(devices))
        self._deliver(call, call.ring(devices, now))

    @staticmethod
    def _may_call(caller: dict[str, Any], callee: dict[str, Any]) -> bool:
        """A door calls residents of its site; a resident calls doors of its site."""
        return caller["site_id"] == callee["site_id"] and caller["kind"] != callee["kind"]

    def _call_for(self, conn: Connection, req: Request) -> ServerCall:
        call = self.calls.get(req.body["call_id"]) or self.recent.get(req.body["call_id"])
        if call is None or conn.device is None or not call.involves(conn.device):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no live call '{req.body['call_id']}'", req.id)
        return call

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
        raise ProtocolError(ErrorCode.FORBIDDEN, "door actions are not enabled on this server yet", req.id)

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
        now = time.time()
        for call in list(self.calls.values()):
            self._deliver(call, call.abort(m.EndReason.UNKNOWN, now))
        for conn in list(self.devices.values()):
            await conn.close(1001, "server shutting down")

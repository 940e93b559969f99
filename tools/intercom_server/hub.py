"""The server's calls, composed: the call service (`service.py`) on a state backend chosen by
`compose.py`, the requests it answers (`call_requests.py`, `signin.py`, `door_action.py`),
and the endpoints connected here. The hub reads each frame an endpoint sends, hands it to
its handler, and turns what goes wrong into the protocol's `error` replies.

Each endpoint has its own outgoing queue and writer, so one slow phone never delays the ring
on another.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from intercom_protocol import messages as m
from intercom_protocol.calls import CallError, DeviceRef
from intercom_protocol.messages import ErrorCode, ProtocolError, Request

from .availability import RuleBook
from .background import Background
from .call_requests import CallRequests
from .connection import Connection
from .directory import Directory
from .door_action import DoorAction
from .door_presence import DoorPresence
from .endpoints import LocalEndpoints
from .events import EventBus
from .push import Pusher
from .service import CallService
from .settings import HubSettings
from .signin import SignIn
from .state import Endpoint, State
from .store import Store

log = logging.getLogger("intercom.server")

Handler = Callable[[Endpoint, Request[Any]], Any]


def _id_of(text: str) -> str | None:
    """The request id of a frame that will not be parsed further, if it is easy to find."""
    try:
        data = m.decode(text)
    except ProtocolError:
        return None
    rid = data.get("id")
    return rid if isinstance(rid, str) else None


class LocalSide:
    """What the state backend asks of this process: its endpoints, its call service, and its
    integrations that hear the whole cluster's events."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def deliver_local(self, device: DeviceRef, message: dict[str, Any]) -> None:
        self._hub.endpoints.deliver_local(device, message)

    def kick_local(self, device: DeviceRef, code: int, reason: str) -> None:
        self._hub.endpoints.kick_local(device, code, reason)

    async def ask_local(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        return await self._hub.endpoints.ask_local(device, kind, timeout_s, body)

    def local_devices(self) -> list[DeviceRef]:
        return self._hub.endpoints.local_devices()

    def is_local(self, device: DeviceRef) -> bool:
        return device in self._hub.endpoints

    async def timer_due(self, key: str) -> None:
        await self._hub.service.timer_due(key)

    async def device_gone(self, device: DeviceRef) -> None:
        await self._hub.service.device_gone(device)

    def broadcast_received(self, event: dict[str, Any]) -> None:
        self._hub.events.received(event)


class Hub:
    def __init__(self, store: Store, settings: HubSettings, state: State) -> None:
        self.store, self.settings, self.state = store, settings, state
        self.background = Background()
        self.endpoints = LocalEndpoints(self.background.spawn)
        self.directory = Directory(store)
        self.push = Pusher(store, settings.push)
        #: Told what happens at the doors: the MQTT bridge and the webhooks listen.
        self.events = EventBus(self.directory.find, state.backplane.broadcast)
        self.service = CallService(settings, state, self.endpoints, self.background, store, self.push, self.events)
        self.door_presence = DoorPresence(settings.door_offline_after_s, self.service.door_gone,
                                          lambda type, door_id, at: self.events.door(type, door_id, at),
                                          self.background.spawn)
        #: Do-not-disturb, quiet hours and away, in memory: a press reads no disk.
        self.rules = RuleBook(store, settings.time_zone)
        self.calls = CallRequests(self.service, self.directory, self.rules, self.background)
        self.signin = SignIn(self.service, self.directory, self.door_presence, self.background)
        self.door_action = DoorAction(self.service, self.background)
        #: Set once the process stops taking connections (SIGTERM in a cluster).
        self.draining = False
        self._handlers: dict[str, Handler] = {
            "authenticate": self._authenticated_already, "dial": self.calls.dial, "missed": self.calls.missed,
            "snapshot": self.calls.snapshot, "accept": self.calls.accept, "decline": self.calls.decline,
            "end": self.calls.end, "action": self.door_action.request, "status": self._status, "ping": self._ping,
            "deauthenticate": self._deauthenticate}

    async def start(self) -> None:
        """Join the state backend; read what a press must not wait for: who may be rung, who
        they are, and how to wake phones."""
        await self.state.start(LocalSide(self))
        await self.directory.load()
        await self.rules.reload()
        await self.push.reload()

    def connection(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str) -> Connection:
        return Connection(send_text, close, peer, self.settings.limits)

    async def handle_text(self, conn: Connection, text: str) -> bool:
        """Handle one WebSocket frame; returns False when the connection must close
        (deauthenticate). Its message budget and the replies to the server's own requests
        are the WebSocket's; the request itself goes to `handle`, as any endpoint's does."""
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
            conn.settle(parsed)
            return True
        return await self.handle(conn, parsed)

    async def handle(self, conn: Endpoint, req: Request[Any]) -> bool:
        """Handle one request of an endpoint; returns False when it must close."""
        try:
            if conn.user is None:
                if req.type != "authenticate":
                    raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first", req.id)
                await self.signin.authenticate(conn, req)
                return True
            result = self._handlers[req.type](conn, req)
            if inspect.isawaitable(result):
                result = await result
            return result is not False
        except ProtocolError as exc:
            exc.re = req.id
            conn.send(exc.reply())
        except CallError as exc:
            conn.send(m.error(req.id, exc.code, exc.message))
        except Exception:  # one bad request must not take the server down
            log.exception("internal error handling %s", req.type)
            conn.send(m.error(req.id, ErrorCode.INTERNAL, "internal error"))
        return True

    async def disconnected(self, conn: Endpoint) -> None:
        await self.signin.disconnected(conn)

    def _authenticated_already(self, conn: Endpoint, req: Request[m.Authenticate]) -> None:
        raise ProtocolError(ErrorCode.CONFLICT, "this connection is already authenticated", req.id)

    def _status(self, conn: Endpoint, req: Request[m.Status]) -> None:
        conn.bridge = dict(req.body.bridge)
        conn.send(m.ok(req.id))

    def _ping(self, conn: Endpoint, req: Request[m.Ping]) -> None:
        conn.send(m.ok(req.id))
        conn.send(m.event("pong"))

    def _deauthenticate(self, conn: Endpoint, req: Request[m.Deauthenticate]) -> bool:
        conn.send(m.ok(req.id))
        return False

    async def shutdown(self) -> None:
        """What the state backend says a stopping process does (`state.Stopping`): alone, the
        live calls end, so their records are complete; in a cluster they live on, and each
        device signs in again through the load balancer to another process, within its grace,
        and claims its calls there."""
        self.draining = True
        self.background.cancel()
        await self.service.stop()
        stopping = self.state.stopping
        for conn in self.endpoints.all():
            await conn.close(stopping.close_code, stopping.close_reason)
        await self.push.close()

    async def close(self) -> None:
        """After the connections' handlers have finished: leave the state backend."""
        self.door_presence.close()
        await self.state.close()

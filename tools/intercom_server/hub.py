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
import inspect
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from intercom_protocol import messages as m
from intercom_protocol.calls import CallError, DeviceRef, Send, ServerCall
from intercom_protocol.messages import EndReason, ErrorCode, ProtocolError, Request

from .availability import RuleBook
from .cluster import Cluster, ClusterSettings, device_key, device_of
from .connection import Connection, ConnectionGone
from .database import DatabaseError
from .door_action import DoorAction
from .door_presence import DoorPresence
from .events import EventBus, EventType, party
from .ice import IceSettings
from .limits import FailureWindow, LimitSettings
from .mqtt import MqttSettings
from .push import Pusher, PushSettings
from .store import Store
from .visitor_messages import MessageSettings
from .webhooks import WebhookSettings

log = logging.getLogger("intercom.server")

RECENT_CALLS_S = 120.0
RECENT_CALLS_MAX = 10_000


@dataclass
class HubSettings:
    ring_timeout_s: float = 30.0
    max_duration_s: float = 3600.0
    #: How long a device may be gone before its ringing or dialing call gives up on it.
    grace_s: float = 10.0
    #: The same for a call that was answered: its media may well be flowing while the
    #: signaling link is down, and the device claims the call back when it returns.
    media_grace_s: float = 60.0
    auth_timeout_s: float = 10.0
    heartbeat_s: float = 10.0
    #: How long a door must stay disconnected before Home Assistant and webhooks hear it is
    #: offline; a door back sooner is not reported at all (`door_presence.py`).
    door_offline_after_s: float = 10.0
    #: A resident may still open the door this long after the call ended (walking to the gate).
    open_door_window_s: float = 30.0
    #: How long the server waits for the door to answer its `action` request.
    door_reply_timeout_s: float = 5.0
    ice: IceSettings = field(default_factory=IceSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    push: PushSettings = field(default_factory=PushSettings)
    #: Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client;
    #: without them, one bad client behind the proxy would throttle everyone.
    trusted_proxies: tuple[str, ...] = ()
    #: Web origins besides the server's own (and public_url's) whose pages may open the WebSocket.
    allowed_origins: tuple[str, ...] = ()
    #: The broker Home Assistant listens on; None: no MQTT.
    mqtt: MqttSettings | None = None
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    messages: MessageSettings = field(default_factory=MessageSettings)
    #: The time zone of a site's quiet hours until the site sets its own.
    time_zone: str = "UTC"
    #: How often the server asks its database whether it answers (see /healthz).
    health_check_s: float = 2.0
    #: The clock do-not-disturb and quiet hours are judged by (tests give their own).
    clock: Callable[[], float] = time.time


def _decode_snapshot(req: Request[m.Dial] | Request[m.Missed] | Request[m.Snapshot]) -> bytes:
    """The picture the request carries (the caller checked it has one)."""
    assert req.body.snapshot is not None
    try:
        return base64.b64decode(req.body.snapshot, validate=True)
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


#: A change of a call: applied to the call, it returns what to send.
Event = Callable[[ServerCall], list[Send]]


class Throttle:
    """Failed sign-ins per key (an address, a user id) within a window: in this process, or in
    Redis for the whole cluster."""

    def __init__(self, limit: int, window_s: float, cluster: Cluster | None, kind: str) -> None:
        self.limit, self.window_s, self.kind = limit, window_s, kind
        self._local = FailureWindow(limit, window_s)
        self._cluster = cluster

    async def blocked_for(self, key: str) -> float:
        if self._cluster is None:
            return self._local.blocked_for(key, time.monotonic())
        now = time.time()
        name = f"{self.kind}:{key}"
        if await self._cluster.failures(name, self.window_s, now) < self.limit:
            return 0.0
        oldest = await self._cluster.oldest_failure(name)
        return max(0.0, (oldest or now) + self.window_s - now)

    async def fail(self, key: str) -> None:
        if self._cluster is None:
            self._local.fail(key, time.monotonic())
        else:
            await self._cluster.fail(f"{self.kind}:{key}", self.window_s, time.time())


class Hub:
    """With `cluster`, the hub is one of several processes: presence, calls and timers are in
    Redis (see cluster.py); without, they are here, in memory. Either way each request is
    applied to its call by `_apply` and delivered by `_deliver`."""

    def __init__(self, store: Store, settings: HubSettings, cluster: ClusterSettings | None = None) -> None:
        self.store = store
        self.settings = settings
        #: The devices connected to this process.
        self.devices: dict[DeviceRef, Connection] = {}
        #: Live calls (one process only; a cluster keeps them in Redis).
        self.calls: dict[str, ServerCall] = {}
        #: Calls that ended lately, so a request crossing the end learns why (`conflict`)
        #: instead of `not_found`, and a resident may still open the door. Oldest first.
        self.recent: dict[str, ServerCall] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.cluster = Cluster(cluster, self) if cluster is not None else None
        limits = settings.limits
        self._auth_by_user = Throttle(limits.auth_failures_per_user, limits.auth_window_s, self.cluster, "user")
        self._auth_by_address = Throttle(limits.auth_failures_per_address, limits.auth_window_s, self.cluster, "addr")
        self._actions: set[asyncio.Task[Any]] = set()
        self._expiry: dict[Connection, asyncio.TimerHandle] = {}
        #: Set once the process stops taking connections (SIGTERM in a cluster).
        self.draining = False
        #: Writes that failed (the bell rang anyway); shown to the operator by /healthz.
        self.store_errors = 0
        self.last_store_error: str | None = None
        self.push = Pusher(store, settings.push)
        #: Told what happens at the doors: the MQTT bridge and the webhooks listen.
        self.events = EventBus(store.find_user)
        self.door_presence = DoorPresence(settings.door_offline_after_s, self._door_gone,
                                          lambda type, door_id, at: self.events.door(type, door_id, at), self._spawn)
        #: Do-not-disturb, quiet hours and away, in memory: a press reads no disk.
        self.rules = RuleBook(store, settings.time_zone)
        self.door_action = DoorAction(self)

    async def start(self) -> None:
        """Join the cluster, if any; read what a press must not wait for: who may be rung,
        and how to wake phones."""
        if self.cluster is not None:
            await self.cluster.start()
        await self.rules.reload()
        await self.push.reload()

    def connection(self, send_text: Callable[[str], Any], close: Callable[[int, str], Any], peer: str) -> Connection:
        return Connection(send_text, close, peer, self.settings.limits)

    # -- where things are: here, or in Redis ------------------------------------------------

    async def find_call(self, call_id: str) -> ServerCall | None:
        """A live call, or one that ended lately."""
        if self.cluster is not None:
            return await self.cluster.get_call(call_id)
        return self.calls.get(call_id) or self.recent.get(call_id)

    async def calls_of(self, user_ids: list[str], live_only: bool = True) -> list[ServerCall]:
        """The calls these users are parties of, oldest first."""
        if self.cluster is not None:
            calls = await self.cluster.calls_of(user_ids)
        else:
            users = set(user_ids)
            pool = [*self.recent.values(), *self.calls.values()] if not live_only else list(self.calls.values())
            calls = [c for c in pool if c.caller.user_id in users or users.intersection(c.callees)]
        return [c for c in calls if not c.ended] if live_only else calls

    async def live_count(self) -> int:
        return await self.cluster.live_count() if self.cluster is not None else len(self.calls)

    async def devices_of(self, user_ids: list[str] | tuple[str, ...]) -> list[DeviceRef]:
        """Every connected device of these users, on any process."""
        if self.cluster is not None:
            return await self.cluster.devices_of(user_ids)
        users = set(user_ids)
        return [d for d in self.devices if d.user_id in users]

    async def is_connected(self, device: DeviceRef) -> bool:
        if device in self.devices:
            return True
        return self.cluster is not None and await self.cluster.where(device) is not None

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, **body: Any) -> dict[str, Any]:
        """A request to a device (the door, asked to open), wherever it is connected: its
        reply, or TimeoutError, or ConnectionGone."""
        if device in self.devices or self.cluster is None:
            return await self.ask_local(device, kind, timeout_s, body)
        try:
            return await self.cluster.ask(device, kind, timeout_s, body)
        except LookupError:
            raise ConnectionGone() from None

    async def _schedule(self, key: str, at: float) -> None:
        """A timer by name: `ring:`/`max:` + call id, `grace:`/`media:` + device."""
        if self.cluster is not None:
            await self.cluster.schedule(key, at)
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(max(0.0, at - time.time()), self._fire, key)

    async def _cancel(self, *keys: str) -> None:
        if self.cluster is not None:
            await self.cluster.cancel(*keys)
            return
        for key in keys:
            handle = self._timers.pop(key, None)
            if handle is not None:
                handle.cancel()

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._spawn(self.timer_due(key))

    async def timer_due(self, key: str) -> None:
        kind, _, rest = key.partition(":")
        now = time.time()
        if kind == "ring":
            await self._event(rest, lambda call: call.expire(now))
        elif kind == "max":
            await self._event(rest, lambda call: call.time_out(now))
        elif kind in ("grace", "media"):
            await self._grace_over(device_of(rest), answered=kind == "media")

    async def _apply(self, call_id: str, event: Event) -> tuple[ServerCall, list[Send], bool] | None:
        """Apply one event to a call: (the call after, what to send, whether it ended the
        call), or None for no such call. `CallError` passes through, and changes nothing."""
        if self.cluster is not None:
            return await self.cluster.change(call_id, event, self.settings.max_duration_s + 60)
        call = self.calls.get(call_id) or self.recent.get(call_id)
        if call is None:
            return None
        was_live = not call.ended
        sends = event(call)
        return call, sends, was_live and call.ended

    async def _event(self, call_id: str, event: Event) -> ServerCall | None:
        """Apply and deliver, for events no request waits on (timers, losses)."""
        try:
            applied = await self._apply(call_id, event)
        except CallError as exc:
            log.info("%s: %s", call_id, exc.message)
            return None
        if applied is None:
            return None
        await self._deliver(*applied)
        return applied[0]

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
            conn.settle(parsed)
            return True
        req = parsed
        try:
            if conn.user is None:
                if req.type != "authenticate":
                    raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first", req.id)
                await self._authenticate(conn, req)
                return True
            handler = getattr(self, f"_on_{req.type}")
            result = handler(conn, req)
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

    async def disconnected(self, conn: Connection) -> None:
        expiry = self._expiry.pop(conn, None)
        if expiry is not None:
            expiry.cancel()
        device = conn.device
        if device is None or self.devices.get(device) is not conn:
            return
        del self.devices[device]
        try:
            if self.cluster is not None:
                await self.cluster.leave(device)
            await self._maybe_offline(conn, device)
            await self.device_gone(device)
        except Exception as exc:  # noqa: BLE001 - Redis away: /healthz says so; the device signs in again
            log.warning("%s/%s left while Redis was away: %s", device.user_id, device.device_id, exc)

    async def device_gone(self, device: DeviceRef) -> None:
        """A device's connection is gone (closed here, or its process died): its calls wait a
        while for it to come back, on any process, and claim them."""
        live = [c for c in await self.calls_of([device.user_id]) if c.involves(device)]
        if not live:
            return
        # An answered call may have healthy media while the signaling link is down: it waits
        # longer for its device to come back and claim it than a ring does.
        answered = any(c.accepted_by is not None and device in (c.caller, c.accepted_by) for c in live)
        grace = self.settings.media_grace_s if answered else self.settings.grace_s
        log.info("%s/%s disconnected during a call; waiting %.0fs for it to return",
                 device.user_id, device.device_id, grace)
        now, key = time.time(), device_key(device)
        await self._schedule(f"grace:{key}", now + self.settings.grace_s)
        if answered:
            await self._schedule(f"media:{key}", now + grace)

    async def _grace_over(self, device: DeviceRef, answered: bool) -> None:
        """The device did not come back: its rings stop, and (after the longer wait) its
        answered calls end `connection_lost`."""
        if await self.is_connected(device):
            return  # it came back meanwhile
        now = time.time()
        for call in await self.calls_of([device.user_id]):
            if call.involves(device) and (answered or call.accepted_by is None):
                await self._event(call.call_id, lambda c: c.lose(device, now))

    # -- requests --------------------------------------------------------------------------

    async def sign_in_blocked_for(self, address: str) -> float:
        """Seconds before `address` may try a code again (invites, pairings): wrong codes and
        wrong tokens from one address share one budget."""
        return await self._auth_by_address.blocked_for(address)

    async def sign_in_failed(self, address: str) -> None:
        await self._auth_by_address.fail(address)

    async def _authenticate(self, conn: Connection, req: Request[m.Authenticate]) -> None:
        """Sign a connection in, then resynchronise its device's calls.

        Throttling keys on the source address only and never refuses a valid token: failures
        for one user id from anywhere used to lock that user out, so anyone who could reach
        the server could keep a door offline by guessing wrong on purpose."""
        user_id = req.body.user_id
        user = await self.store.find_user(user_id)
        # The token is checked even for an unknown user, so both fail alike.
        token = await self.store.check_token(user_id, req.body.access_token)
        if token is None or user is None:
            wait = await self._auth_by_address.blocked_for(conn.peer)
            await self._auth_by_address.fail(conn.peer)
            if await self._auth_by_user.blocked_for(user_id) == 0:
                await self._auth_by_user.fail(user_id)
                if await self._auth_by_user.blocked_for(user_id) > 0:
                    log.warning("%d failed sign-ins as '%s' within %.0f s, the last from %s; its own devices "
                                "still sign in", self.settings.limits.auth_failures_per_user, user_id,
                                self.settings.limits.auth_window_s, conn.peer)
            if wait > 0:
                raise ProtocolError(ErrorCode.RATE_LIMITED,
                                    f"too many failed sign-ins from {conn.peer}; try again in {math.ceil(wait)} s",
                                    req.id)
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown user or bad access token", req.id)
        device = DeviceRef(user_id, req.body.device_id or "dev_" + secrets.token_hex(6))
        connected = await self.devices_of([user_id])
        others = sum(1 for d in connected if d != device)
        if others >= self.settings.limits.connections_per_user:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"this user already has {others} devices signed in, the most allowed", req.id)
        online = user["kind"] == "door" and not connected
        previous = self.devices.get(device)
        if previous is not None and previous is not conn:
            del self.devices[device]
            previous.device = None
            self._spawn(previous.close(m.CLOSE_REPLACED, "signed in again elsewhere"))
        key = device_key(device)
        await self._cancel(f"grace:{key}", f"media:{key}")
        now = time.time()
        claims = req.body.calls
        if claims is not None:
            await self._drop_unclaimed(device, set(claims), now)
        conn.user = user
        conn.device = device
        conn.token_id, expires_at = token
        if user["kind"] == "door":
            conn.quick_replies = tuple(dict(r) for r in req.body.quick_replies or ())
        conn.bridge = dict(req.body.bridge) if req.body.bridge else None
        self.devices[device] = conn
        if self.cluster is not None:
            elsewhere = await self.cluster.join(device)
            if elsewhere is not None:  # signed in again here: its old connection there goes
                self.cluster.kick(device, elsewhere, m.CLOSE_REPLACED, "signed in again elsewhere")
        if expires_at is not None:
            self._expiry[conn] = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - now), self._end_session, conn, "the access token expired")
        calls = await self.calls_of([user_id])
        live = [call.summary_for(device) for call in calls if call.holds(device)]
        conn.send(m.ok(req.id, user=user, device_id=device.device_id,
                       ice_servers=self.settings.ice.for_user(user_id, now), heartbeat_s=self.settings.heartbeat_s,
                       calls=live))
        for call in calls:
            if device in call.ringing:
                # It rang on a connection that is gone, or by Web Push: ring it here.
                conn.send(call.incoming_event(now))
            else:
                await self._event(call.call_id, lambda c: c.reach(device, now))
        if online:
            self.door_presence.online(user_id, now)

    async def _maybe_offline(self, conn: Connection, device: DeviceRef) -> None:
        """A door whose last connection went is offline (a door has one device, normally)."""
        if conn.user is not None and conn.user["kind"] == "door" and await self._door_gone(device.user_id):
            self.door_presence.offline(device.user_id)

    async def _door_gone(self, door_id: str) -> bool:
        return not await self.devices_of([door_id])

    async def _drop_unclaimed(self, device: DeviceRef, claims: set[str], now: float) -> None:
        """A device that signs in says which calls it still holds: one it placed or answered
        and no longer knows (a restarted process with the same device id) is over. Left alone,
        the resident stayed in a call with nobody, and the next visitor was declined as busy."""
        for call in await self.calls_of([device.user_id]):
            if call.call_id in claims or device not in (call.caller, call.accepted_by) or not call.holds(device):
                continue
            log.info("%s/%s signed in without call %s: ending it", device.user_id, device.device_id, call.call_id)
            await self._event(call.call_id, lambda c: c.lose(device, now))

    def _end_session(self, conn: Connection, why: str) -> None:
        """A revoked or expired token ends its sessions at once; its calls go as after a crash."""
        self._expiry.pop(conn, None)
        if conn.closed:
            return
        device, conn.device = conn.device, None
        if device is not None and self.devices.get(device) is conn:
            del self.devices[device]
            self._spawn(self._session_ended(conn, device))
        log.info("closing %s/%s: %s", device.user_id if device else "?", device.device_id if device else "?", why)
        self._spawn(conn.close(m.CLOSE_TOKEN_REVOKED, why))

    async def _session_ended(self, conn: Connection, device: DeviceRef) -> None:
        if self.cluster is not None:
            await self.cluster.leave(device)
        await self._maybe_offline(conn, device)
        now = time.time()
        for call in await self.calls_of([device.user_id]):
            if call.involves(device):
                await self._event(call.call_id, lambda c: c.lose(device, now))

    async def revoked(self, token_ids: set[str] | None = None) -> int:
        """End the sessions of these tokens, or of every token the store no longer accepts
        (revoked or expired from a shell, another process). Returns how many ended."""
        sessions = [c for c in self.devices.values() if c.token_id is not None]
        gone = token_ids if token_ids is not None else await self.store.invalid_tokens(
            c.token_id for c in sessions if c.token_id)
        if token_ids is None:
            await self.push.reload()
        else:
            self.push.forget_tokens(token_ids)
        ended = 0
        for conn in sessions:
            if conn.token_id in gone:
                self._end_session(conn, "the access token was revoked")
                ended += 1
        return ended

    def _on_authenticate(self, conn: Connection, req: Request[m.Authenticate]) -> None:
        raise ProtocolError(ErrorCode.CONFLICT, "this connection is already authenticated", req.id)

    def _on_status(self, conn: Connection, req: Request[m.Status]) -> None:
        conn.bridge = dict(req.body.bridge)
        conn.send(m.ok(req.id))

    def bridges(self) -> list[dict[str, str]]:
        """The bridges connected to this process and what they last said of themselves."""
        return [{"user_id": d.user_id, "device_id": d.device_id, **c.bridge}
                for d, c in self.devices.items() if c.bridge is not None]

    def _on_ping(self, conn: Connection, req: Request[m.Ping]) -> None:
        conn.send(m.ok(req.id))
        conn.send(m.event("pong"))

    def _on_deauthenticate(self, conn: Connection, req: Request[m.Deauthenticate]) -> bool:
        conn.send(m.ok(req.id))
        return False

    async def _new_call(self, conn: Connection, req: Request[m.Dial] | Request[m.Missed], created_at: float,
                        ring_timeout_s: float) -> tuple[ServerCall, bytes | None, list[str]]:
        """Check the callees and the snapshot of a `dial` or `missed`, and make the call.

        Callees that do not exist or may not be called are left out and named in the reply:
        a ring group that names one stale user still rings everyone else. Both kinds are
        named alike, so the reply does not tell whether a user exists on another site."""
        assert conn.user is not None and conn.device is not None
        body = req.body
        dialed = body if isinstance(body, m.Dial) else None  # else a press reported afterwards: no media
        wanted = list(dict.fromkeys(body.callees))
        found = await self.store.users_of(wanted)
        callees = [c for c in wanted if c in found and self._may_call(conn.user, found[c])]
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
            caller_info={k: conn.user[k] for k in ("user_id", "display_name", "kind")},
            callees=tuple(callees), video=dialed.video is not False if dialed else True,
            offer=dialed.offer if dialed else {}, created_at=created_at,
            ring_timeout_s=ring_timeout_s, snapshot_url=f"/v1/direct_calls/{call_id}/snapshot" if snapshot else None,
            unavailable=unavailable, quick_replies=conn.quick_replies if dialed else ())
        return call, snapshot, unknown

    async def _add(self, call: ServerCall) -> None:
        if self.cluster is not None:
            await self.cluster.add_call(call, RECENT_CALLS_S if call.ended else self.settings.max_duration_s + 60)
        elif call.ended:
            self._remember(call)
        else:
            self.calls[call.call_id] = call

    def _store(self, what: str, written: asyncio.Future[Any]) -> None:
        """A write that must not stop the call: the ring, the answer and the hang-up go on
        while it is committed, and a full disk or a read-only database is logged and counted."""
        def done(result: asyncio.Future[Any]) -> None:
            if not result.cancelled() and result.exception() is not None:
                self._store_failed(what, result.exception())
        written.add_done_callback(done)

    def _store_failed(self, what: str, exc: BaseException | None) -> None:
        self.store_errors += 1
        self.last_store_error = f"{what}: {exc}"
        log.error("could not %s: %s", what, exc)

    async def _on_dial(self, conn: Connection, req: Request[m.Dial]) -> None:
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
        devices = sorted(set(await self.devices_of(rung)) | {s.device for s in subs})
        sends = call.ring(devices, now)
        await self._add(call)
        conn.send(m.ok(req.id, call_id=call_id, **({"unknown": unknown} if unknown else {})))
        await self._schedule(f"ring:{call_id}", now + call.ring_timeout_s)
        await self._schedule(f"max:{call_id}", now + self.settings.max_duration_s)
        log.info("%s dials %s: %s, %d device(s) ringing%s%s", call.caller.user_id, ",".join(call.callees), call_id,
                 len(devices), f"; not callers' users: {', '.join(unknown)}" if unknown else "",
                 f"; not rung now (do-not-disturb, quiet hours, away): {', '.join(call.unavailable)}"
                 if call.unavailable else "")
        await self._deliver(call, sends, False)
        self.push.ring(call, subs, now)
        self._store("record the call", self.store.record_call(call, snapshot))
        if call.caller_info["kind"] == "door":
            self.events.call(EventType.RING, call, now, callees=list(call.callees), devices_ringing=len(devices))
        if snapshot is not None:
            self.events.call(EventType.PICTURE, call, now, picture=snapshot)
        if not rung:  # nobody may be rung: the door hears so at once (its next group, or nobody)
            await self._event(call_id, lambda c: c.abort(EndReason.UNAVAILABLE, time.time()))

    async def _on_missed(self, conn: Connection, req: Request[m.Missed]) -> None:
        """A door reports a press it made while it could not reach the server."""
        assert conn.user is not None
        if conn.user["kind"] != "door":
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a door station reports missed presses", req.id)
        pressed_at = datetime.fromisoformat(req.body.pressed_at).timestamp()
        call, snapshot, _ = await self._new_call(conn, req, pressed_at, 0.0)
        devices = sorted(await self.devices_of(call.rung_callees))
        sends = call.missed(devices, time.time())
        self._spawn(self._store_missed(conn, req, call, snapshot, sends))

    async def _store_missed(self, conn: Connection, req: Request[m.Missed], call: ServerCall, snapshot: bytes | None,
                            sends: list[Send]) -> None:
        """The door forgets a press once it has `ok`: the record is on disk before that, or
        the door keeps the press for its next connection."""
        try:
            await self.store.finish_call(call, snapshot)
        except (DatabaseError, OSError) as exc:
            self._store_failed("record a missed press", exc)
            conn.send(m.error(req.id, ErrorCode.INTERNAL, "the press could not be stored; report it again later"))
            return
        await self._add(call)
        conn.send(m.ok(req.id, call_id=call.call_id))
        assert conn.user is not None
        log.info("%s reports a press at %s while offline: %s", conn.user["user_id"], req.body.pressed_at, call.call_id)
        await self._deliver(call, sends, False)
        self.push.missed(call, time.time())
        if snapshot is not None:
            self.events.call(EventType.PICTURE, call, call.created_at, picture=snapshot)
        self.events.call(EventType.MISSED, call, call.created_at, offline=True, pressed_at=req.body.pressed_at)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    @staticmethod
    def _may_call(caller: dict[str, Any], callee: dict[str, Any]) -> bool:
        """A door calls residents of its site; a resident calls doors of its site."""
        return caller["site_id"] == callee["site_id"] and caller["kind"] != callee["kind"]

    async def _call_for(self, conn: Connection,
                        req: Request[m.Snapshot] | Request[m.Accept] | Request[m.Decline] | Request[m.End]
                        ) -> ServerCall:
        call = await self._involving(conn.device, req.body.call_id)
        if call is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no live call '{req.body.call_id}'", req.id)
        return call

    async def _involving(self, device: DeviceRef | None, call_id: str) -> ServerCall | None:
        """A live or recent call this device is a party of; None for any other, alike."""
        call = await self.find_call(call_id)
        return call if call is not None and device is not None and call.involves(device) else None

    async def _request(self, conn: Connection, req: Request[Any], event: Event) -> ServerCall:
        """A party's request on its call: applied, `ok`, then delivered."""
        call = await self._call_for(conn, req)
        applied = await self._apply(call.call_id, event)
        if applied is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no live call '{call.call_id}'", req.id)
        conn.send(m.ok(req.id))
        await self._deliver(*applied)
        return applied[0]

    async def _on_snapshot(self, conn: Connection, req: Request[m.Snapshot]) -> None:
        picture = _decode_snapshot(req)
        now = time.time()
        assert conn.device is not None
        device = conn.device
        call = await self._request(conn, req, lambda c: c.add_snapshot(
            device, f"/v1/direct_calls/{c.call_id}/snapshot", now))
        self._store("store the visitor's picture", self.store.set_snapshot(call.call_id, picture))
        self.events.call(EventType.PICTURE, call, now, picture=picture)

    async def _on_accept(self, conn: Connection, req: Request[m.Accept]) -> None:
        assert conn.user is not None and conn.device is not None
        now, device, answer = time.time(), conn.device, req.body.answer
        call = await self._request(conn, req, lambda c: c.accept(device, answer, now))
        self.push.answered(call, conn.user["display_name"], now)
        self._store("record the answer", self.store.accept_call(call))
        if call.caller_info["kind"] == "door":
            self.events.call(EventType.ANSWERED, call, now, by=party(device, conn.user["display_name"]))
        else:  # a resident looking outside: the door answered, the resident is who is in the call
            self.events.call(EventType.ANSWERED, call, now, by=party(call.caller, call.caller_info["display_name"]))

    async def _on_decline(self, conn: Connection, req: Request[m.Decline]) -> None:
        assert conn.device is not None
        device, now = conn.device, time.time()
        await self._request(conn, req, lambda c: c.decline(device, now))

    async def decline_from(self, device: DeviceRef, call_id: str) -> None:
        """A decline from a phone's notification, which has no WebSocket: the phone's service
        worker sends it over HTTP with the phone's token. Raises `CallError`."""
        call = await self._involving(device, call_id)
        now = time.time()
        applied = await self._apply(call_id, lambda c: c.decline(device, now)) if call is not None else None
        if applied is None:
            raise CallError(ErrorCode.NOT_FOUND, f"no live call '{call_id}' rings this device")
        await self._deliver(*applied)

    async def _on_end(self, conn: Connection, req: Request[m.End]) -> None:
        assert conn.device is not None
        device, now = conn.device, time.time()
        await self._request(conn, req, lambda c: c.end(device, now))

    async def _on_action(self, conn: Connection, req: Request[m.Action]) -> None:
        await self.door_action.request(conn, req)

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, call: ServerCall, sends: list[Send], ended: bool) -> None:
        for send in sends:
            target = self.devices.get(send.to)
            if target is not None:
                target.send(send.message)
        if self.cluster is not None:
            await self.cluster.send(sends, lambda device: device in self.devices)
        if ended:
            await self._ended(call)

    async def _ended(self, call: ServerCall) -> None:
        """Once per call, by the process whose event ended it."""
        if self.cluster is None and self.calls.pop(call.call_id, None) is not None:
            self._remember(call)
        await self._cancel(f"ring:{call.call_id}", f"max:{call.call_id}")
        self._store("record the call's end", self.store.finish_call(call))
        log.info("%s ended: %s", call.call_id, call.end_reason)
        ended_at = call.ended_at or time.time()
        if call.accepted_by is None:
            self.push.missed(call, ended_at)
        self._tell_ended(call, ended_at)

    def _tell_ended(self, call: ServerCall, ended_at: float) -> None:
        if not self.events.active:
            return
        answered = call.accepted_by is not None
        self.events.call(EventType.ENDED, call, ended_at, end_reason=str(call.end_reason), answered=answered,
                         duration_s=round(ended_at - call.created_at, 3))
        if not answered and call.caller_info["kind"] == "door":
            self.events.call(EventType.MISSED, call, ended_at, end_reason=str(call.end_reason), offline=False)

    def _remember(self, call: ServerCall) -> None:
        self.recent[call.call_id] = call
        horizon = (call.ended_at or 0) - RECENT_CALLS_S
        while self.recent:
            oldest = next(iter(self.recent.values()))
            if (oldest.ended_at or 0) >= horizon and len(self.recent) <= RECENT_CALLS_MAX:
                break
            del self.recent[oldest.call_id]

    # -- what another process of the cluster asks of this one ---------------------------------

    def local_devices(self) -> list[DeviceRef]:
        return list(self.devices)

    def deliver_local(self, device: DeviceRef, message: dict[str, Any]) -> None:
        conn = self.devices.get(device)
        if conn is not None:
            conn.send(message)

    def kick_local(self, device: DeviceRef, code: int, reason: str) -> None:
        """The device signed in again on another process: this connection of it goes, without
        the grace a lost connection gets (the device is right there, elsewhere)."""
        conn = self.devices.pop(device, None)
        if conn is not None:
            conn.device = None
            self._spawn(conn.close(code, reason))

    async def ask_local(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        conn = self.devices.get(device)
        if conn is None:
            raise ConnectionGone()
        return await conn.request(kind, timeout_s, **body)

    # -- stopping --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Alone, a server's live calls cannot survive its restart: they end, so their records
        are complete. In a cluster they live on in Redis: the connections are closed with
        1012 (service restart), and each device signs in again through the load balancer to
        another process, within its grace, and claims its calls there."""
        self.draining = True
        for task in list(self._actions):
            task.cancel()
        if self.cluster is None:
            now = time.time()
            for call in list(self.calls.values()):
                await self._event(call.call_id, lambda c: c.abort(m.EndReason.UNKNOWN, now))
            for handle in self._timers.values():
                handle.cancel()
        code, reason = ((m.CLOSE_SERVICE_RESTART, "this server restarts: connect again") if self.cluster is not None
                        else (1001, "server shutting down"))
        for conn in list(self.devices.values()):
            await conn.close(code, reason)
        await self.push.close()

    async def close(self) -> None:
        """After the connections' handlers have finished: leave the cluster."""
        self.door_presence.close()
        if self.cluster is not None:
            await self.cluster.close()

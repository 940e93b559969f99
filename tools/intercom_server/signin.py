"""Signing in and out: tokens checked and throttled, an endpoint made its device's, its calls
resynchronised; a session that ends (token revoked or expired, connection gone) lets its
device's calls go as after a crash, or gives them their grace."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time

from intercom_protocol import messages as m
from intercom_protocol.calls import DeviceRef
from intercom_protocol.messages import ErrorCode, ProtocolError, Request

from .background import Background
from .directory import Directory
from .door_presence import DoorPresence
from .records import User, UserKind
from .service import CallService
from .state import Endpoint, Failures

log = logging.getLogger("intercom.server")


class Throttle:
    """Failed sign-ins per key (an address, a user id) within a window, for every process."""

    def __init__(self, failures: Failures, limit: int, window_s: float, kind: str) -> None:
        self._failures, self.limit, self.window_s, self.kind = failures, limit, window_s, kind

    async def blocked_for(self, key: str) -> float:
        return await self._failures.blocked_for(f"{self.kind}:{key}", self.limit, self.window_s)

    async def fail(self, key: str) -> None:
        await self._failures.fail(f"{self.kind}:{key}", self.limit, self.window_s)


class SignIn:
    def __init__(self, service: CallService, directory: Directory, door_presence: DoorPresence,
                 background: Background) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.endpoints = service.endpoints
        self.directory = directory
        self.door_presence = door_presence
        self.background = background
        limits = self.settings.limits
        failures = service.state.failures
        self._by_user = Throttle(failures, limits.auth_failures_per_user, limits.auth_window_s, "user")
        self._by_address = Throttle(failures, limits.auth_failures_per_address, limits.auth_window_s, "addr")
        self._expiry: dict[Endpoint, asyncio.TimerHandle] = {}

    async def blocked_for(self, address: str) -> float:
        """Seconds before `address` may try a code again (invites, pairings): wrong codes and
        wrong tokens from one address share one budget."""
        return await self._by_address.blocked_for(address)

    async def failed(self, address: str) -> None:
        await self._by_address.fail(address)

    async def _check(self, conn: Endpoint, req: Request[m.Authenticate]) -> tuple[User, str, float | None]:
        """The user and its token, or `unauthenticated` (or `rate_limited`).

        Throttling keys on the source address only and never refuses a valid token: failures
        for one user id from anywhere used to lock that user out, so anyone who could reach
        the server could keep a door offline by guessing wrong on purpose."""
        user_id = req.body.user_id
        user = await self.directory.find(user_id)
        # The token is checked even for an unknown user, so both fail alike.
        token = await self.store.tokens.check_token(user_id, req.body.access_token)
        if token is not None and user is not None:
            return user, *token
        wait = await self._by_address.blocked_for(conn.peer)
        await self._by_address.fail(conn.peer)
        if await self._by_user.blocked_for(user_id) == 0:
            await self._by_user.fail(user_id)
            if await self._by_user.blocked_for(user_id) > 0:
                log.warning("%d failed sign-ins as '%s' within %.0f s, the last from %s; its own devices "
                            "still sign in", self._by_user.limit, user_id, self._by_user.window_s, conn.peer)
        if wait > 0:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"too many failed sign-ins from {conn.peer}; try again in {math.ceil(wait)} s", req.id)
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, "unknown user or bad access token", req.id)

    async def authenticate(self, conn: Endpoint, req: Request[m.Authenticate]) -> None:
        """Sign an endpoint in, then resynchronise its device's calls."""
        user, token_id, expires_at = await self._check(conn, req)
        user_id = user.user_id
        device = DeviceRef(user_id, req.body.device_id or "dev_" + secrets.token_hex(6))
        connected = await self.service.devices_of([user_id])
        others = sum(1 for d in connected if d != device)
        if others >= self.settings.limits.connections_per_user:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"this user already has {others} devices signed in, the most allowed", req.id)
        await self.service.returned(device)
        now = time.time()
        if req.body.calls is not None:
            await self._drop_unclaimed(device, set(req.body.calls), now)
        conn.user, conn.device, conn.token_id = user, device, token_id
        if user.kind == UserKind.DOOR:
            conn.quick_replies = tuple(dict(r) for r in req.body.quick_replies or ())
        conn.bridge = dict(req.body.bridge) if req.body.bridge else None
        await self.attach(conn)
        if expires_at is not None:
            self._expiry[conn] = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - now), self.end_session, conn, "the access token expired")
        calls = await self.service.calls_of([user_id])
        conn.send(m.ok(req.id, user=user.json(), device_id=device.device_id,
                       ice_servers=self.settings.ice.for_user(user_id, now), heartbeat_s=self.settings.heartbeat_s,
                       calls=[call.summary_for(device) for call in calls if call.holds(device)]))
        for call in calls:
            if device in call.ringing:
                # It rang on a connection that is gone, or by Web Push: ring it here.
                conn.send(call.incoming_event(now))
            else:
                await self.service.event(call.call_id, lambda c: c.reach(device, now))
        if user.kind == UserKind.DOOR and not connected:
            self.door_presence.online(user_id, now)

    async def attach(self, endpoint: Endpoint) -> None:
        """The endpoint stands for its device here from now on: one that stood for it before,
        here or on another process, is closed as replaced."""
        assert endpoint.device is not None
        previous = self.endpoints.attach(endpoint)
        if previous is not None:
            self.background.spawn(previous.close(m.CLOSE_REPLACED, "signed in again elsewhere"))
        elsewhere = await self.service.state.presence.join(endpoint.device)
        if elsewhere is not None:  # signed in again here: its old connection there goes
            self.service.state.backplane.kick(endpoint.device, elsewhere, m.CLOSE_REPLACED,
                                              "signed in again elsewhere")

    async def _drop_unclaimed(self, device: DeviceRef, claims: set[str], now: float) -> None:
        """A device that signs in says which calls it still holds: one it placed or answered
        and no longer knows (a restarted process with the same device id) is over. Left alone,
        the resident stayed in a call with nobody, and the next visitor was declined as busy."""
        for call in await self.service.calls_of([device.user_id]):
            if call.call_id in claims or device not in (call.caller, call.accepted_by) or not call.holds(device):
                continue
            log.info("%s/%s signed in without call %s: ending it", device.user_id, device.device_id, call.call_id)
            await self.service.event(call.call_id, lambda c: c.lose(device, now))

    async def disconnected(self, conn: Endpoint) -> None:
        """The endpoint is gone: its device's calls get their grace."""
        expiry = self._expiry.pop(conn, None)
        if expiry is not None:
            expiry.cancel()
        device = self.endpoints.detach(conn)
        if device is None:
            return
        try:
            await self.service.state.presence.leave(device)
            await self._maybe_offline(conn, device)
            await self.service.device_gone(device)
        except Exception as exc:  # noqa: BLE001 - Redis away: /healthz says so; the device signs in again
            log.warning("%s/%s left while Redis was away: %s", device.user_id, device.device_id, exc)

    async def _maybe_offline(self, conn: Endpoint, device: DeviceRef) -> None:
        """A door whose last connection went is offline (a door has one device, normally)."""
        if conn.user is not None and conn.user.kind == UserKind.DOOR and await self.service.door_gone(device.user_id):
            self.door_presence.offline(device.user_id)

    def end_session(self, conn: Endpoint, why: str) -> None:
        """A revoked or expired token ends its sessions at once; its calls go as after a crash."""
        self._expiry.pop(conn, None)
        if conn.closed:
            return
        device = self.endpoints.detach(conn)
        conn.device = None
        if device is not None:
            self.background.spawn(self._session_ended(conn, device))
        log.info("closing %s/%s: %s", device.user_id if device else "?", device.device_id if device else "?", why)
        self.background.spawn(conn.close(m.CLOSE_TOKEN_REVOKED, why))

    async def _session_ended(self, conn: Endpoint, device: DeviceRef) -> None:
        await self.service.state.presence.leave(device)
        await self._maybe_offline(conn, device)
        await self.service.lose_calls(device)

    async def revoked(self, token_ids: set[str] | None = None) -> int:
        """End the sessions of these tokens, or of every token the store no longer accepts
        (revoked or expired from a shell, another process). Returns how many ended."""
        sessions = [c for c in self.endpoints.all() if c.token_id is not None]
        gone = token_ids if token_ids is not None else await self.store.tokens.invalid_tokens(
            c.token_id for c in sessions if c.token_id)
        if token_ids is None:
            await self.service.push.reload()
        else:
            self.service.push.forget_tokens(token_ids)
        ended = 0
        for conn in sessions:
            if conn.token_id in gone:
                self.end_session(conn, "the access token was revoked")
                ended += 1
        return ended

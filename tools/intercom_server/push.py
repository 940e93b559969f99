"""Web Push: the bell rings a resident's phone whose app is closed, or whose screen is locked.

The server is a Web Push "application server" (RFC 8030): the browser gives the web app a
subscription (an endpoint URL at its vendor's push service and two keys), the app hands it to
us, and at a press we POST an encrypted message to that endpoint. The push service wakes the
phone, and the app's service worker shows the notification.

- Messages are encrypted for the subscription's keys (RFC 8291, `aes128gcm`, by `http_ece`)
  and signed with our VAPID key (RFC 8292, by `py_vapid`): the push service learns nothing
  but the size and the time, and nobody else can push to our subscribers. A message carries
  no access token and no picture; the service worker fetches the picture with the phone's
  own token.
- Every message of a call has the call's id as its `Topic`, so a push service holding an
  undelivered ring replaces it with the "missed" or "answered" that follows; a ring's `TTL`
  is the time left to ring, so it is never delivered after the visitor gave up.
- Sending never delays the ring of connected devices: it starts after their `incoming` is
  queued, runs in tasks, and encrypts on a worker thread (0.35 ms a message on the loop
  would be 35 ms for 100 phones). Each endpoint has its own queue, so messages of one call
  reach a phone in order and one slow push service holds up nobody else.
- A push service that answers 404 or 410 has forgotten the subscription: it is removed. 429
  and 5xx are retried with backoff (honouring Retry-After) until the message's life ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, b64urlencode

from intercom_protocol.calls import DeviceRef, ServerCall, iso

from .store import Store, StoreError, check_id

log = logging.getLogger("intercom.server.push")

#: How long the VAPID JWT we sign for a push service is valid (RFC 8292 allows up to 24 h);
#: it is signed again an hour before it runs out.
JWT_LIFETIME_S = 12 * 3600
#: The Web Push message size every push service must accept (RFC 8030 §7.2): the payload
#: plus the encryption's 86 bytes of overhead.
MAX_PAYLOAD = 3993
MAX_ENDPOINT = 2048
#: A missed call is worth telling a phone that was off for hours; an answered one is not.
MISSED_TTL_S = 86400
ANSWERED_TTL_S = 3600
#: Retries stop when a message's life ends, or after this, whichever comes first.
MAX_RETRY_S = 600.0


@dataclass
class PushSettings:
    #: The VAPID private key (raw, base64url, as `vapid --gen` or web-push tools print it);
    #: without it, one is made and kept in `key_file`, or, with neither, in memory (tests).
    vapid_private_key: str | None = None
    key_file: Path | None = None
    #: Who the push services may contact about our traffic (RFC 8292 `sub`): a mailto: or
    #: https: URL. Apple's push service refuses a made-up address.
    contact: str = "mailto:intercom@localhost"
    subscriptions_per_user: int = 10
    #: Push services on the server's own network or machine (a self-hosted ntfy, a test
    #: stand-in), which may also be plain http. Any other endpoint must be https to a public
    #: address, so a subscription cannot aim the server at itself or the LAN.
    local_hosts: tuple[str, ...] = ()
    timeout_s: float = 10.0


def load_vapid(settings: PushSettings) -> Vapid02:
    """The server's VAPID key: given, kept in the data directory (0600), or made now."""
    if settings.vapid_private_key:
        try:
            return Vapid02.from_string(settings.vapid_private_key)
        except Exception as exc:  # noqa: BLE001 - py_vapid raises anything from a bad key
            raise ValueError(f"push.vapid_private_key is not a VAPID private key: {exc}") from None
    path = settings.key_file
    if path is not None and path.exists():
        try:
            return Vapid02.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - py_vapid raises anything from a bad file
            raise ValueError(f"{path} is not a VAPID private key ({exc}); move it away to make a new one "
                             f"(subscribed phones must then switch ringing on again)") from None
    vapid = Vapid02()
    vapid.generate_keys()
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(vapid.private_pem())
        log.info("made a VAPID key for Web Push in %s", path)
    return vapid


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Subscription:
    device: DeviceRef
    token_id: str
    endpoint: str
    p256dh: bytes
    auth: bytes
    created_at: float
    token_expires_at: float | None

    @property
    def service(self) -> str:
        """The push service's origin: what may be shown of an endpoint, which is itself a
        credential (whoever knows it can make the phone's push service store messages)."""
        parts = urlsplit(self.endpoint)
        return f"{parts.scheme}://{parts.netloc}"

    def as_json(self) -> dict[str, Any]:
        return {"device_id": self.device.device_id, "push_service": self.service, "created_at": iso(self.created_at)}


@dataclass
class _Message:
    sub: Subscription
    payload: bytes
    ttl: int
    urgency: str
    topic: str
    #: Monotonic time after which it is not worth sending any more.
    until: float
    queued_at: float = field(default_factory=time.monotonic)
    #: Set when a later message of the same topic replaces this one: its retries stop at once.
    superseded: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PushStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    pruned: int = 0
    #: Messages whose life ended before a push service took them (a ring after its timeout).
    expired: int = 0
    last_error: str | None = None


class Pusher:
    """The subscriptions (kept in memory: a press must not read the disk to know whom to
    wake) and the sending."""

    def __init__(self, store: Store, settings: PushSettings) -> None:
        self.store = store
        self.settings = settings
        self.vapid = load_vapid(settings)
        raw = self.vapid.public_key.public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
        #: The application server key the browser needs to subscribe (base64url, 65 bytes).
        self.public_key = b64urlencode(raw)
        self.stats = PushStats()
        self._by_user: dict[str, dict[str, Subscription]] = {}
        self._outboxes: dict[str, deque[_Message]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._jwts: dict[str, tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._crypto = ThreadPoolExecutor(1, thread_name_prefix="push-crypto")
        self._done: asyncio.Condition | None = None
        self._fingerprint: tuple[int, float | None] | None = None

    # -- subscriptions ---------------------------------------------------------------------

    async def reload(self) -> None:
        """Read the subscriptions again: at start, and when another process changed them (a
        token revoked from a shell takes its subscriptions with it)."""
        fingerprint = await self.store.subscriptions_fingerprint()
        if fingerprint == self._fingerprint:
            return  # the store changed elsewhere (a call's record), not the subscriptions
        self._fingerprint = fingerprint
        by_user: dict[str, dict[str, Subscription]] = {}
        for row in await self.store.subscriptions():
            sub = Subscription(DeviceRef(row["user_id"], row["device_id"]), row["token_id"], row["endpoint"],
                               _b64decode(row["p256dh"]), _b64decode(row["auth"]), row["created_at"],
                               row["expires_at"])
            by_user.setdefault(sub.device.user_id, {})[sub.device.device_id] = sub
        self._by_user = by_user

    def count(self) -> int:
        return sum(len(subs) for subs in self._by_user.values())

    def pending(self) -> int:
        """Messages not yet taken by their push service (waiting, being sent or retried)."""
        return sum(len(outbox) for outbox in self._outboxes.values())

    async def idle(self, timeout: float = 10.0) -> None:
        """Until every message queued so far was delivered, refused or given up (for tests
        and the bench)."""
        if self._done is None:
            self._done = asyncio.Condition()
        async with self._done:
            await asyncio.wait_for(self._done.wait_for(lambda: self.pending() == 0), timeout)

    def subscribed(self, user_ids: tuple[str, ...] | list[str], now: float) -> list[Subscription]:
        """The live subscriptions of these users' devices."""
        return [sub for user_id in user_ids for sub in self._by_user.get(user_id, {}).values()
                if sub.token_expires_at is None or sub.token_expires_at > now]

    def of_user(self, user_id: str) -> list[Subscription]:
        return list(self._by_user.get(user_id, {}).values())

    def of_device(self, device: DeviceRef) -> Subscription | None:
        return self._by_user.get(device.user_id, {}).get(device.device_id)

    async def subscribe(self, user: dict[str, Any], device_id: str, token_id: str, token_expires_at: float | None,
                  body: Any) -> Subscription:
        """Check and keep what the browser's `PushSubscription.toJSON()` gave the app."""
        check_id("device_id", device_id)
        if user["kind"] != "resident":
            raise StoreError("only a resident's phone rings by Web Push; a door station is always connected")
        if not isinstance(body, dict) or not isinstance(body.get("endpoint"), str) \
                or not isinstance(body.get("keys"), dict):
            raise StoreError("the body must be a push subscription: {endpoint, keys: {p256dh, auth}}")
        unknown = sorted(set(body) - {"endpoint", "keys", "expirationTime"})
        if unknown:
            raise StoreError(f"unknown fields: {', '.join(unknown)}")
        endpoint = self._check_endpoint(body["endpoint"])
        keys = body["keys"]
        p256dh = self._key(keys, "p256dh", 65)
        auth = self._key(keys, "auth", 16)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        except ValueError:
            raise StoreError("keys.p256dh is not a P-256 public key") from None
        created = await self.store.save_subscription(user["user_id"], device_id, token_id, endpoint,
                                               b64urlencode(p256dh), b64urlencode(auth),
                                               self.settings.subscriptions_per_user)
        sub = Subscription(DeviceRef(user["user_id"], device_id), token_id, endpoint, p256dh, auth, created,
                           token_expires_at)
        self._by_user.setdefault(user["user_id"], {})[device_id] = sub
        self._fingerprint = None  # what the store holds moved on: the next check reads it again
        log.info("%s/%s rings by Web Push through %s", user["user_id"], device_id, sub.service)
        return sub

    def _check_endpoint(self, endpoint: str) -> str:
        if len(endpoint) > MAX_ENDPOINT:
            raise StoreError(f"endpoint is longer than {MAX_ENDPOINT} characters")
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        if parts.scheme in ("http", "https") and host in self.settings.local_hosts:
            return endpoint
        hint = f"; to allow a push service on your own network, list '{host}' in push.local_hosts"
        if parts.scheme == "https" and host and not _local(host):
            return endpoint
        raise StoreError(f"endpoint must be an https:// URL of a push service on the internet{hint if host else ''}")

    @staticmethod
    def _key(keys: dict[str, Any], name: str, size: int) -> bytes:
        value = keys.get(name)
        try:
            raw = _b64decode(value) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            raise StoreError(f"keys.{name} must be {size} bytes in base64url")
        return raw

    async def unsubscribe(self, device: DeviceRef, endpoint: str | None = None) -> bool:
        removed = await self.store.delete_subscription(device.user_id, device.device_id, endpoint)
        self._fingerprint = None
        current = self.of_device(device)
        if current is not None and (endpoint is None or current.endpoint == endpoint):
            del self._by_user[device.user_id][device.device_id]
        return removed

    def forget_tokens(self, token_ids: set[str]) -> None:
        """The store already dropped these tokens' subscriptions; drop them here too."""
        self._fingerprint = None
        for subs in self._by_user.values():
            for device_id in [d for d, s in subs.items() if s.token_id in token_ids]:
                del subs[device_id]

    # -- what a call sends -----------------------------------------------------------------

    def ring(self, call: ServerCall, subs: list[Subscription], now: float) -> None:
        """Wake the callees' phones: the ring lives as long as the call may ring."""
        left = call.ring_deadline - now
        if left <= 0:
            return
        body = {"type": "ring", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "expires_in_s": round(left, 3),
                "snapshot_url": f"/v1/direct_calls/{call.call_id}/snapshot"}
        self._send(subs, body, ttl=max(1, int(left)), urgency="high", topic=call.call_id, life=left)

    def answered(self, call: ServerCall, by_name: str, now: float) -> None:
        """Replace the ring on the other phones: someone has it."""
        subs = [s for s in self.subscribed(call.rung_callees, now) if s.device != call.accepted_by]
        by = call.accepted_by.user_id if call.accepted_by else None
        body = {"type": "answered", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "by": {"user_id": by, "display_name": by_name}}
        self._send(subs, body, ttl=ANSWERED_TTL_S, urgency="high", topic=call.call_id, life=ANSWERED_TTL_S)

    def missed(self, call: ServerCall, now: float) -> None:
        """Nobody answered (or the door rang while offline): the ring becomes a missed call,
        except on a phone that declined it."""
        subs = [s for s in self.subscribed(call.rung_callees, now) if s.device not in call.declined]
        body = {"type": "missed", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "reason": str(call.end_reason),
                "snapshot_url": f"/v1/direct_calls/{call.call_id}/snapshot"}
        # High: it replaces a ring that would otherwise go on showing for a visitor who left.
        self._send(subs, body, ttl=MISSED_TTL_S, urgency="high", topic=call.call_id, life=MISSED_TTL_S)

    def message(self, call_id: str, caller: dict[str, Any], created_at: float, user_ids: list[str], now: float) -> None:
        """A visitor left a message: "New message from Front door"."""
        body = {"type": "message", "call_id": call_id, "caller": caller, "created_at": iso(created_at),
                "snapshot_url": f"/v1/direct_calls/{call_id}/snapshot"}
        self._send(self.subscribed(user_ids, now), body, ttl=MISSED_TTL_S, urgency="normal", topic=call_id,
                   life=MISSED_TTL_S)

    def test(self, sub: Subscription) -> None:
        body = {"type": "test", "sent_at": iso(time.time())}
        self._send([sub], body, ttl=300, urgency="high", topic="test", life=300)

    # -- sending ---------------------------------------------------------------------------

    def _send(self, subs: list[Subscription], body: dict[str, Any], ttl: int, urgency: str, topic: str,
              life: float) -> None:
        until = time.monotonic() + min(life, MAX_RETRY_S)
        for sub in subs:
            payload = json.dumps({**body, "device_id": sub.device.device_id}, separators=(",", ":")).encode()
            assert len(payload) <= MAX_PAYLOAD, "a push message must fit what every push service accepts"
            message = _Message(sub, payload, ttl, urgency, topic, until)
            outbox = self._outboxes.setdefault(sub.endpoint, deque())
            # A message of the same call replaces one still waiting: the phone needs only the last.
            for older in outbox:
                if older.topic == topic:
                    older.superseded.set()
            outbox.append(message)
            if sub.endpoint not in self._workers:
                task = asyncio.get_running_loop().create_task(self._work(sub.endpoint), name="push")
                self._workers[sub.endpoint] = task

    async def _work(self, endpoint: str) -> None:
        """One endpoint's messages, in order."""
        outbox = self._outboxes[endpoint]
        try:
            while outbox:
                message = outbox[0]
                try:
                    await self._deliver(message)
                except Exception:  # one bad message must not stop the others
                    log.exception("sending a push message to %s", message.sub.service)
                    self.stats.failed += 1
                outbox.popleft()
                await self._settled()
        finally:
            self._workers.pop(endpoint, None)
            if not outbox:
                self._outboxes.pop(endpoint, None)

    async def _settled(self) -> None:
        if self._done is not None:
            async with self._done:
                self._done.notify_all()

    def _current(self, sub: Subscription) -> bool:
        """Whether the subscription still stands: a device that switched ringing off, signed out
        or had its token revoked gets nothing more, even what was queued for it."""
        now = self.of_device(sub.device)
        return now is not None and now.endpoint == sub.endpoint

    async def _deliver(self, message: _Message) -> None:
        sub = message.sub
        delay = 1.0
        while True:
            if message.superseded.is_set() or not self._current(sub):
                return
            if time.monotonic() >= message.until:
                self.stats.expired += 1
                return
            try:
                status, retry_after, text = await self._post(message)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, retry_after, text = 0, None, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                self.stats.sent += 1
                return
            if status in (404, 410):
                self.stats.pruned += 1
                log.info("%s/%s: the push service forgot its subscription (%d); removed",
                         sub.device.user_id, sub.device.device_id, status)
                await self.unsubscribe(sub.device, sub.endpoint)
                return
            self.stats.last_error = f"{sub.service}: {status or text}"
            if status and status != 429 and status < 500:
                self.stats.failed += 1
                log.warning("%s refused a push message for %s/%s: %d %s", sub.service, sub.device.user_id,
                            sub.device.device_id, status, text[:200])
                return
            wait = retry_after if retry_after is not None else delay
            if time.monotonic() + wait >= message.until:
                self.stats.failed += 1
                log.warning("giving up a push message for %s/%s: %s", sub.device.user_id, sub.device.device_id,
                            self.stats.last_error)
                return
            self.stats.retried += 1
            log.info("push to %s failed (%s); again in %.1f s", sub.service, status or text, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(message.superseded.wait(), wait)
            delay = min(delay * 2, 60.0)

    async def _post(self, message: _Message) -> tuple[int, float | None, str]:
        sub = message.sub
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._crypto, _encrypt, message.payload, sub.p256dh, sub.auth)
        left = max(1, int(message.ttl - (time.monotonic() - message.queued_at)))
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(left),
            "Urgency": message.urgency,
            "Topic": message.topic,
            "Authorization": self._authorization(sub.service),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                                  timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        async with self._session.post(sub.endpoint, data=body, headers=headers, allow_redirects=False) as resp:
            text = await resp.text(errors="replace") if resp.status >= 300 else ""
            return resp.status, _retry_after(resp.headers.get("Retry-After")), text

    def _authorization(self, audience: str) -> str:
        """`vapid t=JWT,k=KEY`, one JWT per push service, signed again before it expires."""
        now = time.time()
        cached = self._jwts.get(audience)
        if cached is not None and cached[1] > now + 3600:
            return cached[0]
        exp = int(now) + JWT_LIFETIME_S
        header = self.vapid.sign({"aud": audience, "exp": exp, "sub": self.settings.contact})["Authorization"]
        self._jwts[audience] = (header, exp)
        return str(header)

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self._crypto.shutdown(wait=False)


def _encrypt(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291: a fresh ECDH key pair for every message, aes128gcm content coding."""
    key = ec.generate_private_key(ec.SECP256R1())
    return bytes(http_ece.encrypt(payload, private_key=key, dh=p256dh, auth_secret=auth, version="aes128gcm"))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None



def _local(host: str) -> bool:
    """An address of this machine or a private network, written as such."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False

"""Sending Web Push messages: one queue per push service endpoint, in order, encrypted on a
thread of its own (RFC 8291), signed with the server's VAPID key, retried with a doubling wait
until the message's life ends; a later message of the same call replaces one still waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from intercom_protocol.calls import DeviceRef, iso

log = logging.getLogger("intercom.server")

#: How long the VAPID JWT we sign for a push service is valid (RFC 8292 allows up to 24 h);
#: it is signed again an hour before it runs out.
JWT_LIFETIME_S = 12 * 3600
#: The Web Push message size every push service must accept (RFC 8030 §7.2): the payload
#: plus the encryption's 86 bytes of overhead.
MAX_PAYLOAD = 3993
#: Retries stop when a message's life ends, or after this, whichever comes first.
MAX_RETRY_S = 600.0


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


class PushDelivery:
    def __init__(self, contact: str, timeout_s: float, vapid: Vapid02, current: Callable[[Subscription], bool],
                 forget: Callable[[DeviceRef, str], Awaitable[bool]]) -> None:
        #: Who the push services may contact (VAPID's `sub`), and how long one may take.
        self.contact, self.timeout_s = contact, timeout_s
        self.vapid = vapid
        #: Whether a subscription still stands, and how to drop one its push service forgot.
        self._current, self._forget = current, forget
        self.stats = PushStats()
        self._outboxes: dict[str, deque[_Message]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._jwts: dict[str, tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._crypto = ThreadPoolExecutor(1, thread_name_prefix="push-crypto")
        self._done: asyncio.Condition | None = None

    def pending(self) -> int:
        return sum(len(outbox) for outbox in self._outboxes.values())

    async def idle(self, timeout: float = 10.0) -> None:
        if self._done is None:
            self._done = asyncio.Condition()
        async with self._done:
            await asyncio.wait_for(self._done.wait_for(lambda: self.pending() == 0), timeout)

    def send(self, subs: list[Subscription], body: dict[str, Any], ttl: int, urgency: str, topic: str,
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
                await self._forget(sub.device, sub.endpoint)
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
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
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
        header = self.vapid.sign({"aud": audience, "exp": exp, "sub": self.contact})["Authorization"]
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

"""Webhooks: each site's events POSTed to the receivers an operator registered, signed.

Signed as Standard Webhooks specifies (https://www.standardwebhooks.com), so a receiver can
check them with its libraries: `webhook-id` (the same for every attempt of one event, for
idempotency), `webhook-timestamp` (of the attempt, in seconds) and `webhook-signature`
(`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` keyed with the secret's bytes).

A delivery never holds up a ring: events are queued per receiver and sent by one task each, in
order. A failed attempt (no answer, not 2xx, a redirect) is tried again with a doubling wait
for as long as `retry_for_s`; a receiver whose deliveries failed for good `disable_after`
times in a row is switched off, logged and shown in the API and /healthz until an operator
switches it on again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .events import EventType, SiteEvent
from .records import StoreError
from .store import Store

log = logging.getLogger("intercom.server")

#: What a receiver can ask for (the picture is not sent: receivers fetch it with a token).
EVENTS = tuple(str(t) for t in EventType if t is not EventType.PICTURE)
MAX_URL = 2000
#: Events waiting for one receiver; beyond, the oldest are dropped (and counted).
MAX_PENDING = 1000
LAN_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal")


@dataclass
class WebhookSettings:
    timeout_s: float = 10.0
    #: How long one event is tried before it counts as failed.
    retry_for_s: float = 600.0
    first_retry_s: float = 2.0
    #: Deliveries failed in a row before the receiver is switched off.
    disable_after: int = 5


@dataclass
class WebhookStats:
    delivered: int = 0
    attempts: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    switched_off: int = 0


def check_url(url: Any, allow_http: bool) -> str:
    """https anywhere; http only when asked for, and only to this machine or the local network."""
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL:
        raise StoreError(f"url must be a string of at most {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise StoreError("url must be an https:// URL without a fragment")
    try:
        parts.port  # noqa: B018 - it raises for a bad port
    except ValueError:
        raise StoreError("url has a bad port") from None
    if parts.scheme == "http":
        if not allow_http:
            raise StoreError("url must be https://; plain http is allowed only to this machine or your own "
                             "network, with allow_http: true")
        if not _local(parts.hostname):
            raise StoreError("plain http is allowed only to a loopback or private address, or a local name "
                             f"({', '.join(LAN_SUFFIXES)}, localhost)")
    return url


def _local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(LAN_SUFFIXES) or "." not in host
    return ip.is_loopback or ip.is_private or ip.is_link_local


def check_events(events: Any) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise StoreError(f"events must be a non-empty list of: {', '.join(EVENTS)}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise StoreError(f"unknown events {', '.join(unknown)}; the events are: {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of one attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass
class _Receiver:
    webhook_id: str
    site_id: str
    url: str
    events: frozenset[str]
    secret: str
    failures: int
    pending: deque[tuple[str, bytes]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Webhooks:
    def __init__(self, store: Store, settings: WebhookSettings) -> None:
        self.store = store
        self.settings = settings
        self.stats = WebhookStats()
        self._receivers: dict[str, _Receiver] = {}
        self._by_site: dict[str, list[_Receiver]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                                           headers={"User-Agent": "intercom-server"})
        await self.reload()

    async def close(self) -> None:
        tasks = [r.task for r in self._receivers.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._receivers.clear()
        self._by_site.clear()
        if self._http is not None:
            await self._http.close()

    @staticmethod
    def _record(written: asyncio.Future[None]) -> None:
        """A receiver's delivery state is for the operator: a failure to store it is logged."""
        def done(result: asyncio.Future[None]) -> None:
            if not result.cancelled() and result.exception() is not None:
                log.warning("could not record a webhook delivery: %s", result.exception())
        written.add_done_callback(done)

    async def reload(self) -> None:
        """Take the registrations as stored (after the API changed one). A receiver that stays
        keeps its queue; one switched off or deleted drops what it had pending."""
        rows = {r["webhook_id"]: r for r in await self.store.webhooks.active_webhooks()}
        for webhook_id in list(self._receivers):
            if webhook_id not in rows:
                receiver = self._receivers.pop(webhook_id)
                if receiver.task is not None:
                    receiver.task.cancel()
        for webhook_id, row in rows.items():
            known = self._receivers.get(webhook_id)
            if known is None:
                new = self._receivers[webhook_id] = _Receiver(webhook_id, row["site_id"], row["url"],
                                                              frozenset(json.loads(row["events"])), row["secret"],
                                                              row["failures"])
                new.task = asyncio.get_running_loop().create_task(self._send(new), name=webhook_id)
            else:  # its failures in a row are counted here (the store may not have them yet)
                known.url, known.events = row["url"], frozenset(json.loads(row["events"]))
        self._by_site = {}
        for receiver in self._receivers.values():
            self._by_site.setdefault(receiver.site_id, []).append(receiver)

    def on_event(self, event: SiteEvent) -> None:
        receivers = self._by_site.get(event.site_id)
        if not receivers:
            return
        body: bytes | None = None
        for receiver in receivers:
            if event.type not in receiver.events:
                continue
            body = body or json.dumps(event.as_json(), separators=(",", ":")).encode()
            if len(receiver.pending) >= MAX_PENDING:
                receiver.pending.popleft()
                self.stats.dropped += 1
            receiver.pending.append(("msg_" + secrets.token_hex(12), body))
            receiver.wake.set()

    def counts(self) -> dict[str, Any]:
        return {"active": len(self._receivers), **self.stats.__dict__,
                "pending": sum(len(r.pending) for r in self._receivers.values())}

    async def _send(self, receiver: _Receiver) -> None:
        while True:
            await receiver.wake.wait()
            receiver.wake.clear()
            while receiver.pending:
                message_id, body = receiver.pending[0]
                error = await self._deliver(receiver, message_id, body)
                if receiver.pending and receiver.pending[0][0] == message_id:
                    receiver.pending.popleft()
                now = time.time()
                if error is None:
                    self.stats.delivered += 1
                    if receiver.failures:
                        receiver.failures = 0
                    self._record(self.store.webhooks.webhook_delivered(receiver.webhook_id, now))
                    continue
                self.stats.failed += 1
                receiver.failures += 1
                off = receiver.failures >= self.settings.disable_after
                reason = (f"switched off after {receiver.failures} deliveries in a row failed; the last: {error}"
                          if off else None)
                self._record(self.store.webhooks.webhook_failed(receiver.webhook_id, now, error, reason))
                if off:
                    self.stats.switched_off += 1
                    log.warning("webhook %s (%s) of site %s %s", receiver.webhook_id, receiver.url, receiver.site_id,
                                reason)
                    self._receivers.pop(receiver.webhook_id, None)
                    self._by_site[receiver.site_id] = [r for r in self._by_site.get(receiver.site_id, [])
                                                       if r is not receiver]
                    return
                log.info("webhook %s: an event could not be delivered to %s: %s", receiver.webhook_id, receiver.url,
                         error)

    async def _deliver(self, receiver: _Receiver, message_id: str, body: bytes) -> str | None:
        """Attempts until one succeeds or `retry_for_s` is over; the last error, or None."""
        assert self._http is not None
        deadline = time.monotonic() + self.settings.retry_for_s
        wait = self.settings.first_retry_s
        while True:
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", "webhook-id": message_id,
                       "webhook-timestamp": str(timestamp),
                       "webhook-signature": sign(receiver.secret, message_id, timestamp, body)}
            self.stats.attempts += 1
            try:
                async with self._http.post(receiver.url, data=body, headers=headers, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return None
                    error = f"HTTP {resp.status}"
                    retry_after = resp.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        wait = max(wait, float(retry_after))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() + wait > deadline:
                return error
            self.stats.retried += 1
            await asyncio.sleep(wait)
            wait *= 2

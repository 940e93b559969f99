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

import base64
import binascii
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, b64urlencode

from intercom_protocol.calls import DeviceRef, ServerCall, iso

from .push_delivery import PushDelivery, Subscription
from .records import StoreError, User, UserKind, check_id
from .store import Store

log = logging.getLogger("intercom.server.push")

MAX_ENDPOINT = 2048
#: A missed call is worth telling a phone that was off for hours; an answered one is not.
MISSED_TTL_S = 86400
ANSWERED_TTL_S = 3600


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
        self._by_user: dict[str, dict[str, Subscription]] = {}
        self._fingerprint: tuple[int, float | None] | None = None
        #: The queues to the push services, and their retries.
        self.delivery = PushDelivery(settings.contact, settings.timeout_s, self.vapid, self._current, self.unsubscribe)
        self.stats = self.delivery.stats

    # -- subscriptions ---------------------------------------------------------------------

    async def reload(self) -> None:
        """Read the subscriptions again: at start, and when another process changed them (a
        token revoked from a shell takes its subscriptions with it)."""
        fingerprint = await self.store.push.subscriptions_fingerprint()
        if fingerprint == self._fingerprint:
            return  # the store changed elsewhere (a call's record), not the subscriptions
        self._fingerprint = fingerprint
        by_user: dict[str, dict[str, Subscription]] = {}
        for row in await self.store.push.subscriptions():
            sub = Subscription(DeviceRef(row["user_id"], row["device_id"]), row["token_id"], row["endpoint"],
                               _b64decode(row["p256dh"]), _b64decode(row["auth"]), row["created_at"],
                               row["expires_at"])
            by_user.setdefault(sub.device.user_id, {})[sub.device.device_id] = sub
        self._by_user = by_user

    def count(self) -> int:
        return sum(len(subs) for subs in self._by_user.values())

    def pending(self) -> int:
        """Messages not yet taken by their push service (waiting, being sent or retried)."""
        return self.delivery.pending()

    async def idle(self, timeout: float = 10.0) -> None:
        """Until every message queued so far was delivered, refused or given up (for tests
        and the bench)."""
        await self.delivery.idle(timeout)

    def subscribed(self, user_ids: tuple[str, ...] | list[str], now: float) -> list[Subscription]:
        """The live subscriptions of these users' devices."""
        return [sub for user_id in user_ids for sub in self._by_user.get(user_id, {}).values()
                if sub.token_expires_at is None or sub.token_expires_at > now]

    def of_user(self, user_id: str) -> list[Subscription]:
        return list(self._by_user.get(user_id, {}).values())

    def of_device(self, device: DeviceRef) -> Subscription | None:
        return self._by_user.get(device.user_id, {}).get(device.device_id)

    async def subscribe(self, user: User, device_id: str, token_id: str, token_expires_at: float | None,
                  body: Any) -> Subscription:
        """Check and keep what the browser's `PushSubscription.toJSON()` gave the app."""
        check_id("device_id", device_id)
        if user.kind != UserKind.RESIDENT:
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
        created = await self.store.push.save_subscription(user.user_id, device_id, token_id, endpoint,
                                               b64urlencode(p256dh), b64urlencode(auth),
                                               self.settings.subscriptions_per_user)
        sub = Subscription(DeviceRef(user.user_id, device_id), token_id, endpoint, p256dh, auth, created,
                           token_expires_at)
        self._by_user.setdefault(user.user_id, {})[device_id] = sub
        self._fingerprint = None  # what the store holds moved on: the next check reads it again
        log.info("%s/%s rings by Web Push through %s", user.user_id, device_id, sub.service)
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
        removed = await self.store.push.delete_subscription(device.user_id, device.device_id, endpoint)
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

    def _current(self, sub: Subscription) -> bool:
        """Whether the subscription still stands: a device that switched ringing off, signed out
        or had its token revoked gets nothing more, even what was queued for it."""
        now = self.of_device(sub.device)
        return now is not None and now.endpoint == sub.endpoint

    # -- what a call sends -----------------------------------------------------------------

    def ring(self, call: ServerCall, subs: list[Subscription], now: float) -> None:
        """Wake the callees' phones: the ring lives as long as the call may ring."""
        left = call.ring_deadline - now
        if left <= 0:
            return
        body = {"type": "ring", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "expires_in_s": round(left, 3),
                "snapshot_url": f"/v1/direct_calls/{call.call_id}/snapshot"}
        self.delivery.send(subs, body, ttl=max(1, int(left)), urgency="high", topic=call.call_id, life=left)

    def answered(self, call: ServerCall, by_name: str, now: float) -> None:
        """Replace the ring on the other phones: someone has it."""
        subs = [s for s in self.subscribed(call.rung_callees, now) if s.device != call.accepted_by]
        by = call.accepted_by.user_id if call.accepted_by else None
        body = {"type": "answered", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "by": {"user_id": by, "display_name": by_name}}
        self.delivery.send(subs, body, ttl=ANSWERED_TTL_S, urgency="high", topic=call.call_id, life=ANSWERED_TTL_S)

    def missed(self, call: ServerCall, now: float) -> None:
        """Nobody answered (or the door rang while offline): the ring becomes a missed call,
        except on a phone that declined it."""
        subs = [s for s in self.subscribed(call.rung_callees, now) if s.device not in call.declined]
        body = {"type": "missed", "call_id": call.call_id, "caller": call.caller_info,
                "created_at": iso(call.created_at), "reason": str(call.end_reason),
                "snapshot_url": f"/v1/direct_calls/{call.call_id}/snapshot"}
        # High: it replaces a ring that would otherwise go on showing for a visitor who left.
        self.delivery.send(subs, body, ttl=MISSED_TTL_S, urgency="high", topic=call.call_id, life=MISSED_TTL_S)

    def message(self, call_id: str, caller: dict[str, Any], created_at: float, user_ids: list[str], now: float) -> None:
        """A visitor left a message: "New message from Front door"."""
        body = {"type": "message", "call_id": call_id, "caller": caller, "created_at": iso(created_at),
                "snapshot_url": f"/v1/direct_calls/{call_id}/snapshot"}
        self.delivery.send(self.subscribed(user_ids, now), body, ttl=MISSED_TTL_S, urgency="normal", topic=call_id,
                   life=MISSED_TTL_S)

    def test(self, sub: Subscription) -> None:
        body = {"type": "test", "sent_at": iso(time.time())}
        self.delivery.send([sub], body, ttl=300, urgency="high", topic="test", life=300)

    async def close(self) -> None:
        await self.delivery.close()


def _local(host: str) -> bool:
    """An address of this machine or a private network, written as such."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False

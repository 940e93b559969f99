"""A stand-in for a browser vendor's push service (RFC 8030), on loopback, for tests and the
bench: what Google's, Mozilla's and Apple's services do with a message from our server,
checked as strictly as they check it.

It makes subscriptions as a browser would (a P-256 key pair and an auth secret per
subscription), verifies each request's VAPID JWT (RFC 8292) against the key it was told the
server has, and records the body with the `TTL`, `Urgency` and `Topic` headers; `next()`
decrypts it with the subscription's private key (RFC 8291, aes128gcm), as the phone would.
(A real push service cannot decrypt; doing it outside the request also keeps each request's
arrival time honest when a hundred come at once.) Each subscription can be
told to answer as a failing service would: 410 Gone, 429 or 503 with Retry-After, or never.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Delivery:
    """One message the service accepted (`message` is filled in by `PushService.next`)."""
    name: str
    message: dict[str, Any]
    ttl: int
    urgency: str | None
    topic: str | None
    at: float  # time.monotonic() when its request arrived (before it was read and decrypted)
    ciphertext: bytes


@dataclass
class _Subscriber:
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    #: What the next requests get: "ok", "gone", "hang", or (status, retry_after) for a failure.
    answers: list[Any] = field(default_factory=list)


class PushService:
    def __init__(self) -> None:
        self.url = ""
        self.server_key: str | None = None  # the application server's VAPID public key, base64url
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.refused: list[str] = []  # why requests were refused (a bad JWT, a bad body)
        self.requests = 0
        self.hanging = 0
        self._subs: dict[str, _Subscriber] = {}
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._changed = asyncio.Condition()
        self._verified: dict[tuple[str, str], float] = {}

    async def start(self) -> PushService:
        app = web.Application()
        app.router.add_post("/push/{name}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def subscribe(self, name: str) -> dict[str, Any]:
        """A new subscription, as `PushSubscription.toJSON()` gives it to the web app."""
        key = ec.generate_private_key(ec.SECP256R1())
        sub = _Subscriber(key, os.urandom(16))
        self._subs[name] = sub
        public = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.url}/push/{name}", "expirationTime": None,
                "keys": {"p256dh": b64url(public), "auth": b64url(sub.auth)}}

    def answer(self, name: str, *answers: Any) -> None:
        """The next requests for `name` get these answers, in order; then "ok" again."""
        self._subs[name].answers.extend(answers)

    async def next(self, timeout: float = 10.0) -> Delivery:
        """The next message accepted, decrypted; one that does not decrypt is a failure."""
        delivery = await asyncio.wait_for(self.deliveries.get(), timeout)
        sub = self._subs[delivery.name]
        try:
            plain = http_ece.decrypt(delivery.ciphertext, private_key=sub.key, auth_secret=sub.auth,
                                     version="aes128gcm")
            delivery.message = json.loads(plain)
        except Exception as exc:  # noqa: BLE001 - whatever fails to decrypt is recorded and raised
            self.refused.append(f"cannot decrypt: {exc!r}")
            raise AssertionError(f"a message for {delivery.name} does not decrypt: {exc!r}") from None
        return delivery

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until `predicate` (about this service's counters) holds; checked at every request."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _count(self, attribute: str) -> None:
        async with self._changed:
            setattr(self, attribute, getattr(self, attribute) + 1)
            self._changed.notify_all()

    async def _push(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        await self._count("requests")
        name = request.match_info["name"]
        sub = self._subs.get(name)
        if sub is None:
            return web.Response(status=404)
        body = await request.read()
        why = self._check_vapid(request.headers.get("Authorization", ""))
        if why:
            self.refused.append(why)
            return web.Response(status=403, text=why)
        if request.headers.get("Content-Encoding") != "aes128gcm":
            self.refused.append("Content-Encoding is not aes128gcm")
            return web.Response(status=415)
        try:
            ttl = int(request.headers["TTL"])
        except (KeyError, ValueError):
            self.refused.append("no TTL")
            return web.Response(status=400, text="TTL is required")
        answer = sub.answers.pop(0) if sub.answers else "ok"
        if answer == "hang":
            await self._count("hanging")
            await self._release.wait()
            return web.Response(status=503)
        if answer == "gone":
            return web.Response(status=410)
        if isinstance(answer, tuple):
            status, retry_after = answer
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return web.Response(status=status, headers=headers)
        await self.deliveries.put(Delivery(name, {}, ttl, request.headers.get("Urgency"),
                                           request.headers.get("Topic"), arrived, body))
        return web.Response(status=201)

    def _check_vapid(self, header: str) -> str | None:
        """RFC 8292: `vapid t=<JWT>, k=<public key>`; an ES256 JWT for our origin, unexpired
        and at most 24 hours long, from the key the server published."""
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            return f"Authorization is not vapid: {header[:40]!r}"
        parts = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        token, key = parts.get("t", ""), parts.get("k", "")
        if self.server_key is not None and key != self.server_key:
            return "k is not the application server's key"
        if (token, key) in self._verified and time.time() < self._verified[(token, key)]:
            return None  # checked already: the server signs one JWT per push service for hours
        try:
            head, claims, signature = token.split(".")
            header_json = json.loads(unb64url(head))
            claims_json = json.loads(unb64url(claims))
            raw = unb64url(signature)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                          f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature) as exc:
            return f"bad JWT: {exc!r}"
        if header_json.get("alg") != "ES256":
            return "JWT alg is not ES256"
        if claims_json.get("aud") != self.url:
            return f"JWT aud {claims_json.get('aud')!r} is not {self.url!r}"
        exp = claims_json.get("exp", 0)
        if not time.time() < exp <= time.time() + 86400:
            return "JWT exp is not within the next 24 hours"
        if not str(claims_json.get("sub", "")).startswith(("mailto:", "https://")):
            return "JWT sub is not a mailto: or https: contact"
        self._verified[(token, key)] = exp
        return None

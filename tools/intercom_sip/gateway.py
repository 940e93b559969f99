"""The gateway composed: one SIP stack with its account, one device per configured phone,
the router for calls from phones to the door, and a small HTTP side (status, and the
visitor's picture for handsets that show a JPEG URL while they ring)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .config import SipConfig
from .engine import BUSY, FORBIDDEN, Engine, Leg, Registration
from .phone import Phone

log = logging.getLogger("intercom.sip")

Reporter = Callable[[str, dict[str, Any]], None]
_URI = re.compile(r"sips?:(?:([^@;>]+)@)?([^;>:]+)")


def identity(uri: str) -> tuple[str, str]:
    """(user, host) of a SIP address as it arrives (`"Anna" <sip:611@fritz.box:5060>;tag=x`)."""
    match = _URI.search(uri)
    return (match.group(1) or "", match.group(2)) if match else ("", "")


def allowed(caller: str, entries: tuple[str, ...]) -> bool:
    """`611` names the user part; `sip:611@fritz.box` the user at that host. The identity is
    the one the registrar vouches for: keep the gateway's SIP port reachable only from it."""
    user, host = identity(caller)
    for entry in entries:
        if entry.startswith(("sip:", "sips:")):
            if identity(entry) == (user, host):
                return True
        elif entry == user:
            return True
    return False


class Gateway:
    def __init__(self, config: SipConfig, engine: Engine, report: Reporter) -> None:
        self.config = config
        self.engine = engine
        self._report = report
        self.registration = Registration("unregistered")
        self.phones = [Phone(p, config.gateway, engine, self.report, self._keep_snapshot) for p in config.phones]
        self.snapshot: tuple[float, bytes] | None = None
        self._runner: web.AppRunner | None = None
        self.http_port = 0

    def report(self, event: str, body: dict[str, Any]) -> None:
        self._report(event, body)

    async def start(self) -> None:
        await self.engine.start(self._registration, self._incoming)
        for phone in self.phones:
            phone.start()
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/snapshot.jpg", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.config.http_listen
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        self.report("started", {"http": f"{host}:{self.http_port}", "phones": [p.settings.device_id for p in self.phones]})

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.phones), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.close()

    def status(self) -> dict[str, Any]:
        r = self.registration
        return {"registration": {"state": r.state, "detail": r.detail, "status": r.status},
                "phones": [p.status() for p in self.phones]}

    # -- the SIP side -------------------------------------------------------------------------

    def _registration(self, registration: Registration) -> None:
        self.registration = registration
        if registration.state == "failed":
            log.error("SIP registration failed: %s", registration.detail)
        elif registration.state == "registered":
            log.info("registered to %s as %s", self.config.account.domain, self.config.account.user)
        self.report("registration", {"state": registration.state, "detail": registration.detail})
        for phone in self.phones:
            phone.registration(registration)

    def _incoming(self, leg: Leg) -> None:
        """A phone calls the gateway: an allowed caller looks at the door; anyone else is refused."""
        phone = next((p for p in self.phones if allowed(leg.peer, p.settings.callers)), None)
        if phone is None:
            log.warning("refused a SIP call from %s: not a configured caller", leg.peer)
            self.report("refused", {"from": leg.peer})
            asyncio.get_running_loop().create_task(leg.reject(FORBIDDEN))
            return
        if not phone.look_outside(leg):
            self.report("busy", {"from": leg.peer, "device_id": phone.settings.device_id})
            asyncio.get_running_loop().create_task(leg.reject(BUSY))
            return
        self.report("looking_outside", {"from": leg.peer, "device_id": phone.settings.device_id})

    # -- the HTTP side ------------------------------------------------------------------------

    def _keep_snapshot(self, jpeg: bytes) -> None:
        self.snapshot = (time.monotonic(), jpeg)

    async def _status(self, request: web.Request) -> web.Response:
        """For `intercom-sip status` on this machine only: with `http.listen` opened to the LAN
        for the handsets' picture, the residents and calls stay off it."""
        if request.remote not in ("127.0.0.1", "::1"):
            raise web.HTTPForbidden(text="status is for this machine only\n")
        return web.json_response(self.status(), dumps=lambda o: json.dumps(o, indent=2))

    async def _snapshot(self, request: web.Request) -> web.Response:
        """The current visitor for a FritzFon, which polls a plain URL: the key in the URL is
        the lock (`http.snapshot_key`), compared in constant time; without a key, no picture."""
        key = self.config.snapshot_key
        given = request.query.get("key", "")
        if key is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise web.HTTPForbidden(text="a valid ?key= is needed\n")
        if self.snapshot is None:
            raise web.HTTPNotFound(text="no visitor yet\n")
        return web.Response(body=self.snapshot[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"})

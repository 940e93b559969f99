"""The door's HTTP side for NVRs: ONVIF's two services and `/snapshot.jpg`.

Thin: `onvif.Onvif` and `httpauth.HttpAuth` decide everything; this module only moves bytes.
Snapshots are shared for a second, so that a FritzBox polling every two seconds and an NVR
polling every second cost one decoded keyframe between them, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .httpauth import HttpAuth
from .onvif import Onvif

log = logging.getLogger("intercom.onvif")

SNAPSHOT_REUSE_S = 1.0
MAX_SOAP_BYTES = 64 * 1024


class NvrHttp:
    def __init__(self, listen: str, port: int, onvif: Onvif, auth: HttpAuth,
                 snapshot: Callable[[], Awaitable[bytes | None]]) -> None:
        self.listen, self.port = listen, port
        self._onvif = onvif
        self._auth = auth
        self._snapshot = snapshot
        self._jpeg: tuple[float, bytes] | None = None
        self._taking: asyncio.Task[bytes | None] | None = None
        self._runner: web.AppRunner | None = None
        self.snapshots = 0

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_SOAP_BYTES)
        app.router.add_post("/onvif/device_service", self._soap)
        app.router.add_post("/onvif/media_service", self._soap)
        app.router.add_get("/snapshot.jpg", self._snapshot_jpg)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.listen, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"rtsp.onvif_port {self.port} on {self.listen} is taken by another program "
                          f"({exc.strerror}): choose another port, or 0 for no ONVIF") from None
        log.info("ONVIF at http://%s:%d/onvif/device_service, snapshots at /snapshot.jpg", self.listen, self.port)

    async def _soap(self, request: web.Request) -> web.Response:
        body = await request.read()
        service = "media" if request.path.endswith("/media_service") else "device"
        status, reply = self._onvif.handle(body, request.host, service)
        return web.Response(status=status, body=reply, content_type="application/soap+xml", charset="utf-8")

    async def _snapshot_jpg(self, request: web.Request) -> web.Response:
        if self._auth.check(request.method, request.path_qs, request.headers.get("Authorization")) is None:
            response = web.Response(status=401, text="the door's snapshot needs an account of rtsp.accounts_file\n")
            for challenge in self._auth.challenges():
                response.headers.add("WWW-Authenticate", challenge)
            return response
        jpeg = await self._current_jpeg()
        if jpeg is None:
            return web.Response(status=503, text="the camera gave no picture\n")
        self.snapshots += 1
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _current_jpeg(self) -> bytes | None:
        if self._jpeg is not None and time.monotonic() - self._jpeg[0] < SNAPSHOT_REUSE_S:
            return self._jpeg[1]
        if self._taking is None:
            self._taking = asyncio.ensure_future(self._snapshot())
        taking = self._taking
        try:
            jpeg = await asyncio.shield(taking)
        finally:
            if self._taking is taking and taking.done():
                self._taking = None
        if jpeg is not None:
            self._jpeg = (time.monotonic(), jpeg)
        return jpeg

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

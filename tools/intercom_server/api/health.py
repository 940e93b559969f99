"""/healthz for a load balancer and a monitor, and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..openapi import OPENAPI
from .common import (
    DATABASE,
    HUB,
    MQTT,
    STORE,
    WEBHOOKS,
    is_api_token,
    why_unready,
)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def _health(request: web.Request) -> web.Response:
    """For a load balancer or a monitor: up or not. Counts of devices and calls say when a
    household is home, so only the Api-Token sees them."""
    given = request.headers.get("Api-Token")
    database = request.app[DATABASE]
    unready = why_unready(request.app)
    status = 503 if unready else 200
    if given is None or not is_api_token(request, given):
        return web.json_response({"ok": not unready}, status=status)
    hub = request.app[HUB]
    await request.app[STORE].flushed()  # the writes queued until now have told of their failures
    try:
        live_calls: int | None = await asyncio.wait_for(hub.service.live_count(), 2.0)
    except Exception:  # noqa: BLE001 - Redis away: said below
        live_calls = None
    push = hub.push.stats
    return web.json_response({"ok": not unready, "database": {"ok": database.ok, "error": database.error},
                              **hub.state.health()[1], "draining": hub.draining,
                              "connected_devices": len(hub.endpoints), "live_calls": live_calls,
                              "bridges": hub.endpoints.bridges(),
                              "store_errors": hub.background.store_errors,
                              "last_store_error": hub.background.last_store_error,
                              "push": {"subscriptions": hub.push.count(), "sent": push.sent, "failed": push.failed,
                                       "retried": push.retried, "pruned": push.pruned, "expired": push.expired,
                                       "pending": hub.push.pending(), "last_error": push.last_error},
                              "webhooks": request.app[WEBHOOKS].counts(),
                              **({"mqtt": request.app[MQTT].status.as_json()} if MQTT in request.app else {})},
                             status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_get("/healthz", _health)

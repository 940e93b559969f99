"""A site's webhooks, over the Platform API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..webhooks import check_events, check_url
from .common import (
    STORE,
    WEBHOOKS,
    api,
    flag,
    read_body,
)


async def _post_webhook(request: web.Request) -> Any:
    """The secret is in this answer only; it signs every delivery."""
    body = await read_body(request, ("url", "events"), ("allow_http",))
    allow_http = flag(body, "allow_http", False)
    hook = await request.app[STORE].webhooks.add_webhook(request.match_info["site_id"], check_url(body["url"], allow_http),
                                          check_events(body["events"]), allow_http)
    await request.app[WEBHOOKS].reload()
    return hook


async def _get_webhooks(request: web.Request) -> Any:
    return {"webhooks": await request.app[STORE].webhooks.list_webhooks(request.match_info["site_id"])}


async def _get_webhook(request: web.Request) -> Any:
    return await request.app[STORE].webhooks.get_webhook(request.match_info["site_id"], request.match_info["webhook_id"])


async def _patch_webhook(request: web.Request) -> Any:
    """Change where or what is sent, or switch a receiver off or on again."""
    body = await read_body(request, (), ("url", "events", "allow_http", "enabled"))
    store, site_id, webhook_id = request.app[STORE], request.match_info["site_id"], request.match_info["webhook_id"]
    current = await store.webhooks.get_webhook(site_id, webhook_id)
    allow_http = flag(body, "allow_http", current["allow_http"])
    changes: dict[str, Any] = {"allow_http": allow_http}
    if "url" in body or "allow_http" in body:
        changes["url"] = check_url(body.get("url", current["url"]), allow_http)
    if "events" in body:
        changes["events"] = check_events(body["events"])
    if "enabled" in body:
        changes["enabled"] = flag(body, "enabled", True)
    hook = await store.webhooks.update_webhook(site_id, webhook_id, changes)
    await request.app[WEBHOOKS].reload()
    return hook


async def _delete_webhook(request: web.Request) -> Any:
    await request.app[STORE].webhooks.delete_webhook(request.match_info["site_id"], request.match_info["webhook_id"])
    await request.app[WEBHOOKS].reload()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/sites/{site_id}/webhooks", api(_post_webhook))
    app.router.add_get("/v1/sites/{site_id}/webhooks", api(_get_webhooks))
    app.router.add_get("/v1/sites/{site_id}/webhooks/{webhook_id}", api(_get_webhook))
    app.router.add_patch("/v1/sites/{site_id}/webhooks/{webhook_id}", api(_patch_webhook))
    app.router.add_delete("/v1/sites/{site_id}/webhooks/{webhook_id}", api(_delete_webhook))

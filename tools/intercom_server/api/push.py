"""Web Push: the server's public key and each device's subscription."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from intercom_protocol.calls import DeviceRef

from ..records import NotFound, StoreError, check_id
from .common import (
    HUB,
    STORE,
    VIEWER,
    VIEWER_TOKEN,
    api,
)


async def _push_key(request: web.Request) -> web.Response:
    """The VAPID public key, which the browser needs to subscribe; public by nature."""
    return web.json_response({"public_key": request.app[HUB].push.public_key})


def _my_device(request: web.Request) -> DeviceRef:
    return DeviceRef(request[VIEWER], check_id("device_id", request.match_info["device_id"]))


async def _get_push(request: web.Request) -> Any:
    """This user's subscribed devices; a push service's endpoint is never shown in full."""
    return {"subscriptions": [s.as_json() for s in request.app[HUB].push.of_user(request[VIEWER])]}


async def _put_push(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise StoreError("body must be the JSON of a push subscription") from None
    device = _my_device(request)
    store, token = request.app[STORE], request[VIEWER_TOKEN]
    sub = await request.app[HUB].push.subscribe(await store.users.get_user(device.user_id), device.device_id, token.token_id,
                                          token.expires_at, body)
    return web.json_response(sub.as_json(), status=200)


async def _delete_push(request: web.Request) -> web.Response:
    await request.app[HUB].push.unsubscribe(_my_device(request))
    return web.Response(status=204)


async def _test_push(request: web.Request) -> web.Response:
    device = _my_device(request)
    push = request.app[HUB].push
    sub = push.of_device(device)
    if sub is None:
        raise NotFound(f"device '{device.device_id}' does not ring when its app is closed; switch that on first")
    push.test(sub)
    return web.json_response({"sent_to": sub.service}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/push/public_key", _push_key)
    app.router.add_get("/v1/me/push", api(_get_push, parties=True, bearer_only=True))
    app.router.add_put("/v1/me/devices/{device_id}/push", api(_put_push, parties=True, bearer_only=True))
    app.router.add_delete("/v1/me/devices/{device_id}/push", api(_delete_push, parties=True, bearer_only=True))
    app.router.add_post("/v1/me/devices/{device_id}/push/test", api(_test_push, parties=True, bearer_only=True))

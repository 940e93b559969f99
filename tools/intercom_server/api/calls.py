"""Calls: the history, one call, its picture, a decline from a notification, and the visitor's message."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from intercom_protocol.calls import CallError, DeviceRef

from ..records import Forbidden, NotFound, StoreError, UserKind, check_id
from ..visitor_messages import TooLarge
from .common import (
    HTTP_STATUS,
    HUB,
    MESSAGES,
    STORE,
    VIEWER,
    api,
    cursor_in,
    cursor_out,
    error,
    page_limit,
    read_body,
)

log = logging.getLogger("intercom.server")


async def _put_message(request: web.Request) -> web.Response:
    """The door's recording for a call nobody answered."""
    store, call_id = request.app[STORE], request.match_info["call_id"]
    record = await store.calls.find_call(call_id)
    door = await store.users.get_user(request[VIEWER])
    if record is None or record.caller.user_id != door.user_id or door.kind != UserKind.DOOR:
        raise NotFound(f"no call '{call_id}' of this door")
    if record.accepted_by is not None:
        raise StoreError("the call was answered: there is no message to leave")
    if await store.calls.has_message(call_id):
        return error(409, "conflict", "this call already has its message")
    box = request.app[MESSAGES]
    limit = box.settings.max_bytes
    if request.content_length is not None and request.content_length > limit:
        return error(413, "too_large", f"a message is at most {limit // (1024 * 1024)} MiB")
    try:
        size = await box.save(call_id, request.content)
    except TooLarge:
        return error(413, "too_large", f"a message is at most {limit // (1024 * 1024)} MiB")
    log.info("a visitor's message for %s from %s: %d bytes", call_id, request[VIEWER], size)
    hub = request.app[HUB]
    live = await hub.service.find_call(call_id)
    wake = list(live.rung_callees) if live is not None else list(record.callees)
    hub.push.message(call_id, door.caller_json(),
                     live.created_at if live else time.time(), wake, time.time())
    hub.background.spawn(box.sweep())
    return web.json_response({"call_id": call_id, "bytes": size}, status=201)


async def _message_call(request: web.Request) -> str:
    """The call, if this caller may hear its message: the operator, or a resident of the call."""
    call_id = await _visible_call(request)
    viewer = request.get(VIEWER)
    if viewer is not None and (await request.app[STORE].users.get_user(viewer)).kind != UserKind.RESIDENT:
        raise NotFound(f"no call '{call_id}'")
    if not await request.app[STORE].calls.has_message(call_id):
        raise NotFound(f"call '{call_id}' has no message")
    return call_id


async def _get_message(request: web.Request) -> web.StreamResponse:
    """The MP4, with range requests (a phone's player seeks)."""
    path = request.app[MESSAGES].path(await _message_call(request))
    if not path.is_file():
        raise NotFound("the message's file is gone")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4", "Cache-Control": "private, no-store"})


async def _delete_message(request: web.Request) -> web.Response:
    call_id = await _message_call(request)
    await request.app[MESSAGES].delete(call_id)
    log.info("%s deleted the visitor's message of %s", request[VIEWER], call_id)
    return web.Response(status=204)


async def _decline(request: web.Request) -> web.Response:
    """Decline from the notification, without opening the app."""
    body = await read_body(request, ("device_id",))
    device = DeviceRef(request[VIEWER], check_id("device_id", body["device_id"]))
    try:
        await request.app[HUB].calls.decline_from(device, request.match_info["call_id"])
    except CallError as exc:
        return error(HTTP_STATUS.get(exc.code, 400), str(exc.code), exc.message)
    return web.Response(status=204)


async def _visible_call(request: web.Request) -> str:
    """The call named in the path, if this caller may see it; a non-party gets 404 as if the
    call did not exist, so call ids cannot be probed."""
    call_id = request.match_info["call_id"]
    viewer = request.get(VIEWER)
    if viewer is not None and viewer not in await request.app[STORE].calls.call_parties(call_id):
        raise NotFound(f"no call '{call_id}'")
    return call_id


async def _get_calls(request: web.Request) -> Any:
    query = request.query
    limit = page_limit(request)
    user_id = query.get("user_id")
    viewer = request.get(VIEWER)
    if viewer is not None:
        if user_id not in (None, viewer):
            raise Forbidden("with an access token you see only your own calls")
        user_id = viewer
    if user_id is not None:
        await request.app[STORE].users.get_user(user_id)
    before = cursor_in(query["next"]) if query.get("next") else None
    rows = await request.app[STORE].calls.list_calls(user_id, limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    return {"calls": page, "next": cursor_out((page[-1].created_at, page[-1].call_id)) if more else None}


async def _get_call(request: web.Request) -> Any:
    return await request.app[STORE].calls.get_call(await _visible_call(request))


async def _get_snapshot(request: web.Request) -> Any:
    data = await request.app[STORE].calls.snapshot(await _visible_call(request))
    return web.Response(body=data, content_type="image/jpeg")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/direct_calls", api(_get_calls, parties=True))
    app.router.add_get("/v1/direct_calls/{call_id}", api(_get_call, parties=True))
    app.router.add_get("/v1/direct_calls/{call_id}/snapshot", api(_get_snapshot, parties=True))
    app.router.add_post("/v1/direct_calls/{call_id}/decline", api(_decline, parties=True, bearer_only=True))
    app.router.add_put("/v1/direct_calls/{call_id}/message", api(_put_message, parties=True, bearer_only=True))
    app.router.add_get("/v1/direct_calls/{call_id}/message", api(_get_message, parties=True))
    app.router.add_delete("/v1/direct_calls/{call_id}/message", api(_delete_message, parties=True, bearer_only=True))

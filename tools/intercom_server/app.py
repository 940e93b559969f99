"""The server's HTTP face: the WebSocket at /v1/ws and the Platform REST API under /v1."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from intercom.core import messages as m
from intercom.core.messages import CLOSE_UNAUTHENTICATED, PROTOCOL_PATH

from .hub import Connection, Hub, HubSettings
from .store import Store, StoreError

log = logging.getLogger("intercom.server")

HUB = web.AppKey("hub", Hub)
STORE = web.AppKey("store", Store)
API_TOKEN = web.AppKey("api_token", str)
#: Larger frames than the protocol allows are still read, so they get a `too_large` reply;
#: only absurd ones make aiohttp drop the connection.
_WS_READ_LIMIT = 4 * 1024 * 1024


def create_app(store: Store, settings: HubSettings, api_token: str) -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app[STORE] = store
    app[HUB] = Hub(store, settings)
    app[API_TOKEN] = api_token
    app.router.add_get(PROTOCOL_PATH, _websocket)
    app.router.add_post("/v1/sites", _api(_post_site))
    app.router.add_get("/v1/sites/{site_id}", _api(_get_site))
    app.router.add_post("/v1/users", _api(_post_user))
    app.router.add_get("/v1/users/{user_id}", _api(_get_user))
    app.router.add_post("/v1/users/{user_id}/tokens", _api(_post_token))
    app.router.add_get("/v1/users/{user_id}/tokens", _api(_get_tokens))
    app.router.add_delete("/v1/users/{user_id}/tokens/{token_id}", _api(_delete_token))
    app.router.add_get("/v1/direct_calls", _api(_get_calls))
    app.router.add_get("/v1/direct_calls/{call_id}", _api(_get_call))
    app.router.add_get("/v1/direct_calls/{call_id}/snapshot", _api(_get_snapshot))
    app.router.add_get("/healthz", _health)

    async def on_shutdown(app: web.Application) -> None:
        await app[HUB].shutdown()

    app.on_shutdown.append(on_shutdown)
    return app


# -- WebSocket -------------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    ws = web.WebSocketResponse(heartbeat=hub.settings.heartbeat_s, max_msg_size=_WS_READ_LIMIT)
    await ws.prepare(request)
    conn = Connection(ws.send_str, lambda code, reason: ws.close(code=code, message=reason.encode()),
                      request.remote or "?")

    async def require_auth() -> None:
        """Does nothing once the connection has authenticated."""
        await asyncio.sleep(hub.settings.auth_timeout_s)
        if conn.user is None:
            await conn.close(CLOSE_UNAUTHENTICATED, "authenticate first")

    deadline = asyncio.get_running_loop().create_task(require_auth())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if not await hub.handle_text(conn, msg.data):
                    break
            elif msg.type == WSMsgType.BINARY:
                conn.send(m.error(None, m.ErrorCode.BAD_REQUEST, "frames must be JSON text, not binary"))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        deadline.cancel()
        hub.disconnected(conn)
        await conn.close(1000, "bye")  # ends the writer; closing a closed socket is a no-op
    return ws


# -- Platform REST API -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[Any]]


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Guard a Platform API handler with the Api-Token header; serialise its result."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Api-Token", "")
        if not hmac.compare_digest(given.encode(), request.app[API_TOKEN].encode()):
            return _error(401, "unauthenticated", "missing or wrong Api-Token header")
        result = await handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=201 if request.method == "POST" else 200)

    return guarded


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        return _error(exc.status, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
        raise


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise StoreError("body must be a JSON object") from None
    if not isinstance(data, dict):
        raise StoreError("body must be a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise StoreError(f"missing fields: {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise StoreError(f"unknown fields: {', '.join(unknown)}")
    return data


async def _post_site(request: web.Request) -> Any:
    body = await _body(request, ("site_id", "name"))
    return request.app[STORE].add_site(body["site_id"], body["name"])


async def _get_site(request: web.Request) -> Any:
    return request.app[STORE].get_site(request.match_info["site_id"])


async def _post_user(request: web.Request) -> Any:
    body = await _body(request, ("user_id", "kind", "site_id", "display_name"))
    return request.app[STORE].add_user(body["user_id"], body["kind"], body["site_id"], body["display_name"])


async def _get_user(request: web.Request) -> Any:
    return request.app[STORE].get_user(request.match_info["user_id"])


async def _post_token(request: web.Request) -> Any:
    body = await _body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    return request.app[STORE].issue_token(request.match_info["user_id"], body.get("expires_in_s"))


async def _get_tokens(request: web.Request) -> Any:
    return {"tokens": request.app[STORE].list_tokens(request.match_info["user_id"])}


async def _delete_token(request: web.Request) -> Any:
    request.app[STORE].revoke_token(request.match_info["user_id"], request.match_info["token_id"])
    return web.Response(status=204)


def _cursor_out(cursor: tuple[float, str]) -> str:
    return f"{cursor[0]!r}:{cursor[1]}"


def _cursor_in(text: str) -> tuple[float, str]:
    ts, _, call_id = text.partition(":")
    try:
        return float(ts), call_id
    except ValueError:
        raise StoreError("next is not a cursor this server gave") from None


async def _get_calls(request: web.Request) -> Any:
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise StoreError("limit must be a whole number") from None
    if not 1 <= limit <= 100:
        raise StoreError("limit must be between 1 and 100")
    user_id = query.get("user_id")
    if user_id is not None:
        request.app[STORE].get_user(user_id)
    before = _cursor_in(query["next"]) if query.get("next") else None
    rows = request.app[STORE].list_calls(user_id, limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    cursors = [row.pop("_cursor") for row in page]
    return {"calls": page, "next": _cursor_out(cursors[-1]) if more else None}


async def _get_call(request: web.Request) -> Any:
    return request.app[STORE].get_call(request.match_info["call_id"])


async def _get_snapshot(request: web.Request) -> Any:
    data = request.app[STORE].snapshot(request.match_info["call_id"])
    return web.Response(body=data, content_type="image/jpeg")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "connected_devices": len(request.app[HUB].devices),
                              "live_calls": len(request.app[HUB].calls)})

"""The WebSocket at /v1/ws: each frame to the hub, the sign-in deadline, the end of the connection."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from intercom_protocol import messages as m
from intercom_protocol.messages import CLOSE_UNAUTHENTICATED, PROTOCOL_PATH

from .common import (
    HUB,
    PUBLIC_URL,
    client_address,
    error,
    origin_allowed,
    why_unready,
)

log = logging.getLogger("intercom.server")


#: Larger frames than the protocol allows are still read, so they get a `too_large` reply;
#: only absurd ones make aiohttp drop the connection.
_WS_READ_LIMIT = 4 * 1024 * 1024


async def _websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    unready = why_unready(request.app)
    if unready:  # through a load balancer, the client's retry finds another process
        return error(503, "internal", f"this server {unready}; try again shortly")
    if not origin_allowed(request, request.app[PUBLIC_URL], hub.settings.allowed_origins):
        log.warning("refused a WebSocket from the page of another site (%s)", request.headers.get("Origin"))
        return error(403, "forbidden", "this server does not take WebSockets from pages of other sites")
    ws = web.WebSocketResponse(heartbeat=hub.settings.heartbeat_s, max_msg_size=_WS_READ_LIMIT)
    await ws.prepare(request)
    conn = hub.connection(ws.send_str, lambda code, reason: ws.close(code=code, message=reason.encode()),
                          client_address(request, hub.settings.trusted_proxies))

    closing: set[asyncio.Task[None]] = set()  # a task the loop only weakly refers to must be held

    def require_auth() -> None:
        if conn.user is None and not conn.closed:
            task = loop.create_task(conn.close(CLOSE_UNAUTHENTICATED, "authenticate first"))
            closing.add(task)
            task.add_done_callback(closing.discard)

    # A timer, not a sleeping task: it is all an idle connection keeps of its first 10 s.
    loop = asyncio.get_running_loop()
    deadline = loop.call_later(hub.settings.auth_timeout_s, require_auth)
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
        await hub.disconnected(conn)
        await conn.close(1000, "bye")  # ends the writer; closing a closed socket is a no-op
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get(PROTOCOL_PATH, _websocket)

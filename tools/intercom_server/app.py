"""The server's HTTP face: the WebSocket at /v1/ws and the Platform REST API under /v1."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from intercom_protocol import messages as m
from intercom_protocol.calls import CallError, DeviceRef
from intercom_protocol.messages import CLOSE_UNAUTHENTICATED, PROTOCOL_PATH, ErrorCode

from .availability import RuleError, parse_resident, parse_site
from .cluster import ClusterSettings
from .database import DatabaseError
from .hub import Hub, HubSettings
from .mqtt import MqttBridge
from .openapi import AUDIT_CURSOR, CALLS_CURSOR, OPENAPI
from .store import Bearer, Forbidden, NotFound, Store, StoreError, Unauthenticated, check_id
from .visitor_messages import MessageBox, TooLarge
from .webapp import add_webapp_routes
from .webhooks import Webhooks, check_events, check_url

log = logging.getLogger("intercom.server")

HUB = web.AppKey("hub", Hub)
STORE = web.AppKey("store", Store)
API_TOKEN = web.AppKey("api_token", str)
#: Where residents reach the server (config `public_url`), for invite links; by default the
#: address the request came to.
PUBLIC_URL = web.AppKey("public_url", str)
MQTT = web.AppKey("mqtt", MqttBridge)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
MESSAGES = web.AppKey("messages", MessageBox)
#: Larger frames than the protocol allows are still read, so they get a `too_large` reply;
#: only absurd ones make aiohttp drop the connection.
_WS_READ_LIMIT = 4 * 1024 * 1024


def create_app(store: Store, settings: HubSettings, api_token: str, public_url: str = "",
               cluster: ClusterSettings | None = None) -> web.Application:
    """With `cluster`, this process is one of several sharing the store and a Redis."""
    if cluster is not None and settings.mqtt is not None:
        raise ValueError("the MQTT bridge runs on a single server, not in a cluster")
    app = web.Application(middlewares=[_json_errors])
    app[STORE] = store
    app[HUB] = Hub(store, settings, cluster)
    app[API_TOKEN] = api_token
    app[PUBLIC_URL] = public_url
    app.router.add_get(PROTOCOL_PATH, _websocket)
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_post("/v1/sites", _api(_post_site))
    app.router.add_get("/v1/sites", _api(_get_sites))
    app.router.add_get("/v1/sites/{site_id}", _api(_get_site))
    app.router.add_get("/v1/sites/{site_id}/users", _api(_get_site_users))
    app.router.add_get("/v1/sites/{site_id}/audit", _api(_get_audit, parties=True))
    app.router.add_post("/v1/users", _api(_post_user))
    app.router.add_get("/v1/users/{user_id}", _api(_get_user))
    app.router.add_post("/v1/users/{user_id}/tokens", _api(_post_token))
    app.router.add_get("/v1/users/{user_id}/tokens", _api(_get_tokens))
    app.router.add_delete("/v1/users/{user_id}/tokens/{token_id}", _api(_delete_token))
    app.router.add_post("/v1/users/{user_id}/invites", _api(_post_invite))
    app.router.add_get("/v1/users/{user_id}/invites", _api(_get_invites))
    app.router.add_post("/v1/invites/redeem", _redeem_invite)
    app.router.add_post("/v1/users/{user_id}/pairings", _api(_post_pairing))
    app.router.add_post("/v1/pairings/redeem", _redeem_pairing)
    app.router.add_get("/v1/me", _api(_get_me, parties=True, bearer_only=True))
    app.router.add_delete("/v1/me/token", _api(_sign_out, parties=True, bearer_only=True))
    app.router.add_get("/v1/direct_calls", _api(_get_calls, parties=True))
    app.router.add_get("/v1/direct_calls/{call_id}", _api(_get_call, parties=True))
    app.router.add_get("/v1/direct_calls/{call_id}/snapshot", _api(_get_snapshot, parties=True))
    app.router.add_post("/v1/direct_calls/{call_id}/decline", _api(_decline, parties=True, bearer_only=True))
    app.router.add_get("/v1/push/public_key", _push_key)
    app.router.add_get("/v1/me/push", _api(_get_push, parties=True, bearer_only=True))
    app.router.add_put("/v1/me/devices/{device_id}/push", _api(_put_push, parties=True, bearer_only=True))
    app.router.add_delete("/v1/me/devices/{device_id}/push", _api(_delete_push, parties=True, bearer_only=True))
    app.router.add_post("/v1/me/devices/{device_id}/push/test", _api(_test_push, parties=True, bearer_only=True))
    app.router.add_get("/healthz", _health)
    add_webapp_routes(app)
    app[DATABASE] = DatabaseHealth()
    app.cleanup_ctx.append(_load_hub)
    app.cleanup_ctx.append(_watch_database)
    app.cleanup_ctx.append(_watch_revocations)
    if cluster is not None:
        app.cleanup_ctx.append(_close_lost_calls)
    app.router.add_get("/v1/me/availability", _api(_get_my_availability, parties=True, bearer_only=True))
    app.router.add_put("/v1/me/availability", _api(_put_my_availability, parties=True, bearer_only=True))
    app.router.add_get("/v1/users/{user_id}/availability", _api(_get_availability))
    app.router.add_put("/v1/users/{user_id}/availability", _api(_put_availability))
    app.router.add_get("/v1/sites/{site_id}/availability", _api(_get_site_availability, parties=True))
    app.router.add_put("/v1/sites/{site_id}/availability", _api(_put_site_availability, parties=True))
    app.router.add_put("/v1/direct_calls/{call_id}/message", _api(_put_message, parties=True, bearer_only=True))
    app.router.add_get("/v1/direct_calls/{call_id}/message", _api(_get_message, parties=True))
    app.router.add_delete("/v1/direct_calls/{call_id}/message", _api(_delete_message, parties=True, bearer_only=True))
    messages = settings.messages.directory or (Path(store.path).parent / "messages" if store.path else None)
    if messages is None:
        raise ValueError("messages.directory must be set when the database is not an SQLite file")
    app[MESSAGES] = MessageBox(messages, store, settings.messages)
    app.cleanup_ctx.append(_sweep_messages)
    app[WEBHOOKS] = Webhooks(store, settings.webhooks)
    app[HUB].events.listen(app[WEBHOOKS].on_event)
    app.cleanup_ctx.append(_run_webhooks)
    app.router.add_post("/v1/sites/{site_id}/webhooks", _api(_post_webhook))
    app.router.add_get("/v1/sites/{site_id}/webhooks", _api(_get_webhooks))
    app.router.add_get("/v1/sites/{site_id}/webhooks/{webhook_id}", _api(_get_webhook))
    app.router.add_patch("/v1/sites/{site_id}/webhooks/{webhook_id}", _api(_patch_webhook))
    app.router.add_delete("/v1/sites/{site_id}/webhooks/{webhook_id}", _api(_delete_webhook))
    if settings.mqtt is not None:
        app[MQTT] = MqttBridge(app[HUB], settings.mqtt)
        app.cleanup_ctx.append(_run_mqtt)

    async def on_shutdown(app: web.Application) -> None:
        await app[HUB].shutdown()

    app.on_shutdown.append(on_shutdown)
    return app


async def _load_hub(app: web.Application) -> AsyncIterator[None]:
    """What the hub keeps in memory so that a press reads nothing: the availability rules and
    the push subscriptions."""
    await app[HUB].start()
    yield
    await app[HUB].close()


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background loop for as long as the app runs (a cleanup context's body)."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class DatabaseHealth:
    """Whether the database answers, as the last check found: a load balancer reads it from
    /healthz, and a new connection is refused while it does not (its sign-in would fail)."""
    ok: bool = True
    error: str | None = None


DATABASE = web.AppKey("database", DatabaseHealth)


async def _watch_database(app: web.Application) -> AsyncIterator[None]:
    """Ask the database every `health_check_s`; when it stops answering, say so (/healthz 503,
    new connections refused), and when it answers again, take connections again: nobody
    restarts the server. Live calls go on meanwhile; their records fail and are counted."""
    store, health, every = app[STORE], app[DATABASE], app[HUB].settings.health_check_s

    async def watch() -> None:
        while True:
            try:
                await asyncio.wait_for(store.ping(), max(1.0, every))
            except (DatabaseError, OSError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                if health.ok:
                    log.error("the database does not answer (%s): refusing new connections until it does", error)
                health.ok, health.error = False, error
            else:
                if not health.ok:
                    log.warning("the database answers again: taking connections")
                health.ok, health.error = True, None
            await asyncio.sleep(every)

    async with _running(watch(), "database-health"):
        yield


async def _close_lost_calls(app: web.Application) -> AsyncIterator[None]:
    """In a cluster no process closes the calls of the last stop at start (the others' are
    live): a call still open in the database past the longest a call can last lost its state
    (Redis restarted without persistence) and is closed `unknown`, by whichever process looks."""
    store, settings = app[STORE], app[HUB].settings

    async def sweep() -> None:
        while True:
            try:
                closed = await store.close_interrupted_calls(time.time() - settings.max_duration_s - 300)
                if closed:
                    log.warning("%d call(s) lost their state (Redis restarted empty?): recorded as ended 'unknown'",
                                closed)
            except Exception:  # tried again at the next round
                log.exception("closing lost calls")
            await asyncio.sleep(60)

    async with _running(sweep(), "lost-calls"):
        yield


async def _watch_revocations(app: web.Application) -> AsyncIterator[None]:
    """A token revoked from a shell (`intercom-server token revoke`, another process) ends its
    live sessions within a second: SQLite's data_version says when another connection wrote,
    so an idle server reads nothing else."""
    hub, store = app[HUB], app[STORE]

    async def watch() -> None:
        seen = await store.changed_elsewhere()
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            try:
                version = await store.changed_elsewhere()
                if version != seen:
                    seen = version
                    await hub.revoked()
                    await hub.rules.reload()
            except Exception:  # a failed check is tried again, the server goes on
                log.exception("checking for revoked tokens")

    async with _running(watch(), "revocations"):
        yield


async def _sweep_messages(app: web.Application) -> AsyncIterator[None]:
    """The retention policy, at start and every `sweep_every_s` (and after each upload)."""
    box = app[MESSAGES]

    async def sweep() -> None:
        while True:
            try:
                await box.sweep()
            except Exception:  # tried again at the next round
                log.exception("sweeping visitor messages")
            await asyncio.sleep(box.settings.sweep_every_s)

    async with _running(sweep(), "message-retention"):
        yield


async def _run_webhooks(app: web.Application) -> AsyncIterator[None]:
    await app[WEBHOOKS].start()
    yield
    await app[WEBHOOKS].close()


async def _run_mqtt(app: web.Application) -> AsyncIterator[None]:
    app[MQTT].start()
    yield
    await app[MQTT].close()


#: How often the server looks for tokens revoked by another process.
REVOCATION_CHECK_S = 1.0


def client_address(request: web.Request, trusted: tuple[str, ...]) -> str:
    """The address a request really came from: behind a trusted reverse proxy, the last
    address in X-Forwarded-For that is not itself a trusted proxy."""
    remote = request.remote or "?"
    if not trusted or not _in_networks(remote, trusted):
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            return hop
    return hops[0] if hops else remote


def _in_networks(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def origin_allowed(request: web.Request, public_url: str, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin with every WebSocket; a page of another site must not open one
    with the user's stored token or use it to throttle the door. Programs (the door, the
    command-line resident) send none and are let through: they hold their own tokens."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = urlsplit(origin).netloc.lower()
    own = {request.host.lower()}
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded and _in_networks(request.remote or "", request.app[HUB].settings.trusted_proxies):
        own.add(forwarded.split(",")[0].strip().lower())
    if public_url:
        own.add(urlsplit(public_url).netloc.lower())
    own.update(urlsplit(o).netloc.lower() for o in allowed)
    return host in own


# -- WebSocket -------------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    unready = _unready(request.app)
    if unready:  # through a load balancer, the client's retry finds another process
        return _error(503, "internal", f"this server {unready}; try again shortly")
    if not origin_allowed(request, request.app[PUBLIC_URL], hub.settings.allowed_origins):
        log.warning("refused a WebSocket from the page of another site (%s)", request.headers.get("Origin"))
        return _error(403, "forbidden", "this server does not take WebSockets from pages of other sites")
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


# -- Platform REST API -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[Any]]
#: Set on a request that a party (a resident or a door) made with its own access token; absent
#: when the master Api-Token was given. Such a caller sees only calls it was a party of.
VIEWER = web.RequestKey("viewer", str)
#: The access token itself, where a request needs more than whose it is (a push subscription
#: belongs to the token that made it, and goes when it is revoked).
VIEWER_TOKEN = web.RequestKey("viewer_token", Bearer)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


def _api(handler: Handler, parties: bool = False,
         bearer_only: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Guard a Platform API handler with the Api-Token header (or, where `parties` is set, a
    party's `Authorization: Bearer` access token too; with `bearer_only`, that alone);
    serialise its result."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        given = None if bearer_only else request.headers.get("Api-Token")
        bearer = _bearer(request)
        if bearer_only and not bearer:
            return _error(401, "unauthenticated", "this call needs an Authorization: Bearer access token")
        if given is not None:
            if not _is_api_token(request, given):
                return _error(401, "unauthenticated", "wrong Api-Token header")
        elif parties and bearer:
            owner = await request.app[STORE].token_owner(bearer)
            if owner is None:
                return _error(401, "unauthenticated", "unknown, expired or revoked access token")
            request[VIEWER] = owner.user_id
            request[VIEWER_TOKEN] = owner
        else:
            how = "an Api-Token header" + (" or an Authorization: Bearer access token" if parties else "")
            return _error(401, "unauthenticated", f"this call needs {how}")
        result = await handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=201 if request.method == "POST" else 200)

    return guarded


def _is_api_token(request: web.Request, given: str) -> bool:
    return hmac.compare_digest(given.encode(), request.app[API_TOKEN].encode())


#: The HTTP status of each refusal the store and the handlers name in the protocol's words.
HTTP_STATUS = {ErrorCode.BAD_REQUEST: 400, ErrorCode.UNAUTHENTICATED: 401, ErrorCode.FORBIDDEN: 403,
               ErrorCode.NOT_FOUND: 404, ErrorCode.CONFLICT: 409}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        return _error(HTTP_STATUS[exc.code], exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = _error(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:  # a JSON error, never aiohttp's plain-text page with a trace
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal", "internal error")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


async def _body(request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, RecursionError):
        raise StoreError("body must be a JSON object (valid UTF-8, nested at most a few hundred levels)") from None
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
    return await request.app[STORE].add_site(body["site_id"], body["name"])


async def _get_site(request: web.Request) -> Any:
    return await request.app[STORE].get_site(request.match_info["site_id"])


async def _get_sites(request: web.Request) -> Any:
    return {"sites": await request.app[STORE].list_sites()}


async def _get_site_users(request: web.Request) -> Any:
    return {"users": await request.app[STORE].list_users(request.match_info["site_id"])}


async def _resident_of(request: web.Request, site_id: str) -> None:
    """A resident with its own token sees its own site's door log; anyone else is told the site
    does not exist, as with calls, so sites cannot be probed."""
    viewer = request.get(VIEWER)
    if viewer is None:
        return
    user = await request.app[STORE].get_user(viewer)
    if user["kind"] != "resident" or user["site_id"] != site_id:
        raise NotFound(f"no site '{site_id}'")


async def _get_audit(request: web.Request) -> Any:
    await _resident_of(request, request.match_info["site_id"])
    limit = _limit(request)
    text = request.query.get("next")
    before = int(_cursor(text, AUDIT_CURSOR)) if text else None
    rows = await request.app[STORE].list_audit(request.match_info["site_id"], limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    return {"events": page, "next": str(page[-1]["audit_id"]) if more else None}


async def _post_user(request: web.Request) -> Any:
    body = await _body(request, ("user_id", "kind", "site_id", "display_name"))
    return await request.app[STORE].add_user(body["user_id"], body["kind"], body["site_id"], body["display_name"])


async def _get_user(request: web.Request) -> Any:
    return await request.app[STORE].get_user(request.match_info["user_id"])


async def _post_token(request: web.Request) -> Any:
    body = await _body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    return await request.app[STORE].issue_token(request.match_info["user_id"], body.get("expires_in_s"))


async def _get_tokens(request: web.Request) -> Any:
    return {"tokens": await request.app[STORE].list_tokens(request.match_info["user_id"])}


async def _delete_token(request: web.Request) -> Any:
    token_id = request.match_info["token_id"]
    await request.app[STORE].revoke_token(request.match_info["user_id"], token_id)
    await request.app[HUB].revoked({token_id})
    return web.Response(status=204)


async def _post_invite(request: web.Request) -> Any:
    body = await _body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    invite = await request.app[STORE].create_invite(request.match_info["user_id"], body.get("expires_in_s"))
    return {**invite, "url": invite_url(request.app[PUBLIC_URL] or str(request.url.origin()), invite["code"])}


async def _get_invites(request: web.Request) -> Any:
    return {"invites": await request.app[STORE].list_invites(request.match_info["user_id"])}


async def _redeem_invite(request: web.Request) -> web.Response:
    """No credentials: the one-time code is the credential."""
    return await _redeem(request, "resident", "code must be the text after 'invite=' in the invite link")


async def _post_pairing(request: web.Request) -> Any:
    body = await _body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    pairing = await request.app[STORE].create_pairing(request.match_info["user_id"], body.get("expires_in_s"))
    return {**pairing, "url": pairing_url(request.app[PUBLIC_URL] or str(request.url.origin()), pairing["code"])}


async def _redeem_pairing(request: web.Request) -> web.Response:
    """`intercom pair LINK` on the door: the code for the door's own token."""
    return await _redeem(request, "door", "code must be the text after 'pair=' in the pairing link")


async def _redeem(request: web.Request, kind: str, malformed: str) -> web.Response:
    """A code is 192 random bits, so guessing is hopeless anyway; wrong codes still count
    against the address like failed sign-ins, so nobody can hammer the server with them."""
    hub = request.app[HUB]
    address = client_address(request, hub.settings.trusted_proxies)
    wait = await hub.sign_in_blocked_for(address)
    if wait > 0:
        return _error(429, "rate_limited", f"too many wrong codes from {address}; try again in {math.ceil(wait)} s",
                      headers={"Retry-After": str(math.ceil(wait))})
    body = await _body(request, ("code",))
    if not isinstance(body["code"], str) or not 1 <= len(body["code"]) <= 200:
        raise StoreError(malformed)
    try:
        redeemed = await request.app[STORE].redeem_invite(body["code"], kind=kind)
    except Unauthenticated:
        await hub.sign_in_failed(address)
        raise
    if kind == "door":
        log.info("door %s paired from %s", redeemed["user"]["user_id"], address)
    return web.json_response(redeemed, status=201)


async def _get_me(request: web.Request) -> Any:
    """Who the web app is signed in as, and the site's directory: door names for "Look
    outside", residents' names for the history."""
    store = request.app[STORE]
    user = await store.get_user(request[VIEWER])
    return {"user": user, "site": await store.get_site(user["site_id"]), "users": await store.list_users(user["site_id"])}


async def _sign_out(request: web.Request) -> web.Response:
    """The phone's own token is revoked, so a lost or shared phone's copy is worthless."""
    token_id = await request.app[STORE].revoke_secret(request[VIEWER], _bearer(request) or "")
    if token_id:
        await request.app[HUB].revoked({token_id})
    return web.Response(status=204)


# -- Do-not-disturb, quiet hours, away: judged by the server's clock at each press --------------------

def _resident(user: dict[str, Any]) -> dict[str, Any]:
    if user["kind"] != "resident":
        raise NotFound(f"no resident '{user['user_id']}': only residents have do-not-disturb and quiet hours")
    return user


def _availability(request: web.Request, user: dict[str, Any]) -> dict[str, Any]:
    hub = request.app[HUB]
    _resident(user)
    why = hub.rules.why_not(user, hub.settings.clock())
    return {**hub.rules.resident(user["user_id"]).as_json(), "site": hub.rules.site(user["site_id"]).as_json(),
            "available": why is None, "reason": str(why) if why else None}


async def _change_availability(request: web.Request, user: dict[str, Any]) -> dict[str, Any]:
    hub = request.app[HUB]
    _resident(user)
    body = await _body(request, (), ("do_not_disturb", "quiet_hours"))
    try:
        rules = parse_resident(body, hub.rules.resident(user["user_id"]), hub.settings.clock())
    except RuleError as exc:
        raise StoreError(str(exc)) from None
    await hub.rules.set_resident(user["user_id"], rules)
    log.info("%s: do-not-disturb %s, %d quiet window(s)", user["user_id"], "on" if rules.do_not_disturb else "off",
             len(rules.quiet_hours))
    return _availability(request, user)


async def _get_my_availability(request: web.Request) -> Any:
    return _availability(request, await request.app[STORE].get_user(request[VIEWER]))


async def _put_my_availability(request: web.Request) -> web.Response:
    return web.json_response(await _change_availability(request, await request.app[STORE].get_user(request[VIEWER])))


async def _get_availability(request: web.Request) -> Any:
    return _availability(request, await request.app[STORE].get_user(request.match_info["user_id"]))


async def _put_availability(request: web.Request) -> web.Response:
    user = await request.app[STORE].get_user(request.match_info["user_id"])
    return web.json_response(await _change_availability(request, user))


async def _get_site_availability(request: web.Request) -> Any:
    site_id = request.match_info["site_id"]
    await _resident_of(request, site_id)
    await request.app[STORE].get_site(site_id)
    return request.app[HUB].rules.site(site_id).as_json()


async def _put_site_availability(request: web.Request) -> web.Response:
    """Away: nobody of the site is rung (a resident of the site may set it, or the operator)."""
    site_id = request.match_info["site_id"]
    await _resident_of(request, site_id)
    await request.app[STORE].get_site(site_id)
    body = await _body(request, (), ("away", "time_zone"))
    rules = request.app[HUB].rules
    try:
        changed = parse_site(body, rules.site(site_id))
    except RuleError as exc:
        raise StoreError(str(exc)) from None
    await rules.set_site(site_id, changed)
    log.info("site %s: away %s, time zone %s (by %s)", site_id, changed.away, changed.time_zone,
             request.get(VIEWER) or "the Platform API")
    return web.json_response(changed.as_json())


# -- Visitors' messages: sent by the call's door, heard by the call's residents --------------------

async def _put_message(request: web.Request) -> web.Response:
    """The door's recording for a call nobody answered."""
    store, call_id = request.app[STORE], request.match_info["call_id"]
    row = await store.call_row(call_id)
    if row is None or row["caller_id"] != request[VIEWER] or (await store.get_user(request[VIEWER]))["kind"] != "door":
        raise NotFound(f"no call '{call_id}' of this door")
    if row["accepted_by_user"] is not None:
        raise StoreError("the call was answered: there is no message to leave")
    if await store.has_message(call_id):
        return _error(409, "conflict", "this call already has its message")
    box = request.app[MESSAGES]
    limit = box.settings.max_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "too_large", f"a message is at most {limit // (1024 * 1024)} MiB")
    try:
        size = await box.save(call_id, request.content)
    except TooLarge:
        return _error(413, "too_large", f"a message is at most {limit // (1024 * 1024)} MiB")
    log.info("a visitor's message for %s from %s: %d bytes", call_id, request[VIEWER], size)
    hub = request.app[HUB]
    callees = json.loads(row["callees"])
    live = await hub.find_call(call_id)
    wake = list(live.rung_callees) if live is not None else callees
    door = await store.find_user(request[VIEWER]) or {}
    hub.push.message(call_id, {k: door.get(k) for k in ("user_id", "display_name", "kind")},
                     live.created_at if live else time.time(), wake, time.time())
    hub._spawn(box.sweep())
    return web.json_response({"call_id": call_id, "bytes": size}, status=201)


async def _message_call(request: web.Request) -> str:
    """The call, if this caller may hear its message: the operator, or a resident of the call."""
    call_id = await _visible_call(request)
    viewer = request.get(VIEWER)
    if viewer is not None and (await request.app[STORE].get_user(viewer))["kind"] != "resident":
        raise NotFound(f"no call '{call_id}'")
    if not await request.app[STORE].has_message(call_id):
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


# -- Webhooks: the operator's, with the Api-Token ----------------------------------------------

async def _post_webhook(request: web.Request) -> Any:
    """The secret is in this answer only; it signs every delivery."""
    body = await _body(request, ("url", "events"), ("allow_http",))
    allow_http = _flag(body, "allow_http", False)
    hook = await request.app[STORE].add_webhook(request.match_info["site_id"], check_url(body["url"], allow_http),
                                          check_events(body["events"]), allow_http)
    await request.app[WEBHOOKS].reload()
    return hook


async def _get_webhooks(request: web.Request) -> Any:
    return {"webhooks": await request.app[STORE].list_webhooks(request.match_info["site_id"])}


async def _get_webhook(request: web.Request) -> Any:
    return await request.app[STORE].get_webhook(request.match_info["site_id"], request.match_info["webhook_id"])


async def _patch_webhook(request: web.Request) -> Any:
    """Change where or what is sent, or switch a receiver off or on again."""
    body = await _body(request, (), ("url", "events", "allow_http", "enabled"))
    store, site_id, webhook_id = request.app[STORE], request.match_info["site_id"], request.match_info["webhook_id"]
    current = await store.get_webhook(site_id, webhook_id)
    allow_http = _flag(body, "allow_http", current["allow_http"])
    changes: dict[str, Any] = {"allow_http": allow_http}
    if "url" in body or "allow_http" in body:
        changes["url"] = check_url(body.get("url", current["url"]), allow_http)
    if "events" in body:
        changes["events"] = check_events(body["events"])
    if "enabled" in body:
        changes["enabled"] = _flag(body, "enabled", True)
    hook = await store.update_webhook(site_id, webhook_id, changes)
    await request.app[WEBHOOKS].reload()
    return hook


async def _delete_webhook(request: web.Request) -> Any:
    await request.app[STORE].delete_webhook(request.match_info["site_id"], request.match_info["webhook_id"])
    await request.app[WEBHOOKS].reload()
    return web.Response(status=204)


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise StoreError(f"{key} must be true or false")
    return value


# -- Web Push: the phone's own token manages its own device's subscription ----------------------

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
    sub = await request.app[HUB].push.subscribe(await store.get_user(device.user_id), device.device_id, token.token_id,
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


async def _decline(request: web.Request) -> web.Response:
    """Decline from the notification, without opening the app."""
    body = await _body(request, ("device_id",))
    device = DeviceRef(request[VIEWER], check_id("device_id", body["device_id"]))
    try:
        await request.app[HUB].decline_from(device, request.match_info["call_id"])
    except CallError as exc:
        return _error(HTTP_STATUS.get(exc.code, 400), str(exc.code), exc.message)
    return web.Response(status=204)


def invite_url(base: str, code: str) -> str:
    """The code is in the fragment, which browsers never send to a server or in a Referer,
    so it stays out of access logs and proxies."""
    return f"{base.rstrip('/')}/#invite={code}"


def pairing_url(base: str, code: str) -> str:
    """Like an invite link: the code rides in the fragment; `intercom pair` reads the server's
    address from the rest."""
    return f"{base.rstrip('/')}/#pair={code}"


def _cursor_out(cursor: tuple[float, str]) -> str:
    return f"{cursor[0]!r}:{cursor[1]}"


def _cursor(text: str, pattern: str) -> str:
    if not re.fullmatch(pattern, text):
        raise StoreError("next is not a cursor this server gave")
    return text


def _cursor_in(text: str) -> tuple[float, str]:
    ts, _, call_id = _cursor(text, CALLS_CURSOR).partition(":")
    return float(ts), call_id


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise StoreError("limit must be a whole number") from None
    if not 1 <= limit <= 100:
        raise StoreError("limit must be between 1 and 100")
    return limit


async def _visible_call(request: web.Request) -> str:
    """The call named in the path, if this caller may see it; a non-party gets 404 as if the
    call did not exist, so call ids cannot be probed."""
    call_id = request.match_info["call_id"]
    viewer = request.get(VIEWER)
    if viewer is not None and viewer not in await request.app[STORE].call_parties(call_id):
        raise NotFound(f"no call '{call_id}'")
    return call_id


async def _get_calls(request: web.Request) -> Any:
    query = request.query
    limit = _limit(request)
    user_id = query.get("user_id")
    viewer = request.get(VIEWER)
    if viewer is not None:
        if user_id not in (None, viewer):
            raise Forbidden("with an access token you see only your own calls")
        user_id = viewer
    if user_id is not None:
        await request.app[STORE].get_user(user_id)
    before = _cursor_in(query["next"]) if query.get("next") else None
    rows = await request.app[STORE].list_calls(user_id, limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    cursors = [row.pop("_cursor") for row in page]
    return {"calls": page, "next": _cursor_out(cursors[-1]) if more else None}


async def _get_call(request: web.Request) -> Any:
    return await request.app[STORE].get_call(await _visible_call(request))


async def _get_snapshot(request: web.Request) -> Any:
    data = await request.app[STORE].snapshot(await _visible_call(request))
    return web.Response(body=data, content_type="image/jpeg")


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _unready(app: web.Application) -> str | None:
    """Why this process takes no new connections now, if it does not."""
    hub = app[HUB]
    if hub.draining:
        return "is restarting"
    if not app[DATABASE].ok:
        return "cannot reach its database"
    if hub.cluster is not None and not hub.cluster.ok:
        return "cannot reach Redis"
    return None


async def _health(request: web.Request) -> web.Response:
    """For a load balancer or a monitor: up or not. Counts of devices and calls say when a
    household is home, so only the Api-Token sees them."""
    given = request.headers.get("Api-Token")
    database = request.app[DATABASE]
    unready = _unready(request.app)
    status = 503 if unready else 200
    if given is None or not _is_api_token(request, given):
        return web.json_response({"ok": not unready}, status=status)
    hub = request.app[HUB]
    await request.app[STORE].flushed()  # the writes queued until now have told of their failures
    try:
        live_calls: int | None = await asyncio.wait_for(hub.live_count(), 2.0)
    except Exception:  # noqa: BLE001 - Redis away: said below
        live_calls = None
    push = hub.push.stats
    cluster = hub.cluster
    return web.json_response({"ok": not unready, "database": {"ok": database.ok, "error": database.error},
                              **({"cluster": {"process": cluster.name, "redis": {"ok": cluster.ok, "error": cluster.error},
                                              "draining": hub.draining}} if cluster is not None else {}),
                              "connected_devices": len(hub.devices), "live_calls": live_calls,
                              "bridges": hub.bridges(),
                              "store_errors": hub.store_errors, "last_store_error": hub.last_store_error,
                              "push": {"subscriptions": hub.push.count(), "sent": push.sent, "failed": push.failed,
                                       "retried": push.retried, "pruned": push.pruned, "expired": push.expired,
                                       "pending": hub.push.pending(), "last_error": push.last_error},
                              "webhooks": request.app[WEBHOOKS].counts(),
                              **({"mqtt": request.app[MQTT].status.as_json()} if MQTT in request.app else {})},
                             status=status)

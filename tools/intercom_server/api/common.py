"""The HTTP layer's shared parts: the application's keys, the Platform API's guard (`Api-Token`, or a
party's Bearer token), its JSON errors and bodies, and where a request really came from."""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from intercom_protocol.messages import ErrorCode

from ..hub import Hub
from ..mqtt import MqttBridge
from ..openapi_schemas import CALLS_CURSOR
from ..records import Bearer, NotFound, StoreError, UserKind, record_json
from ..store import Store
from ..visitor_messages import MessageBox
from ..webhooks import Webhooks

log = logging.getLogger("intercom.server")


#: A handler's answer may hold the store's records: they write themselves as JSON.
dumps = functools.partial(json.dumps, default=record_json)


HUB = web.AppKey("hub", Hub)


STORE = web.AppKey("store", Store)


API_TOKEN = web.AppKey("api_token", str)


#: Where residents reach the server (config `public_url`), for invite links; by default the
#: address the request came to.
PUBLIC_URL = web.AppKey("public_url", str)


MQTT = web.AppKey("mqtt", MqttBridge)


WEBHOOKS = web.AppKey("webhooks", Webhooks)


MESSAGES = web.AppKey("messages", MessageBox)


@dataclass
class DatabaseHealth:
    """Whether the database answers, as the last check found: a load balancer reads it from
    /healthz, and a new connection is refused while it does not (its sign-in would fail)."""
    ok: bool = True
    error: str | None = None


DATABASE = web.AppKey("database", DatabaseHealth)


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


Handler = Callable[[web.Request], Awaitable[Any]]


#: Set on a request that a party (a resident or a door) made with its own access token; absent
#: when the master Api-Token was given. Such a caller sees only calls it was a party of.
VIEWER = web.RequestKey("viewer", str)


#: The access token itself, where a request needs more than whose it is (a push subscription
#: belongs to the token that made it, and goes when it is revoked).
VIEWER_TOKEN = web.RequestKey("viewer_token", Bearer)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


def api(handler: Handler, parties: bool = False,
         bearer_only: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Guard a Platform API handler with the Api-Token header (or, where `parties` is set, a
    party's `Authorization: Bearer` access token too; with `bearer_only`, that alone);
    serialise its result."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        given = None if bearer_only else request.headers.get("Api-Token")
        bearer = bearer_token(request)
        if bearer_only and not bearer:
            return error(401, "unauthenticated", "this call needs an Authorization: Bearer access token")
        if given is not None:
            if not is_api_token(request, given):
                return error(401, "unauthenticated", "wrong Api-Token header")
        elif parties and bearer:
            owner = await request.app[STORE].tokens.token_owner(bearer)
            if owner is None:
                return error(401, "unauthenticated", "unknown, expired or revoked access token")
            request[VIEWER] = owner.user_id
            request[VIEWER_TOKEN] = owner
        else:
            how = "an Api-Token header" + (" or an Authorization: Bearer access token" if parties else "")
            return error(401, "unauthenticated", f"this call needs {how}")
        result = await handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=201 if request.method == "POST" else 200, dumps=dumps)

    return guarded


def is_api_token(request: web.Request, given: str) -> bool:
    return hmac.compare_digest(given.encode(), request.app[API_TOKEN].encode())


#: The HTTP status of each refusal the store and the handlers name in the protocol's words.
HTTP_STATUS = {ErrorCode.BAD_REQUEST: 400, ErrorCode.UNAUTHENTICATED: 401, ErrorCode.FORBIDDEN: 403,
               ErrorCode.NOT_FOUND: 404, ErrorCode.CONFLICT: 409}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        return error(HTTP_STATUS[exc.code], exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = error(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:  # a JSON error, never aiohttp's plain-text page with a trace
        log.exception("internal error on %s %s", request.method, request.path)
        return error(500, "internal", "internal error")


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


async def read_body(request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
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


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise StoreError(f"{key} must be true or false")
    return value


def cursor_out(cursor: tuple[float, str]) -> str:
    return f"{cursor[0]!r}:{cursor[1]}"


def cursor(text: str, pattern: str) -> str:
    if not re.fullmatch(pattern, text):
        raise StoreError("next is not a cursor this server gave")
    return text


def cursor_in(text: str) -> tuple[float, str]:
    ts, _, call_id = cursor(text, CALLS_CURSOR).partition(":")
    return float(ts), call_id


def page_limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise StoreError("limit must be a whole number") from None
    if not 1 <= limit <= 100:
        raise StoreError("limit must be between 1 and 100")
    return limit


async def resident_of(request: web.Request, site_id: str) -> None:
    """A resident with its own token sees its own site's door log; anyone else is told the site
    does not exist, as with calls, so sites cannot be probed."""
    viewer = request.get(VIEWER)
    if viewer is None:
        return
    user = await request.app[STORE].users.get_user(viewer)
    if user.kind != UserKind.RESIDENT or user.site_id != site_id:
        raise NotFound(f"no site '{site_id}'")


def invite_url(base: str, code: str) -> str:
    """The code is in the fragment, which browsers never send to a server or in a Referer,
    so it stays out of access logs and proxies."""
    return f"{base.rstrip('/')}/#invite={code}"


def pairing_url(base: str, code: str) -> str:
    """Like an invite link: the code rides in the fragment; `intercom pair` reads the server's
    address from the rest."""
    return f"{base.rstrip('/')}/#pair={code}"


def why_unready(app: web.Application) -> str | None:
    """Why this process takes no new connections now, if it does not."""
    hub = app[HUB]
    if hub.draining:
        return "is restarting"
    if not app[DATABASE].ok:
        return "cannot reach its database"
    return hub.state.health()[0]

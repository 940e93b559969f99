"""Sites, users, access tokens, invites and pairings, `me`, and a site's door log."""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web

from ..openapi_schemas import AUDIT_CURSOR
from ..records import StoreError, Unauthenticated, UserKind
from .common import (
    HUB,
    PUBLIC_URL,
    STORE,
    VIEWER,
    api,
    bearer_token,
    client_address,
    cursor,
    dumps,
    error,
    invite_url,
    page_limit,
    pairing_url,
    read_body,
    resident_of,
)

log = logging.getLogger("intercom.server")


async def _post_site(request: web.Request) -> Any:
    body = await read_body(request, ("site_id", "name"))
    return await request.app[STORE].users.add_site(body["site_id"], body["name"])


async def _get_site(request: web.Request) -> Any:
    return await request.app[STORE].users.get_site(request.match_info["site_id"])


async def _get_sites(request: web.Request) -> Any:
    return {"sites": await request.app[STORE].users.list_sites()}


async def _get_site_users(request: web.Request) -> Any:
    return {"users": await request.app[STORE].users.list_users(request.match_info["site_id"])}


async def _get_audit(request: web.Request) -> Any:
    await resident_of(request, request.match_info["site_id"])
    limit = page_limit(request)
    text = request.query.get("next")
    before = int(cursor(text, AUDIT_CURSOR)) if text else None
    rows = await request.app[STORE].audit_log.list_audit(request.match_info["site_id"], limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    return {"events": page, "next": str(page[-1]["audit_id"]) if more else None}


async def _post_user(request: web.Request) -> Any:
    body = await read_body(request, ("user_id", "kind", "site_id", "display_name"))
    return await request.app[STORE].users.add_user(body["user_id"], body["kind"], body["site_id"], body["display_name"])


async def _get_user(request: web.Request) -> Any:
    return await request.app[STORE].users.get_user(request.match_info["user_id"])


async def _post_token(request: web.Request) -> Any:
    body = await read_body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    return await request.app[STORE].tokens.issue_token(request.match_info["user_id"], body.get("expires_in_s"))


async def _get_tokens(request: web.Request) -> Any:
    return {"tokens": await request.app[STORE].tokens.list_tokens(request.match_info["user_id"])}


async def _delete_token(request: web.Request) -> Any:
    token_id = request.match_info["token_id"]
    await request.app[STORE].tokens.revoke_token(request.match_info["user_id"], token_id)
    await request.app[HUB].signin.revoked({token_id})
    return web.Response(status=204)


async def _post_invite(request: web.Request) -> Any:
    body = await read_body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    invite = await request.app[STORE].tokens.create_invite(request.match_info["user_id"], body.get("expires_in_s"))
    return {**invite, "url": invite_url(request.app[PUBLIC_URL] or str(request.url.origin()), invite["code"])}


async def _get_invites(request: web.Request) -> Any:
    return {"invites": await request.app[STORE].tokens.list_invites(request.match_info["user_id"])}


async def _redeem_invite(request: web.Request) -> web.Response:
    """No credentials: the one-time code is the credential."""
    return await _redeem(request, "resident", "code must be the text after 'invite=' in the invite link")


async def _post_pairing(request: web.Request) -> Any:
    body = await read_body(request, (), ("expires_in_s",)) if request.can_read_body else {}
    pairing = await request.app[STORE].tokens.create_pairing(request.match_info["user_id"], body.get("expires_in_s"))
    return {**pairing, "url": pairing_url(request.app[PUBLIC_URL] or str(request.url.origin()), pairing["code"])}


async def _redeem_pairing(request: web.Request) -> web.Response:
    """`intercom pair LINK` on the door: the code for the door's own token."""
    return await _redeem(request, "door", "code must be the text after 'pair=' in the pairing link")


async def _redeem(request: web.Request, kind: str, malformed: str) -> web.Response:
    """A code is 192 random bits, so guessing is hopeless anyway; wrong codes still count
    against the address like failed sign-ins, so nobody can hammer the server with them."""
    hub = request.app[HUB]
    address = client_address(request, hub.settings.trusted_proxies)
    wait = await hub.signin.blocked_for(address)
    if wait > 0:
        return error(429, "rate_limited", f"too many wrong codes from {address}; try again in {math.ceil(wait)} s",
                      headers={"Retry-After": str(math.ceil(wait))})
    body = await read_body(request, ("code",))
    if not isinstance(body["code"], str) or not 1 <= len(body["code"]) <= 200:
        raise StoreError(malformed)
    try:
        redeemed = await request.app[STORE].tokens.redeem_invite(body["code"], kind=kind)
    except Unauthenticated:
        await hub.signin.failed(address)
        raise
    if kind == UserKind.DOOR:
        log.info("door %s paired from %s", redeemed["user"].user_id, address)
    return web.json_response(redeemed, status=201, dumps=dumps)


async def _get_me(request: web.Request) -> Any:
    """Who the web app is signed in as, and the site's directory: door names for "Look
    outside", residents' names for the history."""
    store = request.app[STORE]
    user = await store.users.get_user(request[VIEWER])
    return {"user": user, "site": await store.users.get_site(user.site_id), "users": await store.users.list_users(user.site_id)}


async def _sign_out(request: web.Request) -> web.Response:
    """The phone's own token is revoked, so a lost or shared phone's copy is worthless."""
    token_id = await request.app[STORE].tokens.revoke_secret(request[VIEWER], bearer_token(request) or "")
    if token_id:
        await request.app[HUB].signin.revoked({token_id})
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/sites", api(_post_site))
    app.router.add_get("/v1/sites", api(_get_sites))
    app.router.add_get("/v1/sites/{site_id}", api(_get_site))
    app.router.add_get("/v1/sites/{site_id}/users", api(_get_site_users))
    app.router.add_get("/v1/sites/{site_id}/audit", api(_get_audit, parties=True))
    app.router.add_post("/v1/users", api(_post_user))
    app.router.add_get("/v1/users/{user_id}", api(_get_user))
    app.router.add_post("/v1/users/{user_id}/tokens", api(_post_token))
    app.router.add_get("/v1/users/{user_id}/tokens", api(_get_tokens))
    app.router.add_delete("/v1/users/{user_id}/tokens/{token_id}", api(_delete_token))
    app.router.add_post("/v1/users/{user_id}/invites", api(_post_invite))
    app.router.add_get("/v1/users/{user_id}/invites", api(_get_invites))
    app.router.add_post("/v1/invites/redeem", _redeem_invite)
    app.router.add_post("/v1/users/{user_id}/pairings", api(_post_pairing))
    app.router.add_post("/v1/pairings/redeem", _redeem_pairing)
    app.router.add_get("/v1/me", api(_get_me, parties=True, bearer_only=True))
    app.router.add_delete("/v1/me/token", api(_sign_out, parties=True, bearer_only=True))

"""Do-not-disturb, quiet hours and away, over the Platform API."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..availability import RuleError, parse_resident, parse_site
from ..records import NotFound, StoreError, User, UserKind
from .common import (
    HUB,
    STORE,
    VIEWER,
    api,
    read_body,
    resident_of,
)

log = logging.getLogger("intercom.server")


def _resident(user: User) -> User:
    if user.kind != UserKind.RESIDENT:
        raise NotFound(f"no resident '{user.user_id}': only residents have do-not-disturb and quiet hours")
    return user


def _availability(request: web.Request, user: User) -> dict[str, Any]:
    hub = request.app[HUB]
    _resident(user)
    why = hub.rules.why_not(user, hub.settings.clock())
    return {**hub.rules.resident(user.user_id).as_json(), "site": hub.rules.site(user.site_id).as_json(),
            "available": why is None, "reason": str(why) if why else None}


async def _change_availability(request: web.Request, user: User) -> dict[str, Any]:
    hub = request.app[HUB]
    _resident(user)
    body = await read_body(request, (), ("do_not_disturb", "quiet_hours"))
    try:
        rules = parse_resident(body, hub.rules.resident(user.user_id), hub.settings.clock())
    except RuleError as exc:
        raise StoreError(str(exc)) from None
    await hub.rules.set_resident(user.user_id, rules)
    log.info("%s: do-not-disturb %s, %d quiet window(s)", user.user_id, "on" if rules.do_not_disturb else "off",
             len(rules.quiet_hours))
    return _availability(request, user)


async def _get_my_availability(request: web.Request) -> Any:
    return _availability(request, await request.app[STORE].users.get_user(request[VIEWER]))


async def _put_my_availability(request: web.Request) -> web.Response:
    return web.json_response(await _change_availability(request, await request.app[STORE].users.get_user(request[VIEWER])))


async def _get_availability(request: web.Request) -> Any:
    return _availability(request, await request.app[STORE].users.get_user(request.match_info["user_id"]))


async def _put_availability(request: web.Request) -> web.Response:
    user = await request.app[STORE].users.get_user(request.match_info["user_id"])
    return web.json_response(await _change_availability(request, user))


async def _get_site_availability(request: web.Request) -> Any:
    site_id = request.match_info["site_id"]
    await resident_of(request, site_id)
    await request.app[STORE].users.get_site(site_id)
    return request.app[HUB].rules.site(site_id).as_json()


async def _put_site_availability(request: web.Request) -> web.Response:
    """Away: nobody of the site is rung (a resident of the site may set it, or the operator)."""
    site_id = request.match_info["site_id"]
    await resident_of(request, site_id)
    await request.app[STORE].users.get_site(site_id)
    body = await read_body(request, (), ("away", "time_zone"))
    rules = request.app[HUB].rules
    try:
        changed = parse_site(body, rules.site(site_id))
    except RuleError as exc:
        raise StoreError(str(exc)) from None
    await rules.set_site(site_id, changed)
    log.info("site %s: away %s, time zone %s (by %s)", site_id, changed.away, changed.time_zone,
             request.get(VIEWER) or "the Platform API")
    return web.json_response(changed.as_json())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/me/availability", api(_get_my_availability, parties=True, bearer_only=True))
    app.router.add_put("/v1/me/availability", api(_put_my_availability, parties=True, bearer_only=True))
    app.router.add_get("/v1/users/{user_id}/availability", api(_get_availability))
    app.router.add_put("/v1/users/{user_id}/availability", api(_put_availability))
    app.router.add_get("/v1/sites/{site_id}/availability", api(_get_site_availability, parties=True))
    app.router.add_put("/v1/sites/{site_id}/availability", api(_put_site_availability, parties=True))

"""The site's directory as the server knows it, to check the door's ring groups against.

A ring group that names a user the server does not have (a typo, a resident who moved out, an
example left in the YAML) rings everyone else but never that name. The door checks its groups
when it signs in and after a reload, and `intercom selftest` checks them too, so the installer
hears of it from the door's status and log instead of from a visitor nobody answered.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import aiohttp

#: How long the check may take; it never delays a ring (it runs beside the door's work).
TIMEOUT_S = 10.0


def http_base(ws_url: str) -> str:
    """The server's HTTP address from its WebSocket URL (same host, same TLS)."""
    base = ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    return base.split("/v1/ws", 1)[0].rstrip("/")


async def site_users(ws_url: str, access_token: str, ssl_context: ssl.SSLContext | bool = True) -> list[dict[str, Any]]:
    """The users of this door's site (`GET /v1/me` with the door's own token)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(http_base(ws_url) + "/v1/me", ssl=ssl_context,
                            headers={"Authorization": f"Bearer {access_token}"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"the server answered {resp.status} to GET /v1/me")
            body = await resp.json()
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list):
        raise RuntimeError("the server's /v1/me has no users list")
    return [u for u in users if isinstance(u, dict)]


def unknown_residents(groups: Iterable[Iterable[str]], users: list[dict[str, Any]]) -> list[str]:
    """Names in the ring groups that are not residents of the site, in the order written."""
    residents = {u.get("user_id") for u in users if u.get("kind") == "resident"}
    names = dict.fromkeys(name for group in groups for name in group)
    return [name for name in names if name not in residents]

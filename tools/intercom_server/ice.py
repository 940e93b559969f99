"""ICE servers handed to each signed-in device, with TURN credentials minted per session.

coturn's shared-secret mode (`use-auth-secret`, the "TURN REST API" draft): the server and
coturn share one secret; the server gives each session a username `expiry:user_id` and the
password base64(HMAC-SHA1(secret, username)). coturn checks the HMAC and the expiry itself,
so no per-user TURN account exists anywhere and a leaked credential dies on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TurnSettings:
    urls: list[str]
    shared_secret: str
    ttl_s: float = 86400.0


def turn_credentials(secret: str, user_id: str, ttl_s: float, now: float) -> tuple[str, str]:
    username = f"{int(now + ttl_s)}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass
class IceSettings:
    #: Entries given as they are (STUN, or TURN with a fixed username and credential).
    static: list[dict[str, Any]] = field(default_factory=list)
    turn: TurnSettings | None = None

    def for_user(self, user_id: str, now: float) -> list[dict[str, Any]]:
        servers = [dict(s) for s in self.static]
        if self.turn is not None:
            username, credential = turn_credentials(self.turn.shared_secret, user_id, self.turn.ttl_s, now)
            servers.append({"urls": list(self.turn.urls), "username": username, "credential": credential})
        return servers

"""HTTP Digest (RFC 7616, MD5) and Basic checks for the door's snapshot, sans-I/O.

NVRs and Home Assistant fetch a camera's snapshot with Digest first and Basic if asked to;
a FritzBox handset polls a URL with the password in it (Basic). Both are offered, Digest
first, because clients such as aiohttp's read only the first challenge. The server keeps no
nonce table: a nonce is its own issue time signed with a secret made at start, valid for
five minutes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping

REALM = "intercom"
NONCE_LIFETIME_S = 300
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class HttpAuth:
    def __init__(self, accounts: Mapping[str, str], clock: Callable[[], float] = time.time,
                 secret: bytes | None = None) -> None:
        self._accounts = accounts
        self._clock = clock
        self._secret = secret or os.urandom(32)

    def challenges(self) -> list[str]:
        """The WWW-Authenticate values of a 401, Digest first."""
        return [f'Digest realm="{REALM}", qop="auth", algorithm=MD5, nonce="{self._nonce()}"',
                f'Basic realm="{REALM}", charset="UTF-8"']

    def _nonce(self, issued: int | None = None) -> str:
        issued = int(self._clock()) if issued is None else issued
        mac = hmac.new(self._secret, str(issued).encode(), hashlib.sha256).hexdigest()[:32]
        return f"{issued}.{mac}"

    def _fresh(self, nonce: str) -> bool:
        issued, _, _ = nonce.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(nonce, self._nonce(int(issued))):
            return False
        return 0 <= self._clock() - int(issued) <= NONCE_LIFETIME_S

    def check(self, method: str, path: str, header: str | None) -> str | None:
        """The account an Authorization header proves for this request, else None."""
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        if scheme.lower() == "basic":
            return self._basic(rest.strip())
        if scheme.lower() == "digest":
            return self._digest(method, path, {k: a or b for k, a, b in _PARAM.findall(rest)})
        return None

    def _basic(self, encoded: str) -> str | None:
        try:
            user, _, given = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = self._accounts.get(user)
        ok = hmac.compare_digest(given.encode(), (password or given + "x").encode())
        return user if ok and password is not None else None

    def _digest(self, method: str, path: str, p: dict[str, str]) -> str | None:
        password = self._accounts.get(p.get("username", ""))
        if password is None or p.get("realm") != REALM or p.get("uri") != path or not self._fresh(p.get("nonce", "")):
            return None
        ha1 = _md5(f"{p['username']}:{REALM}:{password}")
        ha2 = _md5(f"{method}:{path}")
        if p.get("qop") == "auth":
            expected = _md5(f"{ha1}:{p['nonce']}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        return p["username"] if hmac.compare_digest(p.get("response", ""), expected) else None

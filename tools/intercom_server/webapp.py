"""Serves the resident web app: a few static files shipped inside the package, and the
security headers every response carries.

The app is plain HTML, CSS and a few ES modules with no build step and nothing fetched from
anywhere else, so the Content-Security-Policy can allow only this origin. The access token
lives in the page's storage, so a script injected from elsewhere is the attack that matters:
the policy forbids inline scripts, other origins, framing and plugins outright.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")

#: The app's ES modules besides app.js (imported by it, all from this origin).
MODULES = ("state.js", "screens.js", "session.js", "connection.js", "calls.js", "history.js", "push.js", "availability.js",
           "protocol.js")

#: path -> (file, content type). Listed, not a directory handler: nothing else can be read.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    **{f"/{module}": (module, "text/javascript; charset=utf-8") for module in MODULES},
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/sw.js": ("sw.js", "text/javascript; charset=utf-8"),
    "/keystore.js": ("keystore.js", "text/javascript; charset=utf-8"),
    "/manifest.webmanifest": ("manifest.webmanifest", "application/manifest+json"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",  # the visitor's snapshot is fetched with the token, shown as a blob
    "media-src 'self' blob:",
    "connect-src 'self'",  # the API and the WebSocket on this origin, nothing else
    "manifest-src 'self'",
    "worker-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=(), usb=()",
}


HSTS = "max-age=31536000"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: runs before any response's headers go out.

    Not on the WebSocket's 101 switch: no document is rendered from it, so the headers would
    protect nothing, and each of thousands of open connections would hold ~1 KiB of them."""
    if isinstance(response, web.WebSocketResponse):
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure:
        # Over TLS, the browser is told to never try plain http here again (a year).
        response.headers.setdefault("Strict-Transport-Security", HSTS)


def add_webapp_routes(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
    for path, (name, content_type) in FILES.items():
        app.router.add_get(path, _static(STATIC / name, content_type))


def _static(path: Path, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = path.read_bytes()

    async def handler(request: web.Request) -> web.Response:
        # no-cache: the browser revalidates, so an updated server ships an updated app at once;
        # the service worker keeps a copy for when the server cannot be reached.
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})

    return handler

"""`intercom-server`: run the server, and provision sites, users and tokens from a shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import ssl
import sys
from pathlib import Path

from aiohttp import web

from intercom_protocol.yamlconfig import ConfigError

from .app import create_app, invite_url
from .config import ServerConfig
from .store import Store, StoreError, StoreUnavailable

log = logging.getLogger("intercom.server")


def _config(args: argparse.Namespace) -> ServerConfig:
    config = ServerConfig.from_file(args.config) if args.config else ServerConfig()
    if getattr(args, "host", None):
        config.host = args.host
    if getattr(args, "port", None) is not None:
        config.port = args.port
    if args.data_dir:
        config.data_dir = Path(args.data_dir)
    return config


class StartupError(Exception):
    """Something on this machine stops the server from starting; the message is one line an
    installer can act on, not a traceback."""


def _open_store(config: ServerConfig) -> Store:
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise StartupError(f"data_dir {config.data_dir} is a file, not a directory")
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create data_dir {config.data_dir}: {exc.strerror}") from None
    try:
        return Store(config.db_path)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from None


async def _serve(config: ServerConfig) -> None:
    store = _open_store(config)
    try:
        closed = store.close_interrupted_calls()
    except sqlite3.Error as exc:
        store.close()
        raise StartupError(f"the database {config.db_path} cannot be written: {exc}") from None
    if closed:
        log.warning("%d call(s) were live when the server last stopped; recorded as ended 'unknown'", closed)
    token, source = config.resolve_api_token()
    config.hub.push.key_file = config.data_dir / "vapid_private.pem"
    try:
        app = create_app(store, config.hub, token, public_url=config.public_url or "")
    except (ValueError, OSError) as exc:
        store.close()
        raise StartupError(f"cannot start Web Push: {exc}") from None
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    tls = None
    if config.tls_cert and config.tls_key:
        # Phones allow the microphone only on https (or localhost): serve TLS here, or put the
        # server behind a reverse proxy that does.
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            await runner.cleanup()
            raise StartupError(f"cannot load tls.cert {config.tls_cert} with tls.key {config.tls_key}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}; is another server "
                           f"running there? choose another port (listen.port in the YAML, or --port)") from None
    port = runner.addresses[0][1]
    log.info("Platform API token from %s", source)
    # Tests and the demo read this line to learn the port when --port 0 was given.
    print(f"intercom-server listening on {'https' if tls else 'http'}://{config.host}:{port}", flush=True)
    if not tls and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving plain http on %s: phones will keep the microphone off (browsers allow it only "
                    "on https); set tls: in the config or use a reverse proxy with TLS", config.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    store.close()


def _print_invite(invite: dict[str, str]) -> None:
    """For the installer's terminal: the link to send, and a QR code to show the phone."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(invite["url"])
    print(f"Invite for {invite['user_id']}: open this link on the resident's phone (once, before {invite['expires_at']}):")
    print(f"  {invite['url']}")
    print("or scan this code with the phone's camera:")
    qr.print_ascii(out=sys.stdout, invert=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intercom-server", description=__doc__)
    parser.add_argument("--config", help="server YAML file")
    parser.add_argument("--data-dir", help="where the database and the API token live")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the signaling server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    site = sub.add_parser("site", help="sites: one building or household").add_subparsers(dest="action", required=True)
    p = site.add_parser("add")
    p.add_argument("site_id")
    p.add_argument("--name", required=True)

    user = sub.add_parser("user", help="door stations and residents").add_subparsers(dest="action", required=True)
    p = user.add_parser("add")
    p.add_argument("user_id")
    p.add_argument("--kind", choices=("door", "resident"), required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--name", required=True, help="display name shown to the other party")
    p = user.add_parser("show")
    p.add_argument("user_id")

    token = sub.add_parser("token", help="access tokens").add_subparsers(dest="action", required=True)
    p = token.add_parser("issue", help="print a new access token (shown only this once)")
    p.add_argument("user_id")
    p.add_argument("--expires-in", type=float, metavar="SECONDS")
    p = token.add_parser("list")
    p.add_argument("user_id")
    p = token.add_parser("revoke")
    p.add_argument("user_id")
    p.add_argument("token_id")

    p = sub.add_parser("invite", help="a one-time sign-in link (and QR code) for a resident's phone")
    p.add_argument("user_id")
    p.add_argument("--expires-in", type=float, metavar="SECONDS", help="default: 7 days")
    p.add_argument("--url", help="where phones reach the server; default: public_url from the config")
    p.add_argument("--json", action="store_true", help="print JSON only, no QR code")

    sub.add_parser("api-token", help="print the Platform API token (made on first use)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = _config(args)
        if args.command == "serve":
            asyncio.run(_serve(config))
            return 0
        if args.command == "api-token":
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            print(config.resolve_api_token()[0])
            return 0
        store = _open_store(config)
        if args.command == "site":
            result = store.add_site(args.site_id, args.name)
        elif args.command == "user" and args.action == "add":
            result = store.add_user(args.user_id, args.kind, args.site, args.name)
        elif args.command == "user":
            result = store.get_user(args.user_id)
        elif args.command == "invite":
            invite = store.create_invite(args.user_id, args.expires_in)
            result = {**invite, "url": invite_url(args.url or config.base_url, invite["code"])}
            if not args.json:
                _print_invite(result)
                return 0
        elif args.action == "issue":
            result = store.issue_token(args.user_id, args.expires_in)
        elif args.action == "list":
            result = {"tokens": store.list_tokens(args.user_id)}
        else:
            store.revoke_token(args.user_id, args.token_id)
            result = {"revoked": args.token_id}
        print(json.dumps(result, indent=2))
        return 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"intercom-server: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"intercom-server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

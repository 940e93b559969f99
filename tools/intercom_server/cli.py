"""`intercom-server`: run the server, and provision sites, users and tokens from a shell."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import logging.handlers
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from intercom.sdnotify import ready_until_stopped
from intercom_protocol.yamlconfig import ConfigError

from .api.common import invite_url, pairing_url
from .app import create_app
from .cluster import Unreachable
from .config import ServerConfig
from .database import DatabaseError
from .records import StoreError, record_json
from .store import Store, StoreUnavailable

log = logging.getLogger("intercom.server")

#: Where `init` writes the server's YAML unless given --config (the unit reads it there).
DEFAULT_CONFIG = "/etc/intercom/server.yaml"


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


async def _open_store(config: ServerConfig) -> Store:
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise StartupError(f"data_dir {config.data_dir} is a file, not a directory")
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create data_dir {config.data_dir}: {exc.strerror}") from None
    try:
        return await Store.open(config.db_target)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from None


class StartupLog(logging.handlers.MemoryHandler):
    """What the server logs while it starts, held back: if it cannot start, its one-line
    reason is all the installer reads; once it listens, the held lines follow in order."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(capacity=10_000, flushLevel=logging.CRITICAL + 1, target=target, flushOnClose=False)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False

    def flush(self) -> None:
        """Only `let_out` lets them out (logging flushes every handler at exit)."""

    def let_out(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        if self.target is not None:
            root.addHandler(self.target)
        super().flush()


async def _tls(config: ServerConfig, runner: web.AppRunner) -> ssl.SSLContext | None:
    """Phones allow the microphone only on https (or localhost): serve TLS here, or put the
    server behind a reverse proxy that does."""
    if not (config.tls_cert and config.tls_key):
        return None
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        tls.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        await runner.cleanup()
        raise StartupError(f"cannot load tls.cert {config.tls_cert} with tls.key {config.tls_key}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    return tls


async def _listen(config: ServerConfig, runner: web.AppRunner, tls: ssl.SSLContext | None) -> None:
    site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {config.port} on {config.host} is in use (another intercom-server?): stop "
                               f"it, or choose another port with listen.port in the YAML or serve --port N") from None
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None


async def _serve(config: ServerConfig, started: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGTERM; `started` is called once the server listens."""
    store = await _open_store(config)
    try:
        # Alone, a call live at the last stop was lost with it; in a cluster, the other
        # processes carry it on (and its timers end it if nobody does).
        closed = await store.calls.close_interrupted_calls() if config.cluster is None else 0
    except DatabaseError as exc:
        await store.close()
        raise StartupError(f"the database {config.db_name} cannot be written: {exc}") from None
    if closed:
        log.warning("%d call(s) were live when the server last stopped; recorded as ended 'unknown'", closed)
    token, source = config.resolve_api_token()
    config.hub.push.key_file = config.data_dir / "vapid_private.pem"
    try:
        app = create_app(store, config.hub, token, public_url=config.public_url or "", cluster=config.cluster)
    except (ValueError, OSError) as exc:
        await store.close()
        raise StartupError(f"cannot start Web Push: {exc}") from None
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
    except Unreachable as exc:
        await runner.cleanup()
        await store.close()
        raise StartupError(str(exc)) from None
    tls = await _tls(config, runner)
    await _listen(config, runner, tls)
    port = runner.addresses[0][1]
    started()
    log.info("Platform API token from %s", source)
    _remember_address(config, port)
    # Tests and the demo read this line to learn the port when --port 0 was given.
    print(f"intercom-server listening on {'https' if tls else 'http'}://{config.host}:{port}", flush=True)
    if not tls and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving plain http on %s: phones will keep the microphone off (browsers allow it only "
                    "on https); set tls: in the config or use a reverse proxy with TLS", config.host)
    await ready_until_stopped(f"listening on {config.host}:{port}")
    log.info("shutting down")
    await runner.cleanup()
    await store.close()


def _init(path: Path) -> int:
    """The annotated example, for an installer who used pip and has no checkout to copy from."""
    from intercom_protocol.yamlconfig import NotWritten, write_example

    try:
        write_example("intercom_server", "server.example.yaml", path)
    except NotWritten as exc:
        raise StartupError(str(exc)) from None
    print(f"Wrote {path}, the annotated example: edit listen:, public_url: and tls: for your network,")
    print(f"then add a site and its residents: intercom-server --config {path} site add home --name \"Our house\"")
    return 0


def _remember_address(config: ServerConfig, port: int) -> None:
    """`invite` and `door pair` run as other processes; they read here where the server
    really listens (the port given with --port, a LAN address for 0.0.0.0)."""
    try:
        config.listen_url_file.write_text(config.listen_url(port) + "\n")
    except OSError as exc:
        log.warning("cannot note the listening address in %s: %s", config.listen_url_file, exc.strerror)


def _print_link(what: str, link: dict[str, str], use: str, scan: str) -> None:
    """For the installer's terminal: the link, and a QR code to carry it to a phone."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(link["url"])
    print(f"{what} for {link['user_id']}: {use} (once, before {link['expires_at']}):")
    print(f"  {link['url']}")
    print(scan)
    qr.print_ascii(out=sys.stdout, invert=True)


def _link_base(config: ServerConfig, url: str | None) -> str:
    """Where the links point: --url, else public_url, else where the server really listens
    (it writes that into data_dir at start), else the YAML's listen address. Without
    public_url the installer is told which address was used, so a link that a phone cannot
    reach is no surprise."""
    if url:
        return url
    if config.public_url:
        return config.public_url
    try:
        listening = config.listen_url_file.read_text().strip()
    except OSError:
        listening = ""
    if listening:
        print(f"note: public_url is not set, so the link uses {listening}, where the server listens; "
              f"set public_url in the server's YAML (or give --url) if phones reach it by another address",
              file=sys.stderr)
        return listening
    base = config.base_url
    print(f"note: public_url is not set and the server has not run with this data_dir yet, so the link uses "
          f"{base} from listen: in the YAML; set public_url (or give --url) if phones reach it by another address",
          file=sys.stderr)
    return base


def _parser() -> argparse.ArgumentParser:
    # --config, --data-dir and -v go before or after the subcommand alike: the installer
    # should not have to know where argparse wants them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="server YAML file")
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="where the database and the API token live (overrides data_dir in the YAML)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="intercom-server", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, within: Any = sub) -> argparse.ArgumentParser:
        return cast(argparse.ArgumentParser, within.add_parser(name, help=help, parents=[common]))

    def group(name: str, help: str) -> Any:
        return sub.add_parser(name, help=help).add_subparsers(dest="action", required=True)

    def link_options(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--expires-in", type=float, metavar="SECONDS", help=f"default: {default}")
        p.add_argument("--url", help="where the server is reached; default: public_url from the config, "
                                     "else where the server listens")
        p.add_argument("--json", action="store_true", help="print JSON only, no QR code")

    command("init", f"write the annotated example YAML to --config (default {DEFAULT_CONFIG}); never overwrites")
    serve = command("serve", "run the signaling server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    _account_commands(command, group, link_options)
    command("api-token", "print the Platform API token (made on first use)")
    return parser


def _account_commands(command: Any, group: Any, link_options: Any) -> None:
    """The installer's commands on sites, users, doors, tokens and invites."""
    site = group("site", "sites: one building or household")
    p = command("add", "add a site", site)
    p.add_argument("site_id")
    p.add_argument("--name", required=True)

    user = group("user", "door stations and residents")
    p = command("add", "add a resident or a door station", user)
    p.add_argument("user_id")
    p.add_argument("--kind", choices=("door", "resident"), required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--name", required=True, help="display name shown to the other party")
    p = command("show", "show a user", user)
    p.add_argument("user_id")

    door = group("door", "door stations, paired with a one-time link")
    p = command("add", "add a door station and print its pairing link", door)
    p.add_argument("user_id")
    p.add_argument("--site", required=True)
    p.add_argument("--name", required=True, help="what residents see, e.g. \"Front door\"")
    link_options(p, "one hour")
    p = command("pair", "a new one-time pairing link for a door station (`intercom pair LINK` on the board)", door)
    p.add_argument("user_id")
    link_options(p, "one hour")

    token = group("token", "access tokens, for scripts (doors pair with a link, phones with an invite)")
    p = command("issue", "print a new access token (shown only this once)", token)
    p.add_argument("user_id")
    p.add_argument("--expires-in", type=float, metavar="SECONDS")
    p = command("list", "list a user's tokens", token)
    p.add_argument("user_id")
    p = command("revoke", "revoke a token", token)
    p.add_argument("user_id")
    p.add_argument("token_id")

    p = command("invite", "a one-time sign-in link (and QR code) for a resident's phone")
    p.add_argument("user_id")
    link_options(p, "7 days")


async def _administer(config: ServerConfig, args: argparse.Namespace) -> Any:
    """A shell command on the store; None when it printed its answer itself."""
    store = await _open_store(config)
    try:
        return await _command(store, config, args)
    finally:
        await store.close()


async def _command(store: Store, config: ServerConfig, args: argparse.Namespace) -> Any:
    if args.command == "site":
        return await store.users.add_site(args.site_id, args.name)
    if args.command == "user" and args.action == "add":
        return await store.users.add_user(args.user_id, args.kind, args.site, args.name)
    if args.command == "user":
        return await store.users.get_user(args.user_id)
    if args.command == "invite":
        invite = await store.tokens.create_invite(args.user_id, args.expires_in)
        result = {**invite, "url": invite_url(_link_base(config, args.url), invite["code"])}
        if args.json:
            return result
        _print_link("Invite", result, "open this link on the resident's phone",
                    "or scan this code with the phone's camera:")
        return None
    if args.command == "door":
        if args.action == "add":
            await store.users.add_user(args.user_id, "door", args.site, args.name)
        pairing = await store.tokens.create_pairing(args.user_id, args.expires_in)
        result = {**pairing, "url": pairing_url(_link_base(config, args.url), pairing["code"])}
        if args.json:
            return result
        _print_link("Pairing link", result, f"on the door, run: intercom pair '{result['url']}'",
                    "or scan this code to carry the link to the door's terminal:")
        return None
    if args.action == "issue":
        return await store.tokens.issue_token(args.user_id, args.expires_in)
    if args.action == "list":
        return {"tokens": await store.tokens.list_tokens(args.user_id)}
    await store.tokens.revoke_token(args.user_id, args.token_id)
    return {"revoked": args.token_id}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Not set_defaults: the options are shared with the subcommands, and SUPPRESS lets either
    # place give them.
    for name, default in (("config", None), ("data_dir", None), ("verbose", False)):
        setattr(args, name, getattr(args, name, default))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "init":
            return _init(Path(args.config or DEFAULT_CONFIG))
        if args.config and not Path(args.config).exists():
            raise StartupError(f"there is no config file at {args.config}: `intercom-server --config {args.config} "
                               f"init` writes the annotated example there to edit, or give the right --config")
        config = _config(args)
        if args.command == "serve":
            root = logging.getLogger()
            held = StartupLog(root.handlers[0])
            root.removeHandler(held.target)  # type: ignore[arg-type]
            root.addHandler(held)
            try:
                asyncio.run(_serve(config, started=held.let_out))
            except (StartupError, StoreError):
                raise  # its one line is all the installer needs
            except BaseException:
                held.let_out()  # a crash: everything that led to it
                raise
            return 0
        if args.command == "api-token":
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            print(config.resolve_api_token()[0])
            return 0
        result = asyncio.run(_administer(config, args))
        if result is None:
            return 0
        print(json.dumps(result, indent=2, default=record_json))
        return 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (StartupError, StoreError) as exc:
        print(f"intercom-server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`intercom`: the door station daemon and the installer's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from intercom_protocol.yamlconfig import ConfigError

from . import config as door_config
from . import eventloop
from .config import DEFAULT_SOCKET, DoorConfig

DEFAULT_CONFIG = "/etc/intercom/intercom.yaml"


def default_config() -> str:
    """The YAML every subcommand reads unless given --config: $INTERCOM_CONFIG, for an
    installation kept elsewhere, else /etc/intercom/intercom.yaml."""
    return os.environ.get("INTERCOM_CONFIG") or DEFAULT_CONFIG


async def _run(config_path: str) -> int:
    from .control import ControlServer
    from .sdnotify import Notifier
    from .station import Station

    log = logging.getLogger("intercom")
    config = door_config.load(config_path)
    systemd = Notifier()
    station = Station(config)
    control = ControlServer(config.control_socket, {
        "status": station.status,
        "press": lambda: station.pins.simulate(True),
        "release": lambda: station.pins.simulate(False),
        "hangup": station.hang_up,
    })
    await control.start()
    await station.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        systemd.reloading()
        try:
            station.reload(door_config.load(config_path))
        except ConfigError as exc:
            station.last_error = f"reload refused, still running the previous configuration: {exc}"
            for line in str(exc).splitlines():
                log.error("reload refused: %s", line)
        systemd.ready()

    loop.add_signal_handler(signal.SIGHUP, reload)
    watchdog = loop.create_task(systemd.watchdog(), name="watchdog")
    systemd.ready(f"door station {config.user_id}")
    log.info("door station %s running", config.user_id)
    await stop.wait()
    systemd.stopping()
    await control.stop()
    await station.stop()
    watchdog.cancel()
    return 0


def _socket_path(args: argparse.Namespace) -> Path:
    """--socket, else the socket of the YAML given with --config, else of the default YAML
    where it is readable, else the default socket: plain `intercom ctl status` finds a daemon
    installed as the README says."""
    if args.socket:
        return Path(args.socket)
    return door_config.control_socket_of(args.config or default_config())


def _parser() -> argparse.ArgumentParser:
    # -v and --config go before or after the subcommand alike.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument("--config", default=argparse.SUPPRESS,
                             help=f"the door's YAML (default $INTERCOM_CONFIG, else {DEFAULT_CONFIG})")
    parser = argparse.ArgumentParser(prog="intercom", description=__doc__, parents=[common, with_config])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the door station", parents=[common, with_config])
    sub.add_parser("init", help="write the annotated example YAML to --config (default "
                                f"$INTERCOM_CONFIG, else {DEFAULT_CONFIG}); never overwrites", parents=[common, with_config])
    p = sub.add_parser("check-config", help="check a config file; prints every problem with its line",
                       parents=[common])
    p.add_argument("file", nargs="?", help=f"default: --config, else $INTERCOM_CONFIG, else {DEFAULT_CONFIG}")
    p = sub.add_parser("pair", help="pair this door with the server: a one-time link from "
                                    "`intercom-server door pair DOOR`", parents=[common, with_config])
    p.add_argument("link", help="the pairing link, http(s)://SERVER/#pair=CODE")
    p = sub.add_parser("selftest", help="blink the LEDs, click the relay, play a tone, listen, take a picture",
                       parents=[common, with_config])
    p.add_argument("--no-relay", action="store_true", help="do not click the door strike")
    p = sub.add_parser("ctl", help="talk to the running door station", parents=[common, with_config])
    p.add_argument("action", choices=("status", "press", "release", "hangup"))
    p.add_argument("--socket", help=f"the control socket (default: control.socket of the YAML, else {DEFAULT_SOCKET})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Not set_defaults: the options are shared with the subcommands, and SUPPRESS lets either
    # place give them.
    args.verbose, args.config = getattr(args, "verbose", False), getattr(args, "config", None)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose is False:
        logging.getLogger("aioice").setLevel(logging.WARNING)
    config_path = args.config or default_config()
    try:
        if args.command == "ctl":
            return _ctl(_socket_path(args), args.action)
        if args.command == "init":
            return _init(Path(config_path))
        if args.command == "pair":
            if not Path(config_path).exists():
                raise _no_config(config_path)
            return eventloop.run(_pair(Path(config_path), args.link))
        if args.command == "check-config":
            return _check_config(args.file or config_path)
        config = _load_to_run(config_path)
        if args.command == "run":
            try:
                return eventloop.run(_run(config_path))
            except OSError as exc:
                # A path or device that is not what the YAML says: one line, not a traceback.
                print(f"intercom: cannot start: {exc}", file=sys.stderr)
                return 1
        return asyncio.run(_selftest(config, not args.no_relay))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except _Refused as exc:
        print(f"intercom: {exc}", file=sys.stderr)
        return 1


class _Refused(Exception):
    """One line for the installer instead of a traceback."""


def _init_command(path: str | Path) -> str:
    return "intercom init" if str(path) == default_config() else f"intercom init --config {path}"


def _no_config(path: str | Path) -> _Refused:
    return _Refused(f"there is no config file at {path}: `{_init_command(path)}` writes the annotated example "
                    f"there to edit, or give --config PATH")


def _init(path: Path) -> int:
    """The annotated example, where the installer's commands will look for it."""
    from intercom_protocol.yamlconfig import NotWritten, write_example

    try:
        write_example("intercom", "intercom.example.yaml", path)
    except NotWritten as exc:
        raise _Refused(str(exc)) from None
    print(f"Wrote {path}, the annotated example: edit hardware: to your wiring and calls.ring_groups to your "
          f"residents,")
    print(f"then pair with the server: intercom pair LINK{'' if str(path) == default_config() else f' --config {path}'} "
          f"(LINK from `intercom-server door add` on the server)")
    return 0


def _load(path: str) -> DoorConfig:
    if not Path(path).exists():
        raise _no_config(path)
    return door_config.load(path)


def _load_to_run(path: str) -> DoorConfig:
    """The config, and every hardware library it needs present, before anything starts."""
    from . import libraries

    config = _load(path)
    missing = libraries.missing(config)
    if missing:
        raise _Refused(str(missing[0]))
    return config


def _check_config(path: str) -> int:
    from . import libraries

    missing = libraries.missing(_load(path))
    for problem in missing:
        print(f"{path}: {problem}", file=sys.stderr)
    if missing:
        return 1
    print(f"{path}: ok")
    return 0


def _ctl(socket: Path, action: str) -> int:
    try:
        reply = asyncio.run(_send(socket, action))
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"intercom: no door station is running with the control socket {socket} (systemctl status "
              f"intercom); give --socket or --config if it uses another", file=sys.stderr)
        return 1
    except (TimeoutError, OSError) as exc:
        print(f"intercom: cannot reach the door station's control socket {socket}: "
              f"{getattr(exc, 'strerror', None) or exc or 'no answer'}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


async def _pair(config_path: Path, link_text: str) -> int:
    from . import pairing

    try:
        link = pairing.parse_link(link_text)
        plan = pairing.plan(config_path)
        redeemed = await pairing.redeem(link, plan.ca_file)
        pairing.write(plan, link, redeemed)
        user = redeemed["user"]
        print(f"Paired as {user['user_id']} ({user['display_name']}, site {user['site_id']}) with {link.base}")
        print(f"  access token: {plan.token_path} (mode 600)")
        print(f"  {config_path}: server.url {link.ws_url}, server.user_id {user['user_id']}")
        config = door_config.load(config_path)
        await pairing.check_connection(config.server_url, config.access_token, config.ca_file)
    except pairing.PairingError as exc:
        raise _Refused(str(exc)) from None
    print("  the server accepted the door's token")
    print(f"Next: intercom check-config {config_path}, then start the door (intercom run, or "
          f"systemctl restart intercom)")
    return 0


async def _selftest(config: DoorConfig, click_relay: bool) -> int:
    from . import selftest
    from .control import send_command

    try:
        await send_command(config.control_socket, "status", timeout_s=1)
    except (TimeoutError, OSError, ValueError):
        pass  # nobody answers: the hardware is free
    else:
        print("intercom: the door station is running and holds the hardware; stop it first "
              "(systemctl stop intercom)", file=sys.stderr)
        return 1
    report = await selftest.run(config, click_relay=click_relay)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


async def _send(path: Path, action: str) -> dict[str, Any]:
    from .control import send_command

    return await send_command(path, action)


if __name__ == "__main__":
    sys.exit(main())

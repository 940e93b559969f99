"""`intercom`: the door station daemon and the installer's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from intercom_protocol.yamlconfig import ConfigError

from . import eventloop

DEFAULT_CONFIG = "/etc/intercom/intercom.yaml"


async def _run(config_path: str) -> int:
    from . import config as door_config
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
    if args.socket:
        return Path(args.socket)
    from . import config as door_config

    return door_config.load(args.config).control_socket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intercom", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the door station")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p = sub.add_parser("check-config", help="check a config file; prints every problem with its line")
    p.add_argument("file")
    p = sub.add_parser("selftest", help="blink the LEDs, click the relay, play a tone, listen, take a picture")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--no-relay", action="store_true", help="do not click the door strike")
    p = sub.add_parser("ctl", help="talk to the running door station")
    p.add_argument("action", choices=("status", "press", "release", "hangup"))
    p.add_argument("--config", default=DEFAULT_CONFIG, help="read the socket path from this config")
    p.add_argument("--socket", help="the control socket (overrides --config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose is False:
        logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        if args.command == "run":
            try:
                return eventloop.run(_run(args.config))
            except OSError as exc:
                # A path or device that is not what the YAML says: one line, not a traceback.
                print(f"intercom: cannot start: {exc}", file=sys.stderr)
                return 1
        if args.command == "selftest":
            return asyncio.run(_selftest(args.config, not args.no_relay))
        if args.command == "check-config":
            from . import config as door_config

            door_config.load(args.file)
            print(f"{args.file}: ok")
            return 0
        try:
            reply = asyncio.run(_send(_socket_path(args), args.action))
        except (TimeoutError, OSError) as exc:
            print(f"intercom: cannot reach the door station's control socket: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


async def _selftest(config_path: str, click_relay: bool) -> int:
    from . import config as door_config
    from . import selftest
    from .control import send_command

    config = door_config.load(config_path)
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

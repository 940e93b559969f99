"""`intercom-sip`: the SIP gateway. `run` serves; `check-config` reads the YAML and stops;
`status` asks a running gateway; `init` writes the annotated example."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request
from pathlib import Path
from typing import Any

from intercom import eventloop
from intercom.sdnotify import ready_until_stopped
from intercom_protocol.yamlconfig import ConfigError

from .config import SipConfig

log = logging.getLogger("intercom.sip")

DEFAULT_CONFIG = "/etc/intercom/sip.yaml"


def _printer(as_json: bool) -> Any:
    """What happens, in the log (the journal) and, with --events, as JSON lines on stdout."""
    def report(event: str, body: dict[str, Any]) -> None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in body.items()))
        if as_json:  # for tests and tools: one JSON object a line, flushed at once
            print(json.dumps({"event": event, **body}), flush=True)
    return report


async def _run(config: SipConfig, events: bool) -> int:
    from .baresip_engine import BaresipEngine  # the SIP stack: chosen here, once
    from .gateway import Gateway

    gateway = Gateway(config, BaresipEngine(config.account, retry_s=config.retry_s), _printer(events))
    try:
        await gateway.start()
    except OSError as exc:
        await gateway.close()
        print(f"intercom-sip: cannot listen on {config.http_listen[0]}:{config.http_listen[1]}: {exc.strerror}",
              file=sys.stderr)
        return 1
    await ready_until_stopped(f"{len(config.phones)} phone(s)")
    await gateway.close()
    return 0


def _status(config: SipConfig) -> int:
    host, port = config.http_listen
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as resp:
            print(resp.read().decode())
    except OSError as exc:
        print(f"intercom-sip: no gateway answers on {host}:{port} ({exc}); is it running?", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intercom-sip", description="The SIP gateway: the house's phones ring for the door.")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"the gateway's YAML (default {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--events", action="store_true", help="print what happens as JSON lines on stdout")
    sub.add_parser("check-config", help="read the YAML, say what is wrong, and stop")
    sub.add_parser("status", help="ask the running gateway: its registration, each phone, each call")
    sub.add_parser("init", help="write the annotated example YAML (never over an existing file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = Path(args.config)
    if args.command == "init":
        from intercom_protocol.yamlconfig import NotWritten, write_example
        try:
            write_example("intercom_sip", "sip.example.yaml", path)
        except NotWritten as exc:
            print(f"intercom-sip: {exc}", file=sys.stderr)
            return 1
        print(f"Wrote {path}: fill in sip: (the registrar and the gateway's account) and phones:, then "
              f"intercom-sip --config {path} check-config")
        return 0
    if not path.exists():
        print(f"intercom-sip: no config file at {path}; write one with: intercom-sip --config {path} init",
              file=sys.stderr)
        return 2
    try:
        config = SipConfig.from_file(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{path}: OK ({len(config.phones)} phone(s), registrar {config.account.registrar or config.account.domain})")
        return 0
    if args.command == "status":
        return _status(config)
    return eventloop.run(_run(config, args.events))  # uvloop where it is installed


if __name__ == "__main__":
    sys.exit(main())

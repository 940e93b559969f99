"""`intercom-resident`: a resident's device on the command line (aiortc).

Signs in, waits for the door to ring, answers (or declines), records what it receives and
hangs up. Each step is printed as one JSON line on stdout for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .client import Policy, Resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intercom-resident", description=__doc__)
    parser.add_argument("--server", required=True, help="ws://HOST:PORT/v1/ws")
    parser.add_argument("--user", required=True)
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="access token (visible in ps: prefer --token-file)")
    token.add_argument("--token-file", type=Path)
    parser.add_argument("--device-id", help="stable id of this device; a new one each run if not given")
    parser.add_argument("--answer", choices=("auto", "decline", "ignore"), default="auto")
    parser.add_argument("--answer-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--hangup-after-frames", type=int, default=60, metavar="N",
                        help="hang up once N video frames were decoded (0: never)")
    parser.add_argument("--hangup-after", type=float, metavar="SECONDS", help="hang up this long after answering")
    parser.add_argument("--picture", type=Path, help="save the last received video frame here (PNG)")
    parser.add_argument("--once", action="store_true", help="exit after the first call ends")
    parser.add_argument("--open-door", action="store_true", help="open the door once the visitor is on screen")
    parser.add_argument("--look-outside", metavar="DOOR", help="call this door once signed in, to see outside")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    access_token = args.token or args.token_file.read_text().strip()
    policy = Policy(answer=args.answer, answer_delay_s=args.answer_delay,
                    hangup_after_frames=args.hangup_after_frames or None, hangup_after_s=args.hangup_after,
                    picture=args.picture, once=args.once, open_door=args.open_door, look_outside=args.look_outside)
    return asyncio.run(_run(args.server, args.user, access_token, args.device_id, policy))


def _print(event: str, body: dict[str, Any]) -> None:
    print(json.dumps({"event": event, "at": round(time.time(), 3), **body}), flush=True)


async def _run(server: str, user: str, token: str, device_id: str | None, policy: Policy) -> int:
    resident = Resident({"url": server, "user_id": user, "access_token": token, "device_id": device_id},
                        policy, _print)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, resident.done.set)
    await resident.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

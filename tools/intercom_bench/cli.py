"""`intercom-bench` (`make bench`): what visitors and residents feel, and what it costs.

Runs the server, door and resident as real processes on loopback, with the door's simulated
hardware, and writes `results.json` and `results.md` in the output directory (`bench/`).
Every part is bounded: the full run takes about six minutes on a 2-core machine; `--quick`
runs every part with tiny counts (the test suite's smoke test) in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from intercom_sim.postgres import Postgres

from . import capacity, media, press, profile, push, rtsp, sip
from .figures import machine
from .report import markdown, notes

PARTS = ("press", "answer", "cost", "message", "server", "push", "sip", "rtsp")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="intercom-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench"), help="where results go (default: bench)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: proves the benchmarks run, measures little")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--message-seconds", type=float, default=20.0, help="the visitor's message recorded")
    parser.add_argument("--calls", type=int, default=50, help="answered calls per camera path")
    parser.add_argument("--call-seconds", type=float, default=30.0)
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=100, help="door/phone pairs setting up calls, 8 a second each at most")
    parser.add_argument("--setup-seconds", type=float, default=30.0, help="for each of the two set-up phases")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="how long the idle devices stay signed in while the servers' CPU is measured")
    parser.add_argument("--setup-rate", type=float, default=400.0,
                        help="calls a second offered in the steady phase (the peak phase offers pairs x 8)")
    parser.add_argument("--matched-rate", type=float, default=100.0,
                        help="calls a second offered to one process and to the cluster alike, to compare their CPU per call")
    parser.add_argument("--push-presses", type=int, default=20, help="presses that wake 100 subscribed devices")
    parser.add_argument("--sip-calls", type=int, default=10, help="answered SIP calls per codec (G.722, G.711)")
    parser.add_argument("--sip-call-seconds", type=float, default=10.0)
    parser.add_argument("--rtsp-connects", type=int, default=30, help="RTSP connections timed to their first keyframe")
    parser.add_argument("--rtsp-seconds", type=float, default=10.0, help="each span the RTSP viewers' cost is measured")
    parser.add_argument("--cold-starts", type=int, default=10, help="app starts from a notification, in Chromium")
    args = parser.parse_args(argv)
    if args.quick:
        args.push_presses, args.cold_starts = 2, 1
        args.presses, args.calls, args.call_seconds, args.sizes = 3, 2, 2.0, "320x240"
        args.message_seconds = 3.0
        args.connections, args.pairs, args.setup_seconds, args.setup_rate, args.matched_rate = 50, 4, 1.0, 8.0, 4.0
        args.idle_seconds = 1.0
        args.sip_calls, args.sip_call_seconds = 1, 2.0
        args.rtsp_connects, args.rtsp_seconds = 3, 2.0
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = (args.out / "work").resolve()  # the door configs name their token files by absolute path
    shutil.rmtree(work, ignore_errors=True)
    parts = args.only or PARTS
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {name}", file=sys.stderr, flush=True)

    if "press" in parts:
        step(f"press to ring: {args.presses} presses")
        results["press_to_ring"] = await press.run(work / "press", args.presses)
    if "answer" in parts:
        step(f"answer to first frame: {args.calls} calls per camera path")
        results["answer_to_first_frame"] = await media.answer_to_first_frame(work / "answer", args.calls)
    if "cost" in parts:
        step(f"cost on the board: {len(args.sizes) * len(media.ENCODINGS)} calls of {args.call_seconds:g} s")
        results["call_cost"] = await media.call_cost(work / "cost", args.call_seconds, args.sizes)
        width, height = args.sizes[-1]
        step(f"where the door's time goes: one pass-through call of {args.call_seconds:g} s at {width}x{height}, py-spy")
        results["call_cost"]["profile"] = await profile.profile_call(work / "profile", args.call_seconds, width, height)
    if "message" in parts:
        step(f"a visitor's message of {args.message_seconds:g} s: the door's cost while it records")
        width, height = args.sizes[-1]
        results["message_cost"] = await media.message_cost(work / "message", args.message_seconds, width, height)
    if "server" in parts:
        step(f"server: {args.connections} idle devices, then 2 x {args.setup_seconds:g} s of call set-ups")
        results["capacity"] = await capacity.run(work / "server", args.connections, args.pairs, args.setup_seconds,
                                                 args.setup_rate, hold_s=args.idle_seconds,
                                                 matched_rate=args.matched_rate)
        step(f"server on PostgreSQL: 2 x {args.setup_seconds:g} s of call set-ups")
        database = Postgres(durable=True)  # fsync at each commit, as SQLite's synchronous=FULL
        try:
            url = database.new_database()
            results["capacity_postgresql"] = await capacity.run(work / "server-postgresql", 0, args.pairs,
                                                                args.setup_seconds, args.setup_rate, url)
        finally:
            database.stop()
        step(f"server, {capacity.CLUSTER} processes on PostgreSQL and Redis behind HAProxy: {args.connections} idle "
             f"devices, then 2 x {args.setup_seconds:g} s of call set-ups")
        results["capacity_cluster"] = await capacity.run_cluster(work / "server-cluster", args.connections, args.pairs,
                                                                 args.setup_seconds, args.setup_rate, capacity.CLUSTER,
                                                                 hold_s=args.idle_seconds,
                                                                 matched_rate=args.matched_rate)
    if "push" in parts:
        step(f"Web Push: {args.push_presses} presses to {push.RESIDENTS * push.DEVICES_EACH} devices, "
             f"{args.cold_starts} app starts from a notification")
        results["push"] = await push.run(work / "push", args.push_presses, args.cold_starts)
    if "sip" in parts and importlib.util.find_spec("pjsua2") is None:
        step("SIP gateway: skipped, its phones need pjsua2-python (wheels for x86_64 only)")
    elif "sip" in parts:
        step(f"SIP gateway: {args.sip_calls} calls of {args.sip_call_seconds:g} s per codec, kamailio and PJSIP phones")
        results["sip"] = await sip.run(work / "sip", args.sip_calls, args.sip_call_seconds)
    if "rtsp" in parts and importlib.util.find_spec("gi") is None:
        step("RTSP: skipped, GStreamer's RTSP server needs PyGObject (intercom[rtsp])")
    elif "rtsp" in parts:
        step(f"RTSP: {args.rtsp_connects} connections to the first keyframe, then 0, 1 and 3 viewers beside a call "
             f"for {args.rtsp_seconds:g} s each")
        results["rtsp"] = await rtsp.run(work / "rtsp", args.rtsp_connects, args.rtsp_seconds)
    results["notes"] = notes(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    step("done")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

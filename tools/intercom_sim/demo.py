"""`make demo`: the web app on a phone (or a desktop browser) against a simulated door.

Starts the signaling server on 127.0.0.1, a door station with a simulated bell, camera, audio
and door relay, and makes a resident with a one-time invite link. Open the link, then ring
the bell by pressing Enter here or with the button on the door panel page; both press the
button through the door's control socket (`intercom ctl press`), the path of the GPIO pin.

`--auto` runs the earlier unattended demo instead: a command-line resident (aiortc) answers
by itself, and its last received video frame is saved as demo-output/received.png.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .harness import Door, Installation


def say(text: str) -> None:
    print(text, flush=True)


async def demo(out: Path, frames: int) -> int:
    if out.exists():
        shutil.rmtree(out)
    site = Installation(out)
    try:
        say("1. Starting the signaling server on 127.0.0.1 ...")
        await site.start_server()
        say(f"   listening at {site.http_url} (data and Api-Token in {site.data_dir})")

        say("2. Signing in resident 'alice' (an aiortc client that answers automatically) ...")
        picture = out / "received.png"
        alice = await site.start_resident("alice", "--once", "--picture", str(picture),
                                          "--hangup-after-frames", str(frames), name="Alice")

        say("3. Starting the door station 'frontdoor' on simulated pins, camera and audio ...")
        door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
        say(f"   config: {door.config_path}")
        say(f"   control socket: {door.socket}")

        say("4. Pressing the bell: intercom ctl press")
        start = time.monotonic()
        alice.on_line = lambda line: _narrate(line, start)
        await door.ring()
        ended = await alice.wait_for_event("ended", timeout=60)

        status = await door.wait_status(lambda s: s["state"] == "idle" and s["last_call"] is not None)
        _, record = await site.api("GET", f"/v1/direct_calls/{ended['call_id']}")
        say("5. Result")
        say(f"   resident decoded {ended['video_frames']} video frames ({ended['distinct_frames']} distinct, "
            f"{ended['width']}x{ended['height']}), first one {ended['first_frame_after_accept_s'] * 1000:.0f} ms "
            f"after answering")
        say(f"   resident heard the door at {ended['audio_peak_dbfs']} dBFS peak over {ended['audio_frames']} frames")
        say(f"   door heard the resident: {status['speaker']['voice_frames']} frames of voice played on ALSA "
            f"'{status['speaker']['device']}' at {status['speaker']['peak_dbfs']} dBFS peak")
        say(f"   door is {status['state']}; LED pattern {status['pins']['status_led']['pattern']}")
        say(f"   server's call record: {record['end_reason']}, {record['duration_s']} s, "
            f"answered by {record['accepted_by']['user_id']}")
        say(f"   the picture the resident received: {picture}")
        say(f"   logs of every process: {site.logs}")
        ok = (ended["reason"] == "completed" and record["end_reason"] == "completed"
              and ended["distinct_frames"] > 1 and picture.exists())
        say("Demo finished: the call worked end to end." if ok else "Demo finished, but something was off (see above).")
        return 0 if ok else 1
    except (TimeoutError, RuntimeError) as exc:
        say(f"Demo failed: {exc}")
        return 1
    finally:
        await site.close()


PANEL = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Door panel (simulated)</title>
<link rel="stylesheet" href="/panel.css"></head><body><main>
<h1>Front door</h1><p class="note">The simulated door station's panel</p>
<form method="post" action="/press"><button type="submit">&#x1F514; Ring the bell</button></form>
<dl><dt>State</dt><dd>{state}</dd><dt>Door strike</dt><dd>{relay}</dd><dt>Status LED</dt><dd>{led}</dd></dl>
<p class="note"><a href="/">Refresh</a></p></main></body></html>"""
PANEL_CSS = """body{font:18px system-ui,sans-serif;background:#222;color:#eee;display:flex;justify-content:center}
main{max-width:420px;padding:24px;text-align:center}button{font:inherit;font-size:1.4em;padding:1em 1.4em;
border-radius:18px;border:0;background:#e0a526;cursor:pointer}dl{display:grid;grid-template-columns:auto auto;
gap:.4em 1em;text-align:left;margin:2em auto;width:max-content}dt{color:#aaa}.note{color:#aaa}a{color:#9cf}"""


async def door_panel(door: Door) -> web.AppRunner:
    """A page with the door's bell button, for a second window or the installer's laptop."""

    async def show(request: web.Request) -> web.Response:
        status = await door.ctl("status")
        relay = status["pins"]["relay"]
        page = PANEL.format(state=html.escape(status["state"]),
                            relay=f"{'OPEN' if relay['energised'] else 'locked'}, opened {relay['pulses']} time(s)",
                            led=html.escape(str(status["pins"]["status_led"]["pattern"])))
        return web.Response(text=page, content_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'"})

    async def css(request: web.Request) -> web.Response:
        return web.Response(text=PANEL_CSS, content_type="text/css")

    async def ring(request: web.Request) -> web.Response:
        await door.ring()
        raise web.HTTPSeeOther("/")

    app = web.Application()
    app.router.add_get("/", show)
    app.router.add_get("/panel.css", css)
    app.router.add_post("/press", ring)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def web_demo(out: Path, port: int) -> int:
    if out.exists():
        shutil.rmtree(out)
    site = Installation(out)
    panel = None
    try:
        say("Starting the signaling server, which also serves the resident web app ...")
        await site.start_server(port=port)
        invite = await site.invite("alice", "Alice")
        door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}],
                                     settings={"hardware": {"pins": {"relay": 22, "relay_pulse_s": 3}}})
        panel = await door_panel(door)
        panel_url = f"http://127.0.0.1:{panel.addresses[0][1]}/"
        say("")
        say(f"  Web app:      {site.http_url}/")
        say(f"  Invite link:  {invite}")
        say("                (signs one browser in as Alice, once; open it in Chromium, Firefox or a phone)")
        say(f"  Door panel:   {panel_url}")
        say(f"  Logs:         {site.logs}")
        say("")
        say("Press Enter to ring the bell, or type q and Enter to stop.")
        say("(Phones other than this machine need the server on the network with https: see README.)")
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if line == "":  # no terminal: keep running until interrupted
                await asyncio.Event().wait()
            if line.strip().lower() in ("q", "quit", "exit"):
                return 0
            say(await press(door))
    except (TimeoutError, RuntimeError) as exc:
        say(f"Demo failed: {exc}")
        return 1
    finally:
        if panel is not None:
            await panel.cleanup()
        await site.close()


async def press(door: Door) -> str:
    """Press the bell and say what really happened: rung phones, nobody to ring, or a press
    the door ignored, and why."""
    before = await door.ctl("status")
    await door.ring()

    def settled(s: dict[str, Any]) -> bool:
        return (s["ignored_presses"] > before["ignored_presses"] or not s["server"]["connected"]
                or s["calls_placed"] > before["calls_placed"] and s["devices_rung"] is not None)

    status = await door.wait_status(settled, timeout=10)
    if status["ignored_presses"] > before["ignored_presses"]:
        return f"  the door ignored the press: {status['last_ignored']}"
    if not status["server"]["connected"]:
        return "  ding dong, but the door cannot reach the server: it will report the press when it is back"
    if status["devices_rung"] == 0:
        return "  ding dong, but nobody is signed in yet: open the invite link (it rings no phone until then)"
    return f"  ding dong: the door is calling, {status['devices_rung']} device(s) ringing"


def port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:port (another demo, a server)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _narrate(line: str, start: float) -> None:
    import json

    try:
        event: dict[str, Any] = json.loads(line)
    except ValueError:
        return
    at = f"   +{(time.monotonic() - start) * 1000:6.0f} ms  resident:"
    kind = event.get("event")
    text = {
        "incoming": lambda: f"phone rings: {event['caller']['display_name']} is calling",
        "answered": lambda: "answered",
        "media_connected": lambda: "media connected (ICE + DTLS)",
        "first_frame": lambda: f"first video frame decoded ({event['width']}x{event['height']})",
        "hanging_up": lambda: "hangs up",
        "ended": lambda: f"call ended: {event['reason']}",
    }.get(kind or "")
    if text:
        say(f"{at} {text()}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m intercom_sim.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--frames", type=int, default=90, help="with --auto: video frames the resident watches")
    parser.add_argument("--auto", action="store_true", help="an unattended call with a command-line resident")
    parser.add_argument("--port", type=int, default=8080, help="the server's port (0: any free one)")
    args = parser.parse_args()
    if not args.auto and args.port and port_taken(args.port):
        print(f"demo: port {args.port} is in use (another demo or server?): stop it, or choose another port "
              f"with make demo DEMO_ARGS='--port {args.port + 1}'", file=sys.stderr)
        return 1
    try:
        if args.auto:
            return asyncio.run(demo(args.out.resolve(), args.frames))
        return asyncio.run(web_demo(args.out.resolve(), args.port))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: a whole call on simulated hardware, narrated.

Starts the signaling server on 127.0.0.1, a door station with a simulated bell, camera and
audio, and a resident client that answers by itself; presses the bell through the door's
control socket (`intercom ctl press`, the same path as the GPIO button) and shows each step.
The resident's last received video frame is saved as demo-output/received.png.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .harness import Installation


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
        await door.ctl("press")
        await door.ctl("release")
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
    parser.add_argument("--frames", type=int, default=90, help="video frames the resident watches before hanging up")
    args = parser.parse_args()
    return asyncio.run(demo(args.out.resolve(), args.frames))


if __name__ == "__main__":
    sys.exit(main())

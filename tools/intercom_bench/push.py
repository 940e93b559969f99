"""Web Push: how soon a press leaves the server for the phones whose app is closed, and how
soon the app opened from the notification shows the visitor.

- Press to push: a door rings a group of residents with 100 subscribed devices and no app
  open; the figure is from the press (the bell's GPIO event at the door) to each request
  arriving at a push service stand-in on loopback, which is when it left the server. What a
  browser vendor's push service then takes to wake a phone is theirs, not ours, and not here.
- Cold start: Chromium with the app closed gets the ring through its service worker, the
  notification's Answer is tapped, and the app opens at its answer address; the figure is
  from that page's navigation start to the first video frame it presents (the browser's own
  `performance.now()`), so it holds the page load, sign-in, the ring's replay, the answer's
  SDP and ICE, and the first keyframe.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from intercom_sim.browser import BROWSER_ARGS, CHROMIUM, GRANT_MICROPHONE, ServiceWorkerPush
from intercom_sim.harness import Installation
from intercom_sim.pushservice import Delivery, PushService

from .figures import summary
from .scene import Bell, installation

RESIDENTS, DEVICES_EACH = 10, 10

#: The page notes when its first video frame is presented (an init script is not subject to
#: the app's Content-Security-Policy: the DevTools protocol injects it).
FIRST_FRAME = """
window.__firstFrame = null;
document.addEventListener("DOMContentLoaded", () => {
  const video = document.getElementById("remote-video");
  if (video && video.requestVideoFrameCallback) {
    video.requestVideoFrameCallback(() => { window.__firstFrame = performance.now(); });
  }
});
"""


async def run(root: Path, presses: int, cold_starts: int) -> dict[str, Any]:
    service = await PushService().start()
    try:
        async with installation(root, settings={"push": {"local_hosts": ["127.0.0.1"]}}) as site:
            status, key = await site.api("GET", "/v1/push/public_key")
            service.server_key = key["public_key"]
            result = {"devices": RESIDENTS * DEVICES_EACH, **await _press_to_push(site, service, presses)}
            result["cold_start"] = await _cold_start(site, service, cold_starts)
            result["refused"] = len(service.refused)
            return result
    finally:
        await service.close()


async def _next(service: PushService, kind: str) -> Delivery:
    """The next delivery of this kind; others (a missed call after a hang-up) are passed over."""
    while True:
        delivery = await service.next(timeout=30)
        if delivery.message["type"] == kind:
            return delivery


async def _press_to_push(site: Installation, service: PushService, presses: int) -> dict[str, Any]:
    residents = [f"r{n}" for n in range(RESIDENTS)]
    async with aiohttp.ClientSession() as http:
        for resident in residents:
            token = (await site.add_user(resident, "resident", resident.upper())).read_text().strip()
            for n in range(DEVICES_EACH):
                device = f"{resident}-phone{n}"
                async with http.put(f"{site.http_url}/v1/me/devices/{device}/push", json=service.subscribe(device),
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 200, await resp.text()
    door = await site.start_door("front", [{"residents": residents}])
    bell = Bell(door)
    every: list[float] = []
    first: list[float] = []
    last: list[float] = []
    devices = RESIDENTS * DEVICES_EACH
    try:
        for _ in range(presses):
            pressed = await bell.press()
            arrivals = [(await _next(service, "ring")).at for _ in range(devices)]
            every += [(at - pressed) * 1000 for at in arrivals]
            first.append((min(arrivals) - pressed) * 1000)
            last.append((max(arrivals) - pressed) * 1000)
            await bell.ctl.command("hangup")
            for _ in range(devices):
                await _next(service, "missed")  # the visitor left: every phone is told
            await bell.until_idle()
            await bell.release()
    finally:
        bell.close()
        await site.stop(door.process)
    return {"presses": presses, "press_to_push_ms": summary(every), "press_to_first_push_ms": summary(first),
            "press_to_last_push_ms": summary(last)}


async def _cold_start(site: Installation, service: PushService, count: int) -> dict[str, Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return {"not_run": "playwright is not installed (make bench installs it with the test extras)"}
    if not Path(CHROMIUM).exists():
        return {"not_run": f"{CHROMIUM} is missing (make bench installs Debian's chromium)"}
    invite = await site.invite("alice", "Alice")
    door = await site.start_door("back", [{"residents": ["alice"], "timeout_s": 60}], name="Back door")
    bell = Bell(door)
    samples: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*BROWSER_ARGS, GRANT_MICROPHONE])
        try:
            context = await browser.new_context()
            await context.grant_permissions(["notifications"], origin=site.http_url)
            await context.add_init_script(FIRST_FRAME)
            page = await context.new_page()
            sw = ServiceWorkerPush(page, site.http_url)
            await sw.attach()
            await page.goto(invite)
            await _until(page, "window.intercom && window.intercom.online")
            session = await page.evaluate("JSON.parse(localStorage.getItem('intercom.session'))")
            async with aiohttp.ClientSession() as http:
                async with http.put(f"{site.http_url}/v1/me/devices/{session['device_id']}/push",
                                    json=service.subscribe(session["device_id"]),
                                    headers={"Authorization": f"Bearer {session['access_token']}"}) as resp:
                    assert resp.status == 200, await resp.text()
            for _ in range(count):
                await page.goto("about:blank")  # the app is closed
                await bell.press()
                ring = await _next(service, "ring")
                tag = f"call-{ring.message['call_id']}"
                await sw.push(ring.message, tag)
                url = await sw.tap(tag, "answer")
                await page.goto(site.http_url + str(url))
                samples.append(float(await _until(page, "window.__firstFrame")))
                await page.locator("#hangup").click()
                await bell.until_idle()
                await bell.release()
        finally:
            await browser.close()
            bell.close()
    return {"starts": count, "to_first_frame_ms": summary(samples)}


async def _until(page: Any, expression: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await page.evaluate(expression)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout_s} s")
        await asyncio.sleep(0.01)
    return value

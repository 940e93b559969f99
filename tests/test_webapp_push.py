"""A phone whose app is closed rings by Web Push: the real app and its real service worker in
Debian's Chromium, the real server and door daemons, and a push service stand-in.

What this machine's browser cannot do offline is stood in for at exactly two points, and only
there: the browser's own push service (`PushManager.subscribe` is tried for real, and fails
here, as it must without Google's servers; then it returns the stand-in's subscription), and
the delivery from that service into the browser, which the DevTools protocol does
(`ServiceWorker.deliverPushMessage`) with the message the stand-in decrypted. A tap on a
notification cannot be made trusted from outside the browser, so the worker's click handler
runs for an untrusted event and the window it asks for is opened by the test.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intercom_sim.browser import STAND_IN_PUSH_MANAGER, ServiceWorkerPush
from intercom_sim.harness import Door, Installation
from intercom_sim.pushservice import Delivery, PushService

from .test_webapp import Phone

pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

#: What Chromium logs when the app's real subscribe fails in a Playwright (incognito) profile;
#: in a normal profile the browser tries Google's push service instead, which is not reachable here.
INCOGNITO_PUSH = "Chrome currently does not support the Push API in incognito mode"


@pytest.fixture
async def pushes() -> AsyncIterator[PushService]:
    service = await PushService().start()
    yield service
    await service.close()


@pytest.fixture
async def push_site(tmp_path: Path, pushes: PushService) -> AsyncIterator[Installation]:
    installation = Installation(tmp_path)
    await installation.start_server(settings={"push": {"local_hosts": ["127.0.0.1"]}})
    status, key = await installation.api("GET", "/v1/push/public_key")
    assert status == 200
    pushes.server_key = key["public_key"]
    try:
        yield installation
    finally:
        await installation.close()


class LockedPhone(Phone):
    """A phone whose notifications the test sees, through its service worker."""

    def __init__(self, name: str, page: Any, origin: str) -> None:
        super().__init__(name, page, origin)
        self.sw = ServiceWorkerPush(page, origin)

    async def switch_push_on(self, pushes: PushService) -> str:
        """Returns the app's device id."""
        page = self.page
        await page.locator("#push-state").filter(has_text="Off").wait_for(timeout=10000)
        # The real subscribe: this browser has no push service to reach, and the app says so.
        await page.locator("#push-switch").click()
        await page.locator("#push-state").filter(has_text="Could not switch it on: the browser's push service "
                                                           "refused").wait_for(timeout=10000)
        assert not await page.locator("#push-switch").is_checked()
        device_id = str(await page.evaluate("JSON.parse(localStorage.getItem('intercom.session')).device_id"))
        await page.evaluate(STAND_IN_PUSH_MANAGER, pushes.subscribe(device_id))
        await page.locator("#push-switch").click()
        await page.locator("#push-state").filter(has_text="On: this phone rings when the app is closed").wait_for(
            timeout=10000)
        assert await page.locator("#push-switch").is_checked()
        await self.shot("push-switch-on")
        return device_id

    async def close_app(self) -> None:
        """The app is closed: no page of its origin is open (the tab shows something else)."""
        await self.page.goto("about:blank")


def problems(phone: Phone) -> list[str]:
    return [p for p in phone.problems if INCOGNITO_PUSH not in p]


async def locked_phone(browser: Any, site: Installation, name: str) -> LockedPhone:
    ctx = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    await ctx.grant_permissions(["notifications"], origin=site.http_url)  # the resident taps "Allow"
    phone = LockedPhone(name, await ctx.new_page(), site.http_url)
    await phone.sw.attach()
    return phone


async def next_for(pushes: PushService, kind: str) -> Delivery:
    delivery = await pushes.next(timeout=20)
    assert delivery.message["type"] == kind, delivery.message
    return delivery


async def alice_with_push(site: Installation, pushes: PushService, browser: Any) -> tuple[Door, LockedPhone, str]:
    """A front door ringing Alice, whose phone is signed in and rings when its app is closed."""
    invite = await site.invite("alice", "Alice")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    alice = await locked_phone(browser, site, "alice")
    await alice.sign_in(invite)
    return door, alice, await alice.switch_push_on(pushes)


async def test_a_locked_phone_rings_with_the_visitors_picture_and_opens_straight_into_the_call(
        push_site: Installation, pushes: PushService, browser: Any) -> None:
    site = push_site
    door, alice, device_id = await alice_with_push(site, pushes, browser)

    await alice.page.locator("#push-test").click()
    test = await next_for(pushes, "test")
    assert test.message["device_id"] == device_id
    await alice.sw.push(test.message, "intercom-test", "n.title === 'Intercom test'")

    await alice.close_app()
    await door.ring()
    ring = await next_for(pushes, "ring")
    call_id = ring.message["call_id"]
    assert ring.name == device_id and ring.topic == call_id and ring.urgency == "high"
    tag = f"call-{call_id}"
    await alice.sw.push(ring.message, tag)
    shown = await alice.sw.notification(tag, "n.image.startsWith('data:image/jpeg')")
    assert shown["title"] == "Front door" and shown["body"].startswith("Someone is at the door · ")
    assert shown["actions"] == ["answer", "decline"] and shown["requireInteraction"]
    assert shown["vibrate"] and shown["data"]["type"] == "ring"
    await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "ringing")

    url = await alice.sw.tap(tag, "answer")
    assert url == f"/#answer={call_id}"
    await alice.sw.gone(tag)  # the tapped ring is closed
    await alice.page.goto(site.http_url + url)
    video = await alice.wait_frames(10)
    assert video["width"] == 640
    status = await door.wait_status(lambda s: s["state"] == "connected")
    assert status["call"]["peer"]["user_id"] == "alice"
    assert await alice.page.locator("#ring-screen").is_hidden(), "answered already: no second tap"
    await alice.shot("answered-from-notification")
    await alice.page.locator("#hangup").click()
    await door.wait_status(lambda s: s["state"] == "idle")
    assert problems(alice) == []


async def test_a_notification_declines_and_is_replaced_when_answered_elsewhere_or_missed(
        push_site: Installation, pushes: PushService, browser: Any) -> None:
    site = push_site
    invite = await site.invite("alice", "Alice")
    front = await site.start_door("frontdoor", [{"residents": ["alice", "bob"], "timeout_s": 30}])
    back = await site.start_door("backdoor", [{"residents": ["alice"], "timeout_s": 2}], name="Back door")
    alice = await locked_phone(browser, site, "alice")
    await alice.sign_in(invite)
    await alice.switch_push_on(pushes)
    await alice.close_app()

    # Decline on the notification: the app is not opened, the visitor hears that nobody comes.
    await front.ring()
    ring = await next_for(pushes, "ring")
    tag = f"call-{ring.message['call_id']}"
    await alice.sw.push(ring.message, tag)
    assert await alice.sw.tap(tag, "decline") is None
    await front.wait_status(lambda s: s["state"] == "idle" and s["last_call"]["end_reason"] == "declined")
    await alice.sw.gone(tag)
    # The push service delivers the ring again: the declined call does not ring again. (The
    # worker takes a ring for another call through the same steps after it.)
    await alice.sw.deliver(ring.message)
    marker = {**ring.message, "call_id": "call_after", "snapshot_url": None}
    await alice.sw.push(marker, "call-call_after")
    assert await alice.sw.notifications(tag) == []

    # Bob answers on his device: Alice's ring becomes "Answered by Bob".
    await site.start_resident("bob", "--answer", "auto", "--hangup-after-frames", "1000", name="Bob")
    await front.ring()
    ring = await next_for(pushes, "ring")
    answered = await next_for(pushes, "answered")
    tag = f"call-{ring.message['call_id']}"
    await alice.sw.push(ring.message, tag, "n.data.type === 'ring'")
    shown = await alice.sw.push(answered.message, tag, "n.data.type === 'answered'")
    assert shown["title"] == "Answered by Bob" and shown["body"].startswith("Front door at ")
    await alice.sw.deliver(ring.message)  # a ring that arrives late is never shown over it
    await alice.sw.deliver(answered.message)
    shown = await alice.sw.notification(tag, "n.data.type === 'answered'")
    assert len(await alice.sw.notifications(tag)) == 1
    await front.ctl("hangup")

    # Nobody answers at the back door: "Missed: Back door at HH:MM", with the picture.
    await back.ring()
    ring = await next_for(pushes, "ring")
    tag = f"call-{ring.message['call_id']}"
    await alice.sw.push(ring.message, tag, "n.data.type === 'ring'")
    missed = await next_for(pushes, "missed")
    assert missed.message["call_id"] == ring.message["call_id"] and missed.topic == ring.topic
    shown = await alice.sw.push(missed.message, tag, "n.data.type === 'missed'")
    assert shown["title"].startswith("Missed: Back door at ") and shown["image"].startswith("data:image/jpeg")
    assert problems(alice) == []


async def test_the_open_app_rings_on_screen_and_shows_no_second_ring(
        push_site: Installation, pushes: PushService, browser: Any) -> None:
    door, alice, _ = await alice_with_push(push_site, pushes, browser)
    await door.ring()
    ring = await next_for(pushes, "ring")
    await alice.page.locator("#ring-screen").wait_for(state="visible", timeout=10000)
    await alice.sw.deliver(ring.message)
    # The worker has handled the push once the test notification sent after it is shown (the
    # button is under the ring screen; the test presses it from the page).
    await alice.page.evaluate("document.getElementById('push-test').click()")
    await alice.sw.push((await next_for(pushes, "test")).message, "intercom-test")
    assert await alice.sw.notifications(f"call-{ring.message['call_id']}") == []
    await alice.page.locator("#decline").click()
    await door.wait_status(lambda s: s["state"] == "idle")
    assert problems(alice) == []


def lan_address() -> str | None:
    """This machine's address on its network (not loopback): a page there is not a secure context."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out.stdout)
    return found.group(1) if found else None


async def test_over_plain_http_the_switch_says_why_it_cannot_be_on(tmp_path: Path, browser: Any) -> None:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    site = Installation(tmp_path)
    await site.start_server(settings={"listen": {"host": "0.0.0.0"}})
    try:
        origin = f"http://{address}:{site.http_url.rsplit(':', 1)[1]}"
        invite = (await site.invite("alice")).replace(site.http_url, origin)
        context = await browser.new_context()
        alice = Phone("alice", await context.new_page(), origin)
        await alice.sign_in(invite)
        await alice.page.locator("#push-state").filter(has_text="Not over plain http").wait_for(timeout=10000)
        assert await alice.page.locator("#push-switch").is_disabled()
        assert await alice.page.locator("#push-test").is_hidden()
        # Chromium says it ignores the Cross-Origin-Opener-Policy header on such an origin; the
        # header is for https, and nothing else may go wrong.
        assert [p for p in alice.problems if "Cross-Origin-Opener-Policy header has been ignored" not in p] == []
    finally:
        await site.close()


#: The browser's autoplay rule, as a phone applies it to a page opened from a notification:
#: no sound before the first touch. (Chromium cannot be made to apply it under Playwright, whose
#: every evaluation counts as a user gesture, so the page's play() is given the rule here.)
NO_SOUND_BEFORE_A_TOUCH = """
(() => {
  let touched = false;
  addEventListener("pointerdown", () => { touched = true; }, { capture: true });
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (this.muted || touched) return play.call(this);
    return Promise.reject(new DOMException("play() failed because the user didn't interact with the document first.",
                                           "NotAllowedError"));
  };
})();
"""


async def test_a_call_from_a_notification_shows_the_visitor_before_the_first_touch(
        push_site: Installation, pushes: PushService, browser: Any) -> None:
    """The visitor is shown at once, silent, and one tap lets the sound in; before, the video
    did not play at all until the resident found something to touch."""
    door, alice, _ = await alice_with_push(push_site, pushes, browser)
    await alice.close_app()
    await door.ring()
    ring = await next_for(pushes, "ring")
    tag = f"call-{ring.message['call_id']}"
    await alice.sw.push(ring.message, tag)
    url = await alice.sw.tap(tag, "answer")
    # A window of its own, as the notification opens it.
    await alice.page.context.add_init_script(NO_SOUND_BEFORE_A_TOUCH)
    opened = Phone("alice", await alice.page.context.new_page(), push_site.http_url)
    await opened.page.goto(push_site.http_url + str(url))
    await opened.page.locator("#unmute-visitor").wait_for(state="visible", timeout=15000)
    await opened.wait_frames(5)
    await opened.video_playing()
    assert await opened.page.evaluate("document.getElementById('remote-video').muted")
    await opened.page.locator("#unmute-visitor").click()
    await opened.page.locator("#unmute-visitor").wait_for(state="hidden", timeout=5000)
    assert not await opened.page.evaluate("document.getElementById('remote-video').muted")
    await opened.video_playing()
    await opened.page.locator("#hangup").click()
    await door.wait_status(lambda s: s["state"] == "idle")
    assert problems(alice) == [] and problems(opened) == []

"""Web Push into a real Chromium, for the tests and the bench: what the browser vendor's push
service would do, done through the DevTools protocol.

Chromium cannot reach its vendor's push service here, so a push message the stand-in
(`pushservice.py`) decrypted is handed to the app's service worker with
`ServiceWorker.deliverPushMessage`, exactly as the browser hands over what its push service
delivered. A tap on a notification cannot be made trusted from outside the browser: `tap`
runs the worker's click handler for an untrusted event and records the window it asks for,
which the caller then opens.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("intercom.sim.browser")

#: Debian's Chromium (`make test` installs it); Playwright's own browser download is never used.
CHROMIUM = "/usr/bin/chromium"
#: A phone as a test can have one: Chromium's fake camera and microphone. Local addresses are
#: not hidden behind mDNS names, which this sandbox cannot resolve.
BROWSER_ARGS = ["--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                "--disable-features=WebRtcHideLocalIpsWithMdns", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRANT_MICROPHONE = "--use-fake-ui-for-media-stream"  # the user taps "Allow"; without it Chromium refuses

#: PushManager from here on hands out this subscription (the stand-in's), as a browser
#: whose push service answered would.
STAND_IN_PUSH_MANAGER = """(sub) => {
  let current = null;
  const made = { endpoint: sub.endpoint, options: { applicationServerKey: null }, toJSON: () => sub,
                 unsubscribe: async () => { current = null; return true; } };
  PushManager.prototype.subscribe = async () => (current = made);
  PushManager.prototype.getSubscription = async () => current;
}"""

NOTIFICATIONS = """(tag) => self.registration.getNotifications(tag ? { tag } : {}).then((shown) => shown.map((n) => ({
  title: n.title, body: n.body, tag: n.tag, image: n.image.slice(0, 23), actions: n.actions.map((a) => a.action),
  requireInteraction: n.requireInteraction, vibrate: Array.from(n.vibrate || []), data: n.data })))"""

TAP = """async ([tag, action]) => {
  self.__opened = null;
  Clients.prototype.openWindow = async (url) => { self.__opened = url; return null; };
  const [shown] = await self.registration.getNotifications({ tag });
  try {
    self.dispatchEvent(new NotificationEvent("notificationclick", { notification: shown, action }));
  } catch (error) {
    // waitUntil refuses an untrusted event, after the handler has started its work
  }
  return true;
}"""


class ServiceWorkerPush:
    """One page's browser profile: its app's service worker, and the DevTools session that
    delivers push messages to it (kept when the page goes to another site, as when the app
    is closed)."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.registrations: list[dict[str, Any]] = []

    async def attach(self) -> None:
        self.cdp = await self.page.context.new_cdp_session(self.page)
        self.cdp.on("ServiceWorker.workerRegistrationUpdated",
                    lambda event: self.registrations.extend(event["registrations"]))
        await self.cdp.send("ServiceWorker.enable")

    @property
    def worker(self) -> Any:
        workers = self.page.context.service_workers
        assert workers, "the app's service worker is not running"
        return workers[0]

    async def deliver(self, message: dict[str, Any]) -> None:
        scope = next(r for r in self.registrations if r["scopeURL"].startswith(self.origin) and not r["isDeleted"])
        await self.cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": self.origin, "registrationId": scope["registrationId"], "data": json.dumps(message)})

    async def push(self, message: dict[str, Any], tag: str, predicate: str = "true",
                   timeout_s: float = 15) -> dict[str, Any]:
        """Deliver a push message; returns its notification once shown (see `notification`).

        DevTools answers a delivery before the worker has it and never reports a failure, and
        on a loaded machine the one delivery was seen to go nowhere: a message whose
        notification is not shown within a few seconds is delivered again, as a push service
        delivers again what the browser did not acknowledge. A notification replaces the one
        with its tag, so a second delivery shows nothing twice."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            await self.deliver(message)
            try:
                return await self.notification(tag, predicate, timeout_s if attempt == attempts else 5)
            except TimeoutError:
                if attempt == attempts:
                    raise
                log.warning("push to %s not shown after 5 s: delivered again", tag)
        raise AssertionError("unreachable")

    async def notifications(self, tag: str | None = None) -> list[dict[str, Any]]:
        return list(await self.worker.evaluate(NOTIFICATIONS, tag))

    async def notification(self, tag: str, predicate: str = "true", timeout_s: float = 15) -> dict[str, Any]:
        """The notification with this tag, once `predicate` (JS, of `n`) holds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            shown = await self.notifications(tag)
            found = await self.worker.evaluate(f"(shown) => shown.find((n) => {predicate}) || null", shown)
            if found:
                return dict(found)
            if loop.time() > deadline:
                raise TimeoutError(f"no notification {tag} with {predicate}; shown: {shown}")
            await asyncio.sleep(0.02)

    async def gone(self, tag: str, timeout_s: float = 10) -> None:
        """Until no notification with this tag is shown (closing one takes effect a moment later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while shown := await self.notifications(tag):
            if loop.time() > deadline:
                raise TimeoutError(f"notification {tag} is still shown: {shown}")
            await asyncio.sleep(0.02)

    async def tap(self, tag: str, action: str, timeout_s: float = 10) -> str | None:
        """Tap the notification (`action` "" for its body); returns the address it opens."""
        await self.worker.evaluate(TAP, [tag, action])
        if action == "decline":
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (opened := await self.worker.evaluate("self.__opened")) is None:
            if loop.time() > deadline:
                raise TimeoutError("the notification's tap opened nothing")
            await asyncio.sleep(0.02)
        return str(opened)

"""Webhooks to a local receiver: signed as Standard Webhooks says (checked with its reference
library), in order, retried, switched off when a receiver always fails, and never in the way
of a ring."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from intercom_server.settings import HubSettings
from intercom_server.webhooks import WebhookSettings

from .conftest import ANSWER, OFFER

FAST = WebhookSettings(timeout_s=5.0, retry_for_s=30.0, first_retry_s=0.05, disable_after=2)


@dataclass
class Receiver:
    """A web receiver that answers with the statuses it is given (then 200), and can hold its
    answers back until released."""
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def __post_init__(self) -> None:
        self.released.set()
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._changed:
            self.requests.append((dict(request.headers), body))
            self._changed.notify_all()
        await self.released.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait_requests(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests) >= count)
        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise TimeoutError(f"the receiver got {len(self.requests)} requests, not {count}") from None
        return self.requests[:count]

    def delivered(self, secret: str) -> list[dict[str, Any]]:
        """The events, each checked with the Standard Webhooks reference library."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    runners = []

    async def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        runners.append((runner, receiver))
        return receiver

    yield make
    for runner, receiver in runners:
        receiver.released.set()
        await runner.cleanup()


async def _register(server, url: str, events: list[str]) -> dict[str, Any]:
    status, hook = await server.api("POST", "/v1/sites/home/webhooks",
                                    {"url": url, "events": events, "allow_http": True})
    assert status == 201, hook
    return hook


async def _hook_until(server, webhook_id: str, predicate, timeout: float = 10.0) -> dict[str, Any]:
    """Read the receiver's record until it shows what the sender did (its writes follow the
    receiver's answer)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await server.store.flushed()
        status, body = await server.api("GET", f"/v1/sites/home/webhooks/{webhook_id}")
        assert status == 200
        if predicate(body):
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the webhook never matched: {body}")
        await asyncio.sleep(0.02)


async def _call(server, door, phone, end: bool = True) -> str:
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    await phone.next("incoming")
    assert (await phone.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
    if end:
        assert (await door.request("end", call_id=call_id))["type"] == "ok"
    return call_id


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, webhooks=FAST, door_offline_after_s=0.1)])
async def test_a_site_s_events_arrive_signed_and_in_order(server, receivers):
    receiver = await receivers()
    alice = await server.user("alice")
    door_token = await server.user("door", "door")
    hook = await _register(server, receiver.url, ["ring", "answered", "ended", "door_online", "door_offline",
                                                  "door_opened"])
    assert hook["secret"].startswith("whsec_") and hook["enabled"] is True
    status, listed = await server.api("GET", "/v1/sites/home/webhooks")
    assert status == 200 and [h["webhook_id"] for h in listed["webhooks"]] == [hook["webhook_id"]]
    assert "secret" not in listed["webhooks"][0]

    door = await server.signed_in("door", door_token, device_id="door")
    phone = await server.signed_in("alice", alice, device_id="phone")
    call_id = await _call(server, door, phone, end=False)
    opening = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    action = await door.next("action")
    await door.ws.send_json({"type": "ok", "re": action["id"], "pulse_s": 3.0})
    assert (await opening)["type"] == "ok"
    assert (await door.request("end", call_id=call_id))["type"] == "ok"
    await door.close()
    await receiver.wait_requests(6)

    events = receiver.delivered(hook["secret"])
    assert [e["type"] for e in events] == ["door_online", "ring", "answered", "door_opened", "ended", "door_offline"]
    ring, answered, opened, ended = events[1:5]
    assert opened["data"]["by"] == {"user_id": "alice", "device_id": "phone", "display_name": "Alice"}
    assert opened["data"]["call_id"] == call_id and opened["data"]["pulse_s"] == 3.0
    assert ring["data"]["call_id"] == call_id and ring["data"]["door"] == {"user_id": "door",
                                                                           "display_name": "Door"}
    assert ring["data"]["site_id"] == "home" and ring["data"]["callees"] == ["alice"]
    assert answered["data"]["by"]["display_name"] == "Alice"
    assert ended["data"]["end_reason"] == "completed" and ended["data"]["answered"] is True
    assert all(e["timestamp"].endswith("Z") for e in events)
    # One id per event; a forged or tampered body fails the reference check.
    headers, body = receiver.requests[1]
    assert len({h["webhook-id"] for h, _ in receiver.requests}) == 6
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(body.replace(b"alice", b"mallory"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, headers)


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, webhooks=FAST, door_offline_after_s=3)])
async def test_a_door_whose_link_flaps_is_not_reported_and_one_that_stays_away_is_once(server, receivers):
    """A door that drops its connection and is back within door_offline_after_s (a flaky
    Wi-Fi, a server restart) is still online to Home Assistant and the webhooks: no
    door_offline/door_online pair. One that stays away is reported once, with when it went."""
    receiver = await receivers()
    await server.user("alice")
    token = await server.user("door", "door")
    hook = await _register(server, receiver.url, ["door_online", "door_offline", "ring"])
    door = await server.signed_in("door", token, device_id="door")
    await receiver.wait_requests(1)
    for _ in range(3):  # the link flaps
        await door.close()
        door = await server.signed_in("door", token, device_id="door")
    # A ring after the flaps: events reach a webhook in order, so a reported flap comes before it.
    await door.request("dial", callees=["alice"], video=True, offer=OFFER)
    await door.close()
    await receiver.wait_requests(3)
    online, ring, offline = receiver.delivered(hook["secret"])[:3]
    assert [online["type"], ring["type"], offline["type"]] == ["door_online", "ring", "door_offline"]
    assert offline["timestamp"] >= ring["timestamp"]  # the last time it went, not a flap
    door = await server.signed_in("door", token, device_id="door")
    await receiver.wait_requests(4)  # back after it was reported offline: online at once
    assert [e["type"] for e in receiver.delivered(hook["secret"])] == ["door_online", "ring", "door_offline",
                                                                      "door_online"]


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, webhooks=FAST)])
async def test_a_declined_ring_is_sent_as_missed_only_to_who_asked(server, receivers):
    missed_only, rings_only = await receivers(), await receivers()
    alice, door_token = await server.user("alice"), await server.user("door", "door")
    hook = await _register(server, missed_only.url, ["missed"])
    await _register(server, rings_only.url, ["ring"])
    door = await server.signed_in("door", door_token, device_id="door")
    phone = await server.signed_in("alice", alice, device_id="phone")
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    await phone.next("incoming")
    assert (await phone.request("decline", call_id=call_id))["type"] == "ok"
    await door.next("ended")
    [missed] = [Webhook(hook["secret"]).verify(b, h) for h, b in await missed_only.wait_requests(1)]
    assert missed["type"] == "missed" and missed["data"]["call_id"] == call_id
    assert missed["data"]["end_reason"] == "declined" and missed["data"]["offline"] is False
    [(_, ring)] = await rings_only.wait_requests(1)
    assert json.loads(ring)["type"] == "ring"
    assert [json.loads(b)["type"] for _, b in missed_only.requests] == ["missed"]


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, webhooks=FAST)])
async def test_a_failed_attempt_is_retried_with_the_same_id_until_it_is_taken(server, receivers):
    receiver = await receivers(statuses=[500, 503])
    token = await server.user("door", "door")
    hook = await _register(server, receiver.url, ["door_online"])
    await server.signed_in("door", token, device_id="door")
    requests = await receiver.wait_requests(3)
    assert len({h["webhook-id"] for h, _ in requests}) == 1
    assert [e["type"] for e in receiver.delivered(hook["secret"])] == ["door_online"] * 3
    body = await _hook_until(server, hook["webhook_id"], lambda b: b["last_delivery_at"] is not None)
    assert body["enabled"] is True and body["failures"] == 0 and body["last_error"] is None
    status, health = await server.api("GET", "/healthz")
    assert health["webhooks"]["delivered"] == 1 and health["webhooks"]["retried"] == 2


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, door_offline_after_s=0.1, webhooks=WebhookSettings(
    retry_for_s=0.2, first_retry_s=0.05, disable_after=2))])
async def test_a_receiver_that_always_fails_is_switched_off_reported_and_can_be_switched_on(server, receivers):
    failing = await receivers(statuses=[503] * 1000)
    healthy = await receivers()
    token = await server.user("door", "door")
    bad = await _register(server, failing.url, ["door_online", "door_offline"])
    good = await _register(server, healthy.url, ["door_online", "door_offline"])
    door = await server.signed_in("door", token, device_id="door")
    await door.close()
    await healthy.wait_requests(2)
    off = await _hook_until(server, bad["webhook_id"], lambda b: not b["enabled"])
    assert off["failures"] == 2 and "switched off after 2 deliveries in a row failed" in off["disabled_reason"]
    assert off["last_error"] == "HTTP 503"
    status, health = await server.api("GET", "/healthz")
    assert health["webhooks"]["switched_off"] == 1
    attempts = len(failing.requests)

    # Switched off: the next event reaches the healthy receiver only.
    door = await server.signed_in("door", token, device_id="door")
    await healthy.wait_requests(3)
    assert len(failing.requests) == attempts

    # Switched on again, it gets the next events.
    failing.statuses.clear()
    status, on = await server.api("PATCH", f"/v1/sites/home/webhooks/{bad['webhook_id']}", {"enabled": True})
    assert status == 200 and on["enabled"] and on["failures"] == 0 and on["disabled_reason"] is None
    await door.close()
    await failing.wait_requests(attempts + 1)
    assert json.loads(failing.requests[-1][1])["type"] == "door_offline"
    assert [e["type"] for e in healthy.delivered(good["secret"])][-1] == "door_offline"


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, webhooks=FAST)])
async def test_a_receiver_that_hangs_never_holds_up_the_ring(server, receivers):
    receiver = await receivers()
    receiver.released.clear()
    alice = await server.user("alice")
    door_token = await server.user("door", "door")
    await _register(server, receiver.url, ["ring", "door_online"])
    door = await server.signed_in("door", door_token, device_id="door")
    phone = await server.signed_in("alice", alice, device_id="phone")
    await receiver.wait_requests(1)  # door_online: held, unanswered
    await door.request("dial", callees=["alice"], video=True, offer=OFFER)
    incoming = await phone.next("incoming")
    assert len(receiver.requests) == 1  # the ring event waits behind the held delivery
    receiver.released.set()
    [_, (_, body)] = await receiver.wait_requests(2)
    assert json.loads(body)["data"]["call_id"] == incoming["call_id"]


async def test_bad_registrations_are_refused_and_change_nothing(server):
    await server.user("alice")
    cases = [
        ({"url": "http://example.org/hook", "events": ["ring"]}, "https://"),
        ({"url": "http://example.org/hook", "events": ["ring"], "allow_http": True}, "loopback or private"),
        ({"url": "https://example.org/hook", "events": ["rang"]}, "unknown events rang"),
        ({"url": "https://example.org/hook", "events": []}, "non-empty list"),
        ({"url": "ftp://example.org/", "events": ["ring"]}, "https://"),
        ({"url": "https://example.org/hook", "events": ["ring"], "secret": "mine"}, "unknown fields: secret"),
    ]
    for body, message in cases:
        status, answer = await server.api("POST", "/v1/sites/home/webhooks", body)
        assert status == 400 and message in answer["error"]["message"], (body, answer)
    status, answer = await server.api("POST", "/v1/sites/nowhere/webhooks",
                                      {"url": "https://example.org/hook", "events": ["ring"]})
    assert status == 404
    status, answer = await server.api("POST", "/v1/sites/home/webhooks",
                                      {"url": "https://example.org/hook", "events": ["ring"]},
                                      token=None, bearer=await server.user("bob"))
    assert status == 401
    status, listed = await server.api("GET", "/v1/sites/home/webhooks")
    assert listed == {"webhooks": []}

"""Web Push: a press wakes residents' phones whose app is closed.

A push service stand-in on loopback plays the browser vendor's part: it checks every
request's VAPID JWT against the server's published key and decrypts the message with the
keys it gave the "phone", so what is asserted is what a phone would get.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from intercom_protocol.messages import CLOSE_TOKEN_REVOKED
from intercom_server.push import PushSettings, load_vapid
from intercom_server.settings import HubSettings
from intercom_server.store import Store
from intercom_sim.pushservice import PushService

from .conftest import BACKENDS, OFFER, ServerUnderTest, WsClient

#: Each test on both state backends: one process in memory, one process of a cluster in Redis.
pytestmark = pytest.mark.backends(*BACKENDS)


@pytest.fixture
def settings() -> HubSettings:
    return HubSettings(ring_timeout_s=30.0, grace_s=0.5, heartbeat_s=20.0,
                       push=PushSettings(local_hosts=("127.0.0.1",), timeout_s=2.0))


@pytest.fixture
async def pushes(server: ServerUnderTest) -> AsyncIterator[PushService]:
    service = await PushService().start()
    status, body = await server.api("GET", "/v1/push/public_key", token=None)
    assert status == 200
    service.server_key = body["public_key"]
    yield service
    await service.close()


async def subscribe(server: ServerUnderTest, pushes: PushService, token: str, device_id: str) -> None:
    status, body = await server.api("PUT", f"/v1/me/devices/{device_id}/push", pushes.subscribe(device_id),
                                    bearer=token)
    assert status == 200, body


async def door_dials(server: ServerUnderTest, door: WsClient, *callees: str) -> str:
    ok = await door.request("dial", callees=list(callees), video=True, offer=OFFER)
    assert ok["type"] == "ok", ok
    return str(ok["call_id"])


@pytest.fixture
async def household(server: ServerUnderTest, pushes: PushService) -> dict[str, str]:
    tokens = {"door": await server.user("door", "door"), "alice": await server.user("alice"), "bob": await server.user("bob")}
    await subscribe(server, pushes, tokens["alice"], "alice-phone")
    await subscribe(server, pushes, tokens["alice"], "alice-tablet")
    await subscribe(server, pushes, tokens["bob"], "bob-phone")
    return tokens


async def test_a_press_wakes_every_subscribed_phone_with_an_encrypted_ring(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    door = await server.signed_in("door", household["door"])
    call_id = await door_dials(server, door, "alice", "bob")
    ringing = await door.next("ringing")
    assert ringing["devices"] == 3, "phones that can be woken count as rung, or the door would say nobody is home"
    got = {}
    for _ in range(3):
        delivery = await pushes.next()
        got[delivery.name] = delivery
    assert set(got) == {"alice-phone", "alice-tablet", "bob-phone"}
    for name, delivery in got.items():
        message = delivery.message
        assert message["type"] == "ring" and message["call_id"] == call_id and message["device_id"] == name
        assert message["caller"]["display_name"] == "Door"
        assert message["snapshot_url"] == f"/v1/direct_calls/{call_id}/snapshot"
        assert 0 < message["expires_in_s"] <= 30
        assert 1 <= delivery.ttl <= 30, "a ring must not outlive the ring timeout at the push service"
        assert delivery.urgency == "high" and delivery.topic == call_id
        for secret in household.values():
            assert secret not in str(message), "no access token goes through a push service"
        assert b"ring" not in delivery.ciphertext, "the push service sees ciphertext only"
    assert pushes.refused == []


async def test_answered_elsewhere_replaces_the_ring_and_the_answering_phone_is_left_alone(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    door = await server.signed_in("door", household["door"])
    alice = await server.signed_in("alice", household["alice"], device_id="alice-phone")
    call_id = await door_dials(server, door, "alice", "bob")
    assert (await door.next("ringing"))["devices"] == 3, "alice's phone is one device, connected and subscribed"
    await alice.next("incoming")
    rings = {(await pushes.next()).name for _ in range(3)}
    assert rings == {"alice-phone", "alice-tablet", "bob-phone"}
    assert (await alice.request("accept", call_id=call_id, answer={"type": "answer", "sdp": "v=0\r\n"}))["type"] == "ok"
    updates = {}
    for _ in range(2):
        delivery = await pushes.next()
        updates[delivery.name] = delivery
    assert set(updates) == {"alice-tablet", "bob-phone"}
    for delivery in updates.values():
        assert delivery.message["type"] == "answered" and delivery.message["call_id"] == call_id
        assert delivery.message["by"]["display_name"] == "Alice"
        assert delivery.topic == call_id, "the same topic, so an undelivered ring is replaced, not stacked"
    await door.request("end", call_id=call_id)
    await door.next("ended")
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["sent"] == 5 and health["push"]["pending"] == 0


@pytest.mark.parametrize("settings", [HubSettings(ring_timeout_s=1.0, grace_s=0.5, heartbeat_s=20.0,
                                                  push=PushSettings(local_hosts=("127.0.0.1",)))])
async def test_a_ring_nobody_answers_becomes_a_missed_call(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    door = await server.signed_in("door", household["door"])
    call_id = await door_dials(server, door, "bob")
    assert (await pushes.next()).message["type"] == "ring"
    ended = await door.next("ended")
    assert ended["reason"] == "no_answer"
    missed = await pushes.next()
    assert missed.name == "bob-phone" and missed.message["type"] == "missed"
    assert missed.message["call_id"] == call_id and missed.message["reason"] == "no_answer"
    assert missed.topic == call_id and missed.ttl > 3600, "a missed call still tells a phone that was off"


async def test_a_decline_from_the_notification_declines_without_the_app(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    door = await server.signed_in("door", household["door"])
    call_id = await door_dials(server, door, "bob")
    await pushes.next()
    status, body = await server.api("POST", f"/v1/direct_calls/{call_id}/decline", {"device_id": "bob-phone"},
                                    bearer=household["bob"])
    assert status == 204, body
    ended = await door.next("ended")
    assert ended["reason"] == "declined"
    status, body = await server.api("POST", f"/v1/direct_calls/{call_id}/decline", {"device_id": "bob-phone"},
                                    bearer=household["alice"])
    assert status == 404, "nobody declines for a phone that is not theirs"
    await server.store.flushed()
    assert (await server.store.calls.get_call(call_id)).end_reason == "declined"
    assert pushes.deliveries.empty(), "the phone that declined is not told it missed the call"


async def test_a_push_service_that_forgot_the_phone_loses_its_subscription(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    pushes.answer("bob-phone", "gone")
    door = await server.signed_in("door", household["door"])
    await door_dials(server, door, "alice", "bob")
    await pushes.next()
    await pushes.next()  # alice's two
    await server.hub.push.idle()
    status, mine = await server.api("GET", "/v1/me/push", bearer=household["bob"])
    assert status == 200 and mine["subscriptions"] == []
    assert await server.store.push.subscriptions() and all(r["user_id"] == "alice" for r in await server.store.push.subscriptions())
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["pruned"] == 1


async def test_a_hanging_push_service_does_not_delay_the_ring_of_a_connected_phone(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    for name in ("alice-phone", "alice-tablet", "bob-phone"):
        pushes.answer(name, "hang")
    door = await server.signed_in("door", household["door"])
    bob = await server.signed_in("bob", household["bob"], device_id="bob-laptop")
    call_id = await door_dials(server, door, "alice", "bob")
    incoming = await bob.next("incoming")
    assert incoming["call_id"] == call_id
    await pushes.wait_until(lambda: pushes.hanging == 3)
    # The next press rings at once too, with three requests still hanging.
    await door.request("end", call_id=call_id)
    second = await door_dials(server, door, "bob")
    assert (await bob.next("incoming"))["call_id"] == second
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["pending"] >= 3


async def test_a_busy_push_service_is_retried_and_a_ring_it_could_only_deliver_late_is_never_sent(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    pushes.answer("alice-phone", (429, 0))
    pushes.answer("bob-phone", (503, 10))
    pushes.answer("alice-tablet", (503, 60))
    door = await server.signed_in("door", household["door"])
    call_id = await door_dials(server, door, "alice", "bob")
    delivered = await pushes.next()
    assert delivered.name == "alice-phone", "429 with Retry-After: 0 is retried at once"
    # Alice's tablet's service asked for 60 s, past the ring's end: that ring is given up.
    # Bob's asked for 10 s; the visitor leaves first. The ring is dropped and its retry stops
    # at once: bob's phone gets the missed call, never a ring for nobody.
    await door.request("end", call_id=call_id)
    missed = {}
    for _ in range(3):
        delivery = await pushes.next()
        missed[delivery.name] = delivery.message["type"]
    assert missed == {"alice-phone": "missed", "alice-tablet": "missed", "bob-phone": "missed"}
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["retried"] == 2 and health["push"]["failed"] == 1 and health["push"]["sent"] == 4


async def test_subscriptions_are_checked_capped_and_never_shown_in_full(
        server: ServerUnderTest, pushes: PushService) -> None:
    alice, door = await server.user("alice"), await server.user("door", "door")
    sub = pushes.subscribe("x")
    cases = [
        ({**sub, "endpoint": "http://push.example.com/x"}, "https://"),
        ({**sub, "endpoint": "https://10.1.2.3/x"}, "push.local_hosts"),
        ({**sub, "endpoint": "https://localhost:8443/x"}, "push.local_hosts"),
        ({**sub, "keys": {"p256dh": "AAAA", "auth": sub["keys"]["auth"]}}, "keys.p256dh"),
        ({**sub, "keys": {"p256dh": sub["keys"]["p256dh"]}}, "keys.auth"),
        ({**sub, "extra": 1}, "unknown fields"),
        ([1, 2], "push subscription"),
    ]
    for body, words in cases:
        status, reply = await server.api("PUT", "/v1/me/devices/phone/push", body, bearer=alice)
        assert status == 400 and words in reply["error"]["message"], (body, reply)
    status, reply = await server.api("PUT", "/v1/me/devices/door/push", sub, bearer=door)
    assert status == 400 and "resident" in reply["error"]["message"]
    assert await server.store.push.subscriptions() == [], "a refused subscription changes nothing"
    for n in range(10):
        status, _ = await server.api("PUT", f"/v1/me/devices/phone{n}/push", pushes.subscribe(f"p{n}"), bearer=alice)
        assert status == 200
    status, reply = await server.api("PUT", "/v1/me/devices/phone10/push", pushes.subscribe("p10"), bearer=alice)
    assert status == 409 and "most allowed" in reply["error"]["message"]
    status, reply = await server.api("PUT", "/v1/me/devices/phone3/push", pushes.subscribe("p3b"), bearer=alice)
    assert status == 200, "a device replaces its own subscription within the cap"
    status, mine = await server.api("GET", "/v1/me/push", bearer=alice)
    assert len(mine["subscriptions"]) == 10
    assert all(s["push_service"] == pushes.url for s in mine["subscriptions"])
    assert "/push/" not in str(mine), "the endpoint is a credential: only its origin is shown"
    status, theirs = await server.api("GET", "/v1/me/push", bearer=await server.user("bob"))
    assert theirs["subscriptions"] == []
    status, _ = await server.api("DELETE", "/v1/me/devices/phone0/push", bearer=alice)
    assert status == 204 and len(await server.store.push.subscriptions()) == 9


async def test_signing_out_or_revoking_the_token_ends_the_phones_push(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    status, _ = await server.api("DELETE", "/v1/me/token", bearer=household["bob"])
    assert status == 204
    tokens = await server.store.tokens.list_tokens("alice")
    status, _ = await server.api("DELETE", f"/v1/users/alice/tokens/{tokens[0]['token_id']}")
    assert status == 204
    assert await server.store.push.subscriptions() == []
    assert server.hub.push.count() == 0
    door = await server.signed_in("door", household["door"])
    await door_dials(server, door, "alice", "bob")
    assert (await door.next("ringing"))["devices"] == 0
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["pending"] == 0 and pushes.requests == 0


async def test_the_test_button_sends_a_test_notification(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    status, body = await server.api("POST", "/v1/me/devices/bob-phone/push/test", bearer=household["bob"])
    assert status == 202 and body["sent_to"] == pushes.url
    delivery = await pushes.next()
    assert delivery.name == "bob-phone" and delivery.message["type"] == "test"
    status, body = await server.api("POST", "/v1/me/devices/bob-laptop/push/test", bearer=household["bob"])
    assert status == 404 and "switch that on" in body["error"]["message"]


def test_the_vapid_key_is_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "vapid_private.pem"
    first = load_vapid(PushSettings(key_file=path))
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_vapid(PushSettings(key_file=path))
    assert first.public_key.public_numbers() == again.public_key.public_numbers()
    path.write_text("not a key\n")
    with pytest.raises(ValueError, match="is not a VAPID private key"):
        load_vapid(PushSettings(key_file=path))


async def test_a_token_revoked_from_a_shell_takes_the_phones_push_with_it(
        server: ServerUnderTest, pushes: PushService) -> None:
    await server.user("alice")
    token = await server.store.tokens.issue_token("alice")
    await subscribe(server, pushes, token["access_token"], "alice-phone")
    phone = await server.signed_in("alice", token["access_token"], "alice-phone")
    shell = await Store.open(server.database)  # `intercom-server token revoke`: another process, another connection
    await shell.tokens.revoke_token("alice", token["token_id"])
    await shell.close()
    await asyncio.wait_for(phone.reader, 10)  # the server noticed: the phone's session ends
    assert phone.ws.close_code == CLOSE_TOKEN_REVOKED
    assert server.hub.push.count() == 0, "the server reread the subscriptions when it noticed the revocation"
    door = await server.signed_in("door", await server.user("door", "door"))
    await door_dials(server, door, "alice")
    assert (await door.next("ringing"))["devices"] == 0


async def test_a_resident_in_do_not_disturb_is_not_woken_and_the_others_hear_of_the_visitor_s_message(
        server: ServerUnderTest, pushes: PushService, household: dict[str, str]) -> None:
    status, _ = await server.api("PUT", "/v1/me/availability", {"do_not_disturb": {"on": True}},
                                 bearer=household["bob"])
    assert status == 200
    door = await server.signed_in("door", household["door"], device_id="door")
    call_id = await door_dials(server, door, "alice", "bob")
    assert (await door.next("ringing"))["devices"] == 2  # alice's two; bob's phone is left alone
    rings = [await pushes.next() for _ in range(2)]
    assert {d.name for d in rings} == {"alice-phone", "alice-tablet"} and all(d.message["type"] == "ring"
                                                                               for d in rings)
    await door.request("end", call_id=call_id)
    missed = [await pushes.next() for _ in range(2)]
    assert {(d.name, d.message["type"]) for d in missed} == {("alice-phone", "missed"), ("alice-tablet", "missed")}

    await server.store.flushed()
    async with server.http.put(f"{server.url}/v1/direct_calls/{call_id}/message", data=b"\x00" * 2000,
                               headers={"Authorization": f"Bearer {household['door']}"}) as resp:
        assert resp.status == 201
    told = [await pushes.next() for _ in range(2)]
    assert {d.name for d in told} == {"alice-phone", "alice-tablet"}
    for delivery in told:
        assert delivery.message["type"] == "message" and delivery.message["call_id"] == call_id
        assert delivery.message["caller"]["display_name"] == "Door" and delivery.urgency == "normal"
    await server.hub.push.idle()  # the last answers of the push service are read
    status, health = await server.api("GET", "/healthz")
    assert health["push"]["sent"] == 6 and health["push"]["pending"] == 0  # nothing ever went to bob's phone

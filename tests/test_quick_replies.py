"""Quick replies: the server offers a door's replies with its visitor's ring, checks who asks
for one, and has the door play it; the Chromium test hears it at the door's speaker."""

from __future__ import annotations

import asyncio

from .conftest import ANSWER, OFFER

REPLIES = [{"id": "coming", "label": "I'm coming"}, {"id": "leave", "label": "Please leave it at the door"}]


async def _ringing(server, replies=REPLIES):
    alice_token, bob_token = await server.user("alice"), await server.user("bob")
    door = await server.signed_in("door", await server.user("door", "door"), device_id="door", quick_replies=replies)
    alice = await server.signed_in("alice", alice_token, device_id="phone")
    bob = await server.signed_in("bob", bob_token, device_id="phone")
    call_id = (await door.request("dial", callees=["alice", "bob"], video=True, offer=OFFER))["call_id"]
    ring = await alice.next("incoming")
    await bob.next("incoming")
    return door, alice, bob, call_id, ring


async def test_the_ring_offers_the_door_s_replies_and_one_that_ends_it_stops_every_phone(server):
    door, alice, bob, call_id, ring = await _ringing(server)
    assert ring["quick_replies"] == REPLIES
    sent = asyncio.create_task(alice.request("action", call_id=call_id, name="quick_reply", reply="leave"))
    asked = await door.next("action")
    assert asked["name"] == "quick_reply" and asked["reply"] == "leave" and asked["call_id"] == call_id
    assert asked["by"] == {"user_id": "alice", "device_id": "phone", "display_name": "Alice"}
    await door.ws.send_json({"type": "ok", "re": asked["id"], "ends_call": True})
    answer = await sent
    assert answer["type"] == "ok" and answer["ends_call"] is True
    for party in (door, alice, bob):
        assert (await party.next("ended"))["reason"] == "declined"


async def test_a_reply_that_does_not_end_it_lets_it_ring_on(server):
    door, alice, bob, call_id, _ = await _ringing(server)
    sent = asyncio.create_task(alice.request("action", call_id=call_id, name="quick_reply", reply="coming"))
    asked = await door.next("action")
    await door.ws.send_json({"type": "ok", "re": asked["id"], "ends_call": False})
    assert (await sent)["ends_call"] is False
    assert (await bob.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
    # Answered: a reply is refused (they can talk now), and the door is not asked.
    refused = await alice.request("action", call_id=call_id, name="quick_reply", reply="coming")
    assert refused["code"] in ("forbidden", "conflict")


async def test_replies_the_door_does_not_have_or_cannot_play_and_strangers_are_refused(server):
    door, alice, bob, call_id, _ = await _ringing(server)
    unknown = await alice.request("action", call_id=call_id, name="quick_reply", reply="bribe")
    assert unknown["code"] == "not_found" and "coming, leave" in unknown["message"]
    missing = await alice.request("action", call_id=call_id, name="quick_reply")
    assert missing["code"] == "bad_request"
    mallory = await server.signed_in("mallory", await server.user("mallory", site="elsewhere"), device_id="phone")
    stranger = await mallory.request("action", call_id=call_id, name="quick_reply", reply="coming")
    assert stranger["code"] == "forbidden"
    # The door's own refusal reaches the resident.
    sent = asyncio.create_task(alice.request("action", call_id=call_id, name="quick_reply", reply="coming"))
    asked = await door.next("action")
    await door.ws.send_json({"type": "error", "re": asked["id"], "code": "conflict",
                             "message": "the door cannot play 'I'm coming': clip missing"})
    answer = await sent
    assert answer["code"] == "conflict" and "clip missing" in answer["message"]


async def test_a_door_s_malformed_replies_are_refused_at_sign_in(server):
    token = await server.user("door", "door")
    client = await server.connect()
    for bad in ([{"id": "Coming!", "label": "x"}], [{"id": "a", "label": ""}], [{"id": "a", "label": "x"}] * 2,
                "coming"):
        reply = await client.request("authenticate", user_id="door", access_token=token, quick_replies=bad)
        assert reply["type"] == "error" and reply["code"] == "bad_request" and "quick_replies" in reply["message"]

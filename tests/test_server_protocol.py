"""Protocol v1 over real WebSockets against a real server on loopback."""

import asyncio
import base64
import json

import pytest

from intercom_protocol.messages import CLOSE_UNAUTHENTICATED, MAX_MESSAGE_BYTES
from intercom_server.settings import HubSettings

from .conftest import ANSWER, BACKENDS, OFFER

#: Each test on both state backends: one process in memory, one process of a cluster in Redis.
pytestmark = pytest.mark.backends(*BACKENDS)


async def test_authenticate_returns_the_user_device_and_ice_servers(server):
    token = await server.user("alice")
    client = await server.connect()
    reply = await client.request("authenticate", user_id="alice", access_token=token, device_id="phone")
    assert reply["type"] == "ok"
    assert reply["user"] == {"user_id": "alice", "kind": "resident", "site_id": "home", "display_name": "Alice"}
    assert reply["device_id"] == "phone"
    assert reply["ice_servers"] == [] and reply["heartbeat_s"] == 20.0


async def test_bad_token_gets_unauthenticated_and_the_connection_stays_for_a_retry(server):
    token = await server.user("alice")
    client = await server.connect()
    bad = await client.request("authenticate", user_id="alice", access_token="ict_wrong")
    assert bad["type"] == "error" and bad["code"] == "unauthenticated"
    unknown = await client.request("authenticate", user_id="nobody", access_token=token)
    assert unknown["code"] == "unauthenticated" and unknown["message"] == bad["message"]
    good = await client.request("authenticate", user_id="alice", access_token=token)
    assert good["type"] == "ok"


async def test_requests_before_authentication_are_refused(server):
    client = await server.connect()
    reply = await client.request("dial", callees=["bob"], offer=OFFER)
    assert reply == {"type": "error", "re": reply["re"], "code": "unauthenticated", "message": "authenticate first"}
    assert (await client.request("ping"))["code"] == "unauthenticated"


@pytest.mark.parametrize("settings", [HubSettings(auth_timeout_s=0.3)])
async def test_no_authentication_in_time_closes_4401(server):
    client = await server.connect()
    await asyncio.wait_for(client.reader, 5)
    assert client.ws.close_code == CLOSE_UNAUTHENTICATED


async def test_malformed_and_unknown_messages_get_errors_and_the_connection_stays(server):
    client = await server.signed_in("alice", await server.user("alice"))
    await client.send_raw("{this is not json")
    assert (await client.next("error"))["code"] == "bad_request"
    await client.send_raw(json.dumps({"type": "teleport", "id": "x1"}))
    unknown = await client.next("error")
    assert unknown["re"] == "x1" and "unknown message type" in unknown["message"]
    await client.send_raw(json.dumps({"type": "end", "id": "x2"}))
    assert (await client.next("error"))["message"] == "'end' needs 'call_id'"
    await client.ws.send_bytes(b"\x00\x01")
    assert "binary" in (await client.next("error"))["message"]
    await client.send_raw(json.dumps({"type": "ping", "id": "x3", "pad": "a" * MAX_MESSAGE_BYTES}))
    assert (await client.next("error"))["code"] == "too_large"
    assert (await client.request("ping"))["type"] == "ok"  # still connected and serving
    assert (await client.next("pong"))["type"] == "pong"


async def test_deauthenticate_says_ok_then_closes(server):
    client = await server.signed_in("alice", await server.user("alice"))
    assert (await client.request("deauthenticate"))["type"] == "ok"
    await asyncio.wait_for(client.reader, 5)
    assert client.ws.closed


async def site_with_door_and_residents(server):
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    tokens = {"alice": await server.user("alice"), "bob": await server.user("bob")}
    alice_phone = await server.signed_in("alice", tokens["alice"], "phone")
    alice_tablet = await server.signed_in("alice", tokens["alice"], "tablet")
    bob = await server.signed_in("bob", tokens["bob"], "phone")
    return door, alice_phone, alice_tablet, bob


async def test_dial_rings_every_device_and_the_first_accept_wins(server):
    door, alice_phone, alice_tablet, bob = await site_with_door_and_residents(server)
    snapshot = base64.b64encode(b"\xff\xd8\xff\xe0fake-jpeg").decode()
    dialed = await door.request("dial", callees=["alice", "bob"], video=True, offer=OFFER, snapshot=snapshot)
    call_id = dialed["call_id"]
    assert (await door.next("ringing")) == {"type": "ringing", "call_id": call_id, "devices": 3}
    for device in (alice_phone, alice_tablet, bob):
        incoming = await device.next("incoming")
        assert incoming["call_id"] == call_id and incoming["offer"] == OFFER
        assert incoming["caller"] == {"user_id": "door", "display_name": "Door", "kind": "door"}
        assert incoming["snapshot_url"] == f"/v1/direct_calls/{call_id}/snapshot"

    first, second = await asyncio.gather(alice_tablet.request("accept", call_id=call_id, answer=ANSWER),
                                         bob.request("accept", call_id=call_id, answer=ANSWER))
    assert first["type"] == "ok"
    assert second["type"] == "error" and second["code"] == "conflict"
    accepted = await door.next("accepted")
    assert accepted["by"] == {"user_id": "alice", "device_id": "tablet"} and accepted["answer"] == ANSWER
    assert (await alice_phone.next("ended"))["reason"] == "other_device_accepted"
    assert (await bob.next("ended"))["reason"] == "other_device_accepted"

    assert (await door.request("end", call_id=call_id))["type"] == "ok"
    for party in (door, alice_tablet):
        ended = await party.next("ended")
        assert ended["reason"] == "completed" and ended["by"] == {"user_id": "door", "device_id": "door"}
    record = await server.store.calls.get_call(call_id)
    assert record.end_reason == "completed" and record.accepted_by.device_id == "tablet"
    assert await server.store.calls.snapshot(call_id) == b"\xff\xd8\xff\xe0fake-jpeg"


async def test_the_visitors_picture_follows_the_dial_to_every_ringing_device(server):
    """The door rings first and sends the picture when its camera has one: every phone that
    rings is told, a phone that starts ringing later gets it in `incoming`, and it is stored."""
    door, alice_phone, alice_tablet, bob = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER))["call_id"]
    for device in (alice_phone, alice_tablet, bob):
        assert "snapshot_url" not in await device.next("incoming")

    refused = await bob.request("snapshot", call_id=call_id, snapshot=base64.b64encode(b"bob's").decode())
    assert refused["code"] == "forbidden"  # only the caller shows the visitor
    bad = await door.request("snapshot", call_id=call_id, snapshot="not base64!")
    assert bad["code"] == "bad_request" and "snapshot" in bad["message"]

    picture = b"\xff\xd8\xff\xe0the-visitor"
    assert (await door.request("snapshot", call_id=call_id, snapshot=base64.b64encode(picture).decode()))["type"] == "ok"
    url = f"/v1/direct_calls/{call_id}/snapshot"
    for device in (alice_phone, alice_tablet, bob):
        assert await device.next("snapshot") == {"type": "snapshot", "call_id": call_id, "snapshot_url": url}
    again = await door.request("snapshot", call_id=call_id, snapshot=base64.b64encode(b"other").decode())
    assert again["code"] == "conflict"
    assert await server.store.calls.snapshot(call_id) == picture  # the first picture stays

    late = await server.signed_in("alice", (await server.store.tokens.issue_token("alice"))["access_token"], "laptop")
    assert (await late.next("incoming"))["snapshot_url"] == url
    await door.request("end", call_id=call_id)
    ended_late = await door.request("snapshot", call_id=call_id, snapshot=base64.b64encode(picture).decode())
    assert ended_late["code"] == "conflict"
    assert (await server.store.calls.get_call(call_id)).has_snapshot is True


async def test_decline_from_one_device_keeps_ringing_from_all_ends_declined(server):
    door, alice_phone, alice_tablet, bob = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER))["call_id"]
    await door.next("ringing")
    assert (await bob.request("decline", call_id=call_id))["type"] == "ok"
    assert (await alice_phone.request("decline", call_id=call_id))["type"] == "ok"
    door.assert_quiet()  # two of three declined: still ringing
    assert (await alice_tablet.request("decline", call_id=call_id))["type"] == "ok"
    assert (await door.next("ended"))["reason"] == "declined"
    assert (await server.store.calls.get_call(call_id)).end_reason == "declined"


async def test_caller_hanging_up_while_ringing_cancels_on_every_device(server):
    door, alice_phone, alice_tablet, bob = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await alice_phone.next("incoming")
    await door.request("end", call_id=call_id)
    for device in (door, alice_phone, alice_tablet):
        assert (await device.next("ended"))["reason"] == "canceled"
    late = await alice_phone.request("accept", call_id=call_id, answer=ANSWER)
    assert late["code"] == "conflict" and "canceled" in late["message"]
    assert (await server.store.calls.get_call(call_id)).end_reason == "canceled"


@pytest.mark.parametrize("settings", [HubSettings(ring_timeout_s=0.3)])
async def test_nobody_online_rings_zero_devices_then_no_answer(server):
    await server.user("alice")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    assert (await door.next("ringing"))["devices"] == 0
    ended = await door.next("ended", timeout=5)
    assert ended["reason"] == "no_answer" and ended["by"] is None
    assert (await server.store.calls.get_call(call_id)).end_reason == "no_answer"


async def test_a_phone_that_signs_in_while_the_door_rings_rings_too(server):
    alice_token = await server.user("alice")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    assert (await door.next("ringing"))["devices"] == 0
    phone = await server.signed_in("alice", alice_token, "phone")
    assert (await phone.next("incoming"))["call_id"] == call_id


async def test_dial_ring_timeout_from_the_request_is_used(server):
    await server.user("alice")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    await door.request("dial", callees=["alice"], offer=OFFER, ring_timeout_s=0.2)
    assert (await door.next("ended", timeout=5))["reason"] == "no_answer"


async def test_a_door_may_only_call_residents_of_its_own_site(server):
    await server.user("eve", site="elsewhere")
    await server.user("door2", kind="door")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    for callees in (["eve"], ["door2"], ["ghost"]):
        reply = await door.request("dial", callees=callees, offer=OFFER)
        assert reply["code"] == "forbidden", callees
    assert await server.store.calls.list_calls(None, 10, None) == []


async def test_a_resident_may_only_call_doors_of_its_own_site(server):
    await server.user("bob")
    await server.user("far_door", kind="door", site="elsewhere")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    alice = await server.signed_in("alice", await server.user("alice"), "phone")
    for callees in (["bob"], ["far_door"], ["far_door", "bob"]):
        reply = await alice.request("dial", callees=callees, offer=OFFER)
        assert reply["code"] == "forbidden", callees
    assert await server.store.calls.list_calls(None, 10, None) == []
    # One callable door among the names: it rings, and the others are named, alike whether
    # they do not exist or are not hers to call.
    reply = await alice.request("dial", callees=["door", "bob", "far_door", "ghost"], offer=OFFER)
    assert reply["type"] == "ok" and reply["unknown"] == ["bob", "far_door", "ghost"]
    incoming = await door.next("incoming")
    assert incoming["call_id"] == reply["call_id"] and incoming["caller"]["user_id"] == "alice"
    assert (await server.store.calls.get_call(reply["call_id"])).callees == ("door",)


async def test_a_stranger_cannot_end_or_accept_someone_elses_call(server):
    door, alice_phone, _, _ = await site_with_door_and_residents(server)
    mallory = await server.signed_in("mallory", await server.user("mallory"), "laptop")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    for kind, body in (("end", {}), ("accept", {"answer": ANSWER}), ("decline", {})):
        assert (await mallory.request(kind, call_id=call_id, **body))["code"] == "not_found"
    assert (await alice_phone.next("incoming"))["call_id"] == call_id  # the call still rings


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.2, media_grace_s=0.3)])
async def test_a_party_gone_past_the_grace_period_ends_connection_lost(server):
    door, alice_phone, _, _ = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await alice_phone.next("incoming")
    await alice_phone.request("accept", call_id=call_id, answer=ANSWER)
    await alice_phone.close()
    ended = await door.next("ended", timeout=5)
    assert ended["reason"] == "connection_lost"
    assert (await server.store.calls.get_call(call_id)).end_reason == "connection_lost"


@pytest.mark.parametrize("settings", [HubSettings(grace_s=5)])
async def test_a_device_back_within_the_grace_period_keeps_its_call(server):
    token = await server.user("alice")
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    phone = await server.signed_in("alice", token, "phone")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await phone.next("incoming")
    await phone.request("accept", call_id=call_id, answer=ANSWER)
    await phone.close()
    phone = await server.signed_in("alice", token, "phone")
    assert (await phone.request("end", call_id=call_id))["type"] == "ok"
    assert (await door.next("ended"))["reason"] == "completed"


async def test_ping_answers_pong(server):
    client = await server.signed_in("alice", await server.user("alice"))
    assert (await client.request("ping"))["type"] == "ok"
    assert await client.next("pong") == {"type": "pong"}


async def test_authenticating_twice_on_one_connection_is_a_conflict(server):
    token = await server.user("alice")
    client = await server.signed_in("alice", token, "phone")
    again = await client.request("authenticate", user_id="alice", access_token=token)
    assert again["type"] == "error" and again["code"] == "conflict"
    assert (await client.request("ping"))["type"] == "ok"


async def _frames_in_one_write(*pairs):
    """Send one request on each client in the same loop iteration, so the server reads them
    back to back: the closest two devices can come to acting at the same instant. Returns the
    replies in the order of `pairs`."""
    futures, sends = [], []
    for client, kind, body in pairs:
        futures.append(fut := asyncio.get_running_loop().create_future())
        sends.append(client.ws.send_str(json.dumps(client.requests.start(kind, fut, **body))))
    await asyncio.gather(*sends)
    return await asyncio.wait_for(asyncio.gather(*futures), 5)


@pytest.mark.parametrize("round_", range(5))
async def test_two_accepts_in_the_same_instant_one_wins_and_nobody_hears_twice(server, round_):
    door, alice_phone, alice_tablet, bob = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER))["call_id"]
    contenders = (alice_tablet, bob) if round_ % 2 else (bob, alice_tablet)
    for device in (alice_phone, alice_tablet, bob):
        await device.next("incoming")
    replies = await _frames_in_one_write(*[(c, "accept", {"call_id": call_id, "answer": ANSWER}) for c in contenders])
    assert sorted(r["type"] for r in replies) == ["error", "ok"]
    winner, loser = contenders if replies[0]["type"] == "ok" else contenders[::-1]
    assert replies[[*contenders].index(loser)]["code"] == "conflict"
    accepted = await door.next("accepted")
    assert accepted["by"] == {"user_id": "alice" if winner is alice_tablet else "bob", "device_id": winner.device_id}
    assert (await loser.next("ended"))["reason"] == "other_device_accepted"
    assert (await alice_phone.next("ended"))["reason"] == "other_device_accepted"
    for client in (door, loser, alice_phone):  # nothing else: one accepted, one ended each
        await client.request("ping")
        assert [e["type"] for e in [client.inbox.get_nowait() for _ in range(client.inbox.qsize())]] == ["pong"]


@pytest.mark.parametrize("round_", range(6))
async def test_an_end_crossing_an_accept_leaves_one_consistent_outcome(server, round_):
    door, alice_phone, _, _ = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await alice_phone.next("incoming")
    end = (door, "end", {"call_id": call_id})
    accept = (alice_phone, "accept", {"call_id": call_id, "answer": ANSWER})
    if round_ % 2:
        end_reply, accept_reply = await _frames_in_one_write(end, accept)
    else:
        accept_reply, end_reply = await _frames_in_one_write(accept, end)
    assert end_reply["type"] == "ok"
    door_events = [await door.next("ended")]
    phone_ended = await alice_phone.next("ended")
    record = await server.store.calls.get_call(call_id)
    if accept_reply["type"] == "ok":  # the accept got there first: the door hung up a live call
        assert record.end_reason == "completed" and phone_ended["reason"] == "completed"
        assert record.accepted_by.device_id == "phone"
    else:  # the end got there first: the phone's accept crossed a canceled call
        assert accept_reply["code"] == "conflict"
        assert record.end_reason == "canceled" and phone_ended["reason"] == "canceled"
    assert door_events[0]["reason"] == record.end_reason


@pytest.mark.parametrize("settings", [HubSettings(max_duration_s=0.4)])
async def test_a_call_longer_than_the_maximum_ends_timed_out_for_both(server):
    door, alice_phone, _, _ = await site_with_door_and_residents(server)
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await alice_phone.next("incoming")
    await alice_phone.request("accept", call_id=call_id, answer=ANSWER)
    for party in (door, alice_phone):
        ended = await party.next("ended")
        assert ended["reason"] == "timed_out" and ended["by"] is None
    assert (await server.store.calls.get_call(call_id)).end_reason == "timed_out"

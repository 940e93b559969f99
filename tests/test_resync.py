"""Nothing waits on a server that forgot: devices claim their calls when they sign in, the
server ends what a restarted device no longer holds, rings carry their own lifetime, an
answered call outlives a short signaling outage, and storage failing never silences the bell."""

from __future__ import annotations

import asyncio

import pytest

from intercom_protocol.calls import DeviceRef
from intercom_server.records import Party
from intercom_server.settings import HubSettings

from .conftest import ANSWER, BACKENDS, OFFER

#: Each test on both state backends: one process in memory, one process of a cluster in Redis.
pytestmark = pytest.mark.backends(*BACKENDS)


async def _answered_call(server):
    """The door rings alice's phone, which answers; returns (door, phone, tokens, call_id)."""
    tokens = {"door": await server.user("door", kind="door"), "alice": await server.user("alice")}
    door = await server.signed_in("door", tokens["door"], "door")
    phone = await server.signed_in("alice", tokens["alice"], "phone")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await phone.next("incoming")
    assert (await phone.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
    await door.next("accepted")
    return door, phone, tokens, call_id


async def _sign_in(server, user_id: str, token: str, device_id: str, calls: list[str]) -> tuple[object, dict]:
    client = await server.connect()
    reply = await client.request("authenticate", user_id=user_id, access_token=token, device_id=device_id,
                                 calls=calls)
    assert reply["type"] == "ok", reply
    return client, reply


async def _after_timer(timer: asyncio.TimerHandle) -> None:
    """Resume once the loop has run `timer` (callbacks due later run after it)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_at(timer.when() + 0.001, done.set_result, None)
    await done


async def test_a_restarted_door_that_does_not_claim_its_call_ends_it_at_once(server):
    door, phone, tokens, call_id = await _answered_call(server)
    # The door's process restarts: a new connection, the same device id, no call held.
    again, reply = await _sign_in(server, "door", tokens["door"], "door", calls=[])
    assert reply["calls"] == []
    ended = await phone.next("ended")
    assert ended["call_id"] == call_id and ended["reason"] == "connection_lost"
    record = await server.store.calls.get_call(call_id)
    assert record.end_reason == "connection_lost" and record.accepted_by.user_id == "alice"
    # The resident is free: the door's next ring reaches her instead of a busy decline.
    next_call = (await again.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    assert (await phone.next("incoming"))["call_id"] == next_call


async def test_a_device_that_claims_its_call_keeps_it_and_is_told_so(server):
    door, phone, tokens, call_id = await _answered_call(server)
    await phone.close()
    phone, reply = await _sign_in(server, "alice", tokens["alice"], "phone", calls=[call_id])
    assert reply["calls"] == [{"call_id": call_id, "state": "connected", "role": "callee"}]
    assert (await phone.request("end", call_id=call_id))["type"] == "ok"
    assert (await door.next("ended"))["reason"] == "completed"
    assert (await server.store.calls.get_call(call_id)).end_reason == "completed"


async def test_a_device_is_told_which_of_its_calls_the_server_knows(server):
    """A phone that claims a call the server forgot (it restarted) learns it is gone."""
    _, _, tokens, call_id = await _answered_call(server)
    _, reply = await _sign_in(server, "alice", tokens["alice"], "tablet", calls=["call_forgotten"])
    assert reply["calls"] == []


async def test_a_ring_carries_its_lifetime_and_a_returning_phone_rings_again_with_less(server):
    tokens = {"door": await server.user("door", kind="door"), "alice": await server.user("alice")}
    door = await server.signed_in("door", tokens["door"], "door")
    phone = await server.signed_in("alice", tokens["alice"], "phone")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER, ring_timeout_s=20))["call_id"]
    first = await phone.next("incoming")
    assert 0 < first["expires_in_s"] <= 20
    await phone.close()
    phone, reply = await _sign_in(server, "alice", tokens["alice"], "phone", calls=[])
    assert reply["calls"] == [{"call_id": call_id, "state": "ringing", "role": "callee"}]
    again = await phone.next("incoming")
    assert again["call_id"] == call_id and again["expires_in_s"] <= first["expires_in_s"]


@pytest.mark.backends("memory")  # it waits on the memory backend's own timer, then looks
@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.05, media_grace_s=30)])
async def test_an_answered_call_outlives_a_signaling_outage_longer_than_the_ring_grace(server):
    door, phone, tokens, call_id = await _answered_call(server)
    await phone.close()
    device = DeviceRef("alice", "phone")
    while device in server.hub.endpoints:  # the server notices the closed socket
        await asyncio.sleep(0.01)
    await _after_timer(server.hub.state.timers.handles["grace:alice\x1fphone"])  # the ring grace has run out
    assert (await door.request("ping"))["type"] == "ok"
    assert (await door.next())["type"] == "pong"
    door.assert_quiet()  # no `ended`: the call's media may well be flowing
    phone, reply = await _sign_in(server, "alice", tokens["alice"], "phone", calls=[call_id])
    assert [c["call_id"] for c in reply["calls"]] == [call_id]
    assert (await door.request("end", call_id=call_id))["type"] == "ok"
    assert (await phone.next("ended"))["reason"] == "completed"


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.05, media_grace_s=0.1)])
async def test_an_answered_call_whose_party_never_returns_ends_connection_lost(server):
    door, phone, _, call_id = await _answered_call(server)
    await phone.close()
    ended = await door.next("ended")
    assert ended["call_id"] == call_id and ended["reason"] == "connection_lost"


async def _store_refuses_writes(server) -> None:
    """The database refuses every write from now on, as a full disk or a read-only file does."""
    await server.store.db.execute("PRAGMA query_only = ON")
    server.store.db.writer.submit(lambda db: db.execute("PRAGMA query_only = ON")).result(timeout=10)


async def test_a_store_that_cannot_write_never_silences_the_bell(server):
    tokens = {"door": await server.user("door", kind="door"), "alice": await server.user("alice")}
    door = await server.signed_in("door", tokens["door"], "door")
    phone = await server.signed_in("alice", tokens["alice"], "phone")
    await _store_refuses_writes(server)
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    assert (await phone.next("incoming"))["call_id"] == call_id
    assert (await phone.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
    await door.next("accepted")
    assert (await door.request("end", call_id=call_id))["type"] == "ok"
    assert (await phone.next("ended"))["reason"] == "completed"
    status, health = await server.api("GET", "/healthz")
    assert status == 200 and health["store_errors"] >= 3
    assert "readonly" in health["last_store_error"]


async def test_the_answer_is_stored_when_it_happens(server):
    _, _, _, call_id = await _answered_call(server)
    record = await server.store.calls.get_call(call_id)
    assert record.accepted_by == Party("alice", "phone") and record.ended_at is None


async def test_an_opening_whose_audit_entry_cannot_be_written_is_refused(server):
    door, phone, _, call_id = await _answered_call(server)
    await _store_refuses_writes(server)
    reply = await phone.request("action", call_id=call_id, name="open_door")
    assert reply["code"] == "internal" and "door log cannot be written" in reply["message"]
    assert (await door.request("ping"))["type"] == "ok"
    assert (await door.next())["type"] == "pong"
    door.assert_quiet()  # the door was never asked to open


async def test_the_audit_entry_is_on_disk_before_the_door_is_asked(server):
    door, phone, _, call_id = await _answered_call(server)
    reply = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    action = await door.next("action")
    [entry] = (await server.api("GET", "/v1/sites/home/audit"))[1]["events"]
    assert entry["outcome"] == "opening" and entry["call_id"] == call_id
    await door.ws.send_json({"type": "ok", "re": action["id"]})
    assert (await reply)["type"] == "ok"
    [entry] = (await server.api("GET", "/v1/sites/home/audit"))[1]["events"]
    assert entry["outcome"] == "opened"

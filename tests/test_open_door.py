"""The door action: who may open, what the door says, and the audit log that records it all."""

from __future__ import annotations

import asyncio

import pytest

from intercom_server.settings import HubSettings

from .conftest import ANSWER, BACKENDS, ENGINES, OFFER

#: The history, tokens and door log these tests read back are the store's: on both engines.
#: On both engines and both state backends: the protocol is the same, however the server is set up.
pytestmark = [pytest.mark.parametrize("server", ENGINES, indirect=True), pytest.mark.backends(*BACKENDS)]


async def _live_call(server, door_site="home", resident="alice", accept=True):
    """A door (site `door_site`) calls `resident`; returns (door, phone, call_id)."""
    door = await server.signed_in("door", await server.user("door", "door", site=door_site), device_id="door")
    phone = await server.signed_in(resident, await server.user(resident), device_id="phone")
    reply = await door.request("dial", callees=[resident], video=True, offer=OFFER)
    call_id = reply["call_id"]
    await phone.next("incoming")
    if accept:
        assert (await phone.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
        await door.next("accepted")
    return door, phone, call_id


async def _door_answers(door, reply: dict | None = None) -> dict:
    """Wait for the server's `action` request on the door and answer it like a door would."""
    request = await door.next("action")
    if reply is not None:
        await door.ws.send_json({"re": request["id"], **reply})
    return request


async def _audit(server, site="home") -> list[dict]:
    status, body = await server.api("GET", f"/v1/sites/{site}/audit")
    assert status == 200, body
    return body["events"]


async def test_the_resident_in_the_call_opens_the_door_and_it_is_logged(server):
    door, phone, call_id = await _live_call(server)
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    request = await _door_answers(door, {"type": "ok"})
    assert request["call_id"] == call_id and request["name"] == "open_door"
    assert request["by"] == {"user_id": "alice", "device_id": "phone", "display_name": "Alice"}
    assert (await reply_task)["type"] == "ok"
    [event] = await _audit(server)
    assert event["outcome"] == "opened" and event["call_id"] == call_id and event["door_id"] == "door"
    assert event["by"] == {"user_id": "alice", "device_id": "phone"} and event["at"].endswith("Z")


async def test_the_doors_refusal_decides_the_reply(server):
    door, phone, call_id = await _live_call(server)
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    await _door_answers(door, {"type": "error", "code": "conflict", "message": "the relay is already open"})
    reply = await reply_task
    assert reply["code"] == "conflict" and "relay is already open" in reply["message"]
    [event] = await _audit(server)
    assert event["outcome"] == "refused" and "relay is already open" in event["detail"]


@pytest.mark.parametrize("reply", [{"type": "error", "code": ["not", "a", "code"], "message": {"x": 1}},
                                   {"type": "error", "code": "made_up"}])
async def test_a_garbled_refusal_from_the_door_is_still_a_refusal(server, reply):
    door, phone, call_id = await _live_call(server)
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    await _door_answers(door, reply)
    answer = await reply_task
    assert answer["type"] == "error" and answer["code"] == "internal"
    assert [e["outcome"] for e in await _audit(server)] == ["refused"]


@pytest.mark.parametrize("settings", [HubSettings(door_reply_timeout_s=0.3)])
async def test_a_door_that_does_not_answer_fails_the_action_and_it_is_logged(server):
    door, phone, call_id = await _live_call(server)
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    await _door_answers(door, None)
    reply = await reply_task
    assert reply["code"] == "internal" and "did not answer" in reply["message"]
    [event] = await _audit(server)
    assert event["outcome"] == "failed"


async def test_a_ringing_call_cannot_open_the_door(server):
    door, phone, call_id = await _live_call(server, accept=False)
    reply = await phone.request("action", call_id=call_id, name="open_door")
    assert reply["code"] == "forbidden" and "not been answered" in reply["message"]
    await door.request("ping")  # frames arrive in order: an action sent before would be queued
    assert "action" not in [door.inbox.get_nowait()["type"] for _ in range(door.inbox.qsize())]
    [event] = await _audit(server)
    assert event["outcome"] == "refused"


async def test_another_resident_and_the_door_itself_are_refused(server):
    door, phone, call_id = await _live_call(server)
    bob = await server.signed_in("bob", await server.user("bob"))
    # Alice's own tablet did not answer: only the device in the call may open.
    second_phone = await server.signed_in("alice", (await server.store.tokens.issue_token("alice"))["access_token"],
                                          device_id="tablet")
    for client, fragment in ((bob, "not a party"), (second_phone, "not a party"), (door, "only a resident")):
        reply = await client.request("action", call_id=call_id, name="open_door")
        assert reply["code"] == "forbidden" and fragment in reply["message"], reply
    assert [e["outcome"] for e in await _audit(server)] == ["refused"] * 3


async def test_an_unknown_call_and_an_unknown_action(server):
    door, phone, call_id = await _live_call(server)
    reply = await phone.request("action", call_id="call_doesnotexist", name="open_door")
    assert reply["code"] == "forbidden"
    reply = await phone.request("action", call_id=call_id, name="launch_rocket")
    assert reply["code"] == "bad_request" and "open_door" in reply["message"]


@pytest.mark.parametrize("settings", [HubSettings(open_door_window_s=60)])
async def test_the_door_still_opens_shortly_after_the_call_ended(server):
    door, phone, call_id = await _live_call(server)
    await phone.request("end", call_id=call_id)
    await door.next("ended")
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    await _door_answers(door, {"type": "ok"})
    assert (await reply_task)["type"] == "ok"


@pytest.mark.parametrize("settings", [HubSettings(open_door_window_s=0)])
async def test_after_the_window_the_door_stays_shut(server):
    door, phone, call_id = await _live_call(server)
    await phone.request("end", call_id=call_id)
    await door.next("ended")
    reply = await phone.request("action", call_id=call_id, name="open_door")
    assert reply["code"] == "forbidden" and "ended more than" in reply["message"]


async def test_a_door_of_another_site_cannot_be_opened(server):
    """Dial never connects two sites, so move the door to another site in the middle of a call."""
    door, phone, call_id = await _live_call(server)
    await server.store.users.add_site("elsewhere", "Elsewhere")
    await server.store.db.execute("UPDATE users SET site_id = 'elsewhere' WHERE user_id = 'door'")
    reply = await phone.request("action", call_id=call_id, name="open_door")
    assert reply["code"] == "forbidden" and "not a door of your site" in reply["message"]


async def test_an_offline_door_is_a_conflict(server):
    door, phone, call_id = await _live_call(server)
    await door.close()
    await asyncio.wait_for(_until_gone(server, "door"), 5)
    reply = await phone.request("action", call_id=call_id, name="open_door")
    assert reply["code"] == "conflict" and "not connected" in reply["message"]
    [event] = await _audit(server)
    assert event["outcome"] == "failed"


async def _until_gone(server, user_id: str) -> None:
    hub = server.hub
    while any(d.user_id == user_id for d in hub.endpoints):
        await asyncio.sleep(0.01)


async def test_a_resident_who_called_the_door_may_open_it(server):
    """A resident looks outside: the resident dials, the door answers, then opens."""
    door = await server.signed_in("door", await server.user("door", "door"), device_id="door")
    phone = await server.signed_in("alice", await server.user("alice"), device_id="phone")
    call_id = (await phone.request("dial", callees=["door"], video=True, offer=OFFER))["call_id"]
    await door.next("incoming")
    await door.request("accept", call_id=call_id, answer=ANSWER)
    reply_task = asyncio.create_task(phone.request("action", call_id=call_id, name="open_door"))
    await _door_answers(door, {"type": "ok"})
    assert (await reply_task)["type"] == "ok"

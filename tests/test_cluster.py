"""Three server processes as one, as docs/cluster.md sets them up: Debian's PostgreSQL and
Redis, Debian's HAProxy in front (WebSocket, health checks), everything on loopback; the door
daemon and the residents are real processes that connect through HAProxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from intercom_sim.cluster import Cluster

from .conftest import ANSWER, OFFER, WsClient
from .mosquitto import HomeAssistant, Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RELAY = {"hardware": {"pins": {"relay": 22, "relay_pulse_s": 0.5, "backlight_led": 23}}}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    group = Cluster(tmp_path / "cluster")
    try:
        await group.start()
        yield group
    finally:
        await group.close()


async def press(door: Any) -> None:
    assert (await door.ctl("press"))["pressed"] is True
    assert (await door.ctl("release"))["pressed"] is False


async def connected(cluster: Cluster) -> list[int]:
    """Devices connected to each process, as its /healthz says."""
    return [(await cluster.health(i))[1]["connected_devices"] for i in range(cluster.size)]


async def record(cluster: Cluster, index: int, call_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.url(index)}/v1/direct_calls/{call_id}",
                            headers={"Api-Token": cluster.api_token}) as resp:
            assert resp.status == 200
            return dict(await resp.json())


async def settled(cluster: Cluster, index: int, call_id: str, reason: str) -> dict[str, Any]:
    """The call's record as one process reads it, once the end written by whichever process
    ended the call is committed (the ring and the hang-up go first, the record after)."""
    async def ended() -> dict[str, Any]:
        while (found := await record(cluster, index, call_id))["end_reason"] != reason:
            await asyncio.sleep(0.05)
        return found
    return await asyncio.wait_for(ended(), 10)


async def test_a_visitor_s_call_crosses_processes_with_video_the_door_opens_and_history_is_one(cluster):
    site = cluster.site
    alice = await site.start_resident("alice", "--once", "--open-door", "--hangup-after-frames", "45")
    bob = await site.start_resident("bob", "--once", "--answer", "ignore")
    door = await site.start_door("frontdoor", [{"residents": ["alice", "bob"], "timeout_s": 30}], settings=RELAY)
    assert await connected(cluster) == [1, 1, 1], "HAProxy put the door and each resident on a process of its own"

    await press(door)
    await bob.wait_for_event("incoming")  # rung from another process
    opened = await alice.wait_for_event("door_opened", timeout=30)  # asked across processes, audited
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 45 and ended["distinct_frames"] >= 20
    assert (await bob.wait_for_event("ended"))["reason"] == "other_device_accepted"
    status = await door.wait_status(lambda s: s["state"] == "idle" and not s["pins"]["relay"]["energised"])
    assert status["pins"]["relay"]["pulses"] == 1 and status["door_openings"][0]["call_id"] == opened["call_id"]

    records = [await settled(cluster, i, ended["call_id"], "completed") for i in range(cluster.size)]
    assert records[0]["accepted_by"]["user_id"] == "alice"
    assert records[1:] == records[:-1], "every process shows the same history"
    code, audit = await site.api("GET", "/v1/sites/home/audit")
    assert code == 200 and [(e["outcome"], e["call_id"]) for e in audit["events"]] == [("opened", opened["call_id"])]


async def test_simultaneous_accepts_on_different_processes_give_exactly_one_ok(cluster):
    site = cluster.site
    tokens = {}
    for user, kind in (("frontdoor", "door"), ("alice", "resident"), ("bob", "resident")):
        tokens[user] = (await site.add_user(user, kind, user.title())).read_text().strip()
    clients: dict[str, WsClient] = {}
    async with aiohttp.ClientSession() as http:
        # Straight to each process, so that the two phones are surely on different ones.
        for index, user in enumerate(("frontdoor", "alice", "bob")):
            client = WsClient(await http.ws_connect(cluster.url(index).replace("http", "ws") + "/v1/ws"))
            reply = await client.request("authenticate", user_id=user, access_token=tokens[user], device_id="d")
            assert reply["type"] == "ok", reply
            clients[user] = client
        door, alice, bob = clients["frontdoor"], clients["alice"], clients["bob"]
        winners = []
        for _ in range(25):
            call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER))["call_id"]
            for phone in (alice, bob):
                assert (await phone.next("incoming"))["call_id"] == call_id
            replies = await asyncio.gather(alice.request("accept", call_id=call_id, answer=ANSWER),
                                           bob.request("accept", call_id=call_id, answer=ANSWER))
            kinds = sorted(r["type"] for r in replies)
            assert kinds == ["error", "ok"], replies
            loser = replies[0] if replies[0]["type"] == "error" else replies[1]
            assert loser["code"] == "conflict"
            winner, other = (alice, bob) if replies[0]["type"] == "ok" else (bob, alice)
            winners.append(winner is alice)
            accepted = await door.next("accepted")
            assert accepted["call_id"] == call_id
            assert (await other.next("ended"))["reason"] == "other_device_accepted"
            assert (await door.request("end", call_id=call_id))["type"] == "ok"
            assert (await winner.next("ended"))["reason"] == "completed"
            assert (await door.next("ended"))["call_id"] == call_id
        assert (await settled(cluster, 2, call_id, "completed"))["accepted_by"] is not None
        # Nobody answers: the ring timeout, kept in Redis, ends it, from whichever process polls.
        call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER, ring_timeout_s=1))["call_id"]
        for client in (door, alice, bob):
            ended = await client.next("ended", timeout=10)
            assert (ended["call_id"], ended["reason"]) == (call_id, "no_answer")
        for client in clients.values():
            await client.close()
    assert (await settled(cluster, 1, call_id, "no_answer"))["accepted_by"] is None


async def test_a_visitor_s_message_left_on_one_process_plays_from_another(cluster):
    site = cluster.site
    tokens = {user: (await site.add_user(user, kind, user.title())).read_text().strip()
              for user, kind in (("frontdoor", "door"), ("alice", "resident"))}
    async with aiohttp.ClientSession() as http:
        door = WsClient(await http.ws_connect(cluster.url(0).replace("http", "ws") + "/v1/ws"))
        assert (await door.request("authenticate", user_id="frontdoor", access_token=tokens["frontdoor"],
                                   device_id="door"))["type"] == "ok"
        call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
        assert (await door.request("end", call_id=call_id))["type"] == "ok"  # nobody answered
        video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
        async with http.put(f"{cluster.url(0)}/v1/direct_calls/{call_id}/message", data=video,
                            headers={"Authorization": f"Bearer {tokens['frontdoor']}"}) as resp:
            assert resp.status == 201
        async with http.get(f"{cluster.url(2)}/v1/direct_calls/{call_id}/message",
                            headers={"Authorization": f"Bearer {tokens['alice']}"}) as resp:
            assert resp.status == 200 and await resp.read() == video
        await door.close()
    assert (await record(cluster, 1, call_id))["has_message"] is True


async def _live_call(cluster: Cluster) -> tuple[Any, Any, str]:
    site = cluster.site
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "1000000")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await press(door)
    answered = await alice.wait_for_event("answered", timeout=30)
    await alice.wait_for_event("first_frame", timeout=30)
    await door.wait_status(lambda s: s["state"] == "connected")
    return door, alice, answered["call_id"]


async def _both_signed_in(cluster: Cluster, door: Any) -> None:
    """The door and the resident are signed in (on whichever process), and the call is on."""
    async def two() -> None:
        while sum(await connected(cluster)) != 2:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(two(), 30)
    await door.wait_status(lambda s: s["server"]["connected"] and s["state"] == "connected", timeout=30)


def _online(resident: Any) -> int:
    return len([e for e in resident.events() if e["event"] == "online"])


async def test_a_rolling_restart_of_every_process_never_stops_the_call(cluster):
    door, alice, call_id = await _live_call(cluster)
    door_sessions, alice_sessions = (await door.ctl("status"))["server"]["sign_ins"], _online(alice)
    for index in range(cluster.size):
        await cluster.restart(index)  # SIGTERM: it closes its connections with 1012; then it starts again
        await _both_signed_in(cluster, door)
    # Every process was restarted, so each device lost its process once at least, and came
    # back through HAProxy to another, within its grace, still in the call.
    assert (await door.ctl("status"))["server"]["sign_ins"] > door_sessions and _online(alice) > alice_sessions
    assert (await door.ctl("hangup"))["hanging_up"] is True
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["call_id"] == call_id and ended["reason"] == "completed"
    assert ended["longest_gap_s"] < 2.0, "the media went on while the signaling moved"
    records = [await settled(cluster, i, call_id, "completed") for i in range(cluster.size)]
    assert records[1:] == records[:-1]
    code, users = await cluster.site.api("GET", "/v1/sites/home/users")
    assert code == 200 and [u["user_id"] for u in users["users"]] == ["alice", "frontdoor"]


async def test_a_process_killed_mid_call_loses_no_call_and_nothing_stored(cluster):
    """As docs/cluster.md says: the devices of a killed process sign in again through HAProxy
    to another and claim their calls there; the media never went through the server."""
    door, alice, call_id = await _live_call(cluster)
    where = await connected(cluster)
    victim = where.index(max(where))  # a process that a device of the call is on
    sessions = (await door.ctl("status"))["server"]["sign_ins"] + _online(alice)
    await cluster.kill(victim)

    async def moved() -> None:
        while sum(await survivors_connected(cluster, victim)) != 2:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(moved(), 30)
    await door.wait_status(lambda s: s["server"]["connected"] and s["state"] == "connected", timeout=30)
    assert (await door.ctl("status"))["server"]["sign_ins"] + _online(alice) > sessions  # one moved
    assert (await door.ctl("hangup"))["hanging_up"] is True
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["call_id"] == call_id and ended["reason"] == "completed"
    assert ended["longest_gap_s"] < 2.0, "the media went on while the signaling moved"
    survivor = next(i for i in range(cluster.size) if i != victim)
    await settled(cluster, survivor, call_id, "completed")


async def survivors_connected(cluster: Cluster, victim: int) -> list[int]:
    return [(await cluster.health(i))[1]["connected_devices"] for i in range(cluster.size) if i != victim]


async def test_processes_that_lose_redis_say_so_and_heal_by_themselves(tmp_path):
    """Redis away: /healthz answers 503, HAProxy sends nobody there, a new device is refused.
    Redis back, even empty: each process joins again with the devices it kept, unrestarted."""
    group = Cluster(tmp_path / "cluster", size=2)
    try:
        await group.start()
        site = group.site
        alice = await site.start_resident("alice", "--once", "--answer", "ignore")
        assert group.redis is not None
        group.redis.stop()

        async def unready() -> None:
            while [(await group.health(i))[0] for i in range(group.size)] != [503] * group.size:
                await asyncio.sleep(0.05)
            while [await group.haproxy_status(i) for i in range(group.size)] != ["DOWN"] * group.size:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(unready(), 30)
        status, health = await group.health(0)
        assert health["cluster"]["redis"]["ok"] is False and health["cluster"]["redis"]["error"]
        async with aiohttp.ClientSession() as http:
            async with http.get(group.url(1) + "/healthz") as resp:  # what HAProxy asks, without the token
                assert resp.status == 503 and await resp.json() == {"ok": False}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(group.url(0).replace("http", "ws") + "/v1/ws")
            assert refused.value.status == 503

        group.redis.start_again()  # empty: the processes put back what they know
        await group.wait_healthy(range(group.size))
        door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
        await press(door)
        assert (await alice.wait_for_event("incoming", timeout=30))["caller"]["user_id"] == "frontdoor"
    finally:
        await group.close()


async def _direct(cluster: Cluster, http: aiohttp.ClientSession, index: int, user: str, token: str) -> WsClient:
    """A device signed in on this very process, not wherever HAProxy would send it."""
    client = WsClient(await http.ws_connect(cluster.url(index).replace("http", "ws") + "/v1/ws"))
    reply = await client.request("authenticate", user_id=user, access_token=token, device_id="d")
    assert reply["type"] == "ok", reply
    return client


@contextlib.asynccontextmanager
async def _door_and_alice(root: Path, **settings: Any) -> AsyncIterator[tuple[Cluster, WsClient, WsClient]]:
    """Two processes; the door signed in on the first, alice's phone on the second."""
    group = Cluster(root, size=2, settings=settings)
    try:
        await group.start()
        tokens = {user: (await group.site.add_user(user, kind, user.title())).read_text().strip()
                  for user, kind in (("frontdoor", "door"), ("alice", "resident"))}
        async with aiohttp.ClientSession() as http:
            door = await _direct(group, http, 0, "frontdoor", tokens["frontdoor"])
            alice = await _direct(group, http, 1, "alice", tokens["alice"])
            yield group, door, alice
            for client in (door, alice):
                await client.close()
    finally:
        await group.close()


async def test_a_press_rings_a_connected_resident_while_postgresql_is_down(tmp_path):
    """Who a dial rings comes from each process's memory: with the database stopped, the door
    and the phone already connected (on different processes) still ring and talk; what the
    database did not take is counted for the operator."""
    async with _door_and_alice(tmp_path / "cluster") as (group, door, alice):
        assert group.postgres is not None
        for outage in (False, True):  # the house in use, then the database gone
            if outage:
                group.postgres.pause()
            reply = await door.request("dial", callees=["alice"], offer=OFFER)
            assert reply["type"] == "ok", reply
            assert (await alice.next("incoming", timeout=15))["call_id"] == reply["call_id"]
            assert (await alice.request("accept", call_id=reply["call_id"], answer=ANSWER))["type"] == "ok"
            assert (await door.next("accepted", timeout=15))["call_id"] == reply["call_id"]
            assert (await door.request("end", call_id=reply["call_id"]))["type"] == "ok"
            assert (await alice.next("ended", timeout=15))["reason"] == "completed"
        # The process notices at its next health check: HAProxy sends no new device there, and
        # the records that could not be written are counted for the operator.
        async def noticed() -> dict[str, Any]:
            while True:
                status, health = await group.health(0)
                if status == 503 and health["store_errors"] >= 1:
                    return health
                await asyncio.sleep(0.1)
        health = await asyncio.wait_for(noticed(), 30)
        assert health["database"]["ok"] is False and health["database"]["error"]
        group.postgres.resume()


async def test_a_process_restarted_under_its_name_at_once_lets_go_of_what_it_held(tmp_path):
    """SIGKILL, then the supervisor starts it again under the same name within two seconds:
    its heartbeat is back before anyone noticed it gone, so it must itself let go of the
    devices its previous life held. The resident who was on it never returns: its call ends
    `connection_lost` after the grace, and nobody counts its phone as connected."""
    async with _door_and_alice(tmp_path / "cluster", calls={"grace_s": 1, "media_grace_s": 2}) as (group, door, alice):
        call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
        await alice.next("incoming", timeout=15)
        assert (await alice.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
        await door.next("accepted", timeout=15)
        await group.kill(1)
        await group.start_server(1)  # the same name, s1, at once
        ended = await door.next("ended", timeout=20)
        assert (ended["call_id"], ended["reason"]) == (call_id, "connection_lost")
        assert group.redis is not None
        redis = aioredis.from_url(group.redis.url, decode_responses=True)
        try:
            assert await redis.hgetall("intercom:presence:alice") == {}
            assert await redis.smembers("intercom:devices:s1") == set()
        finally:
            await redis.aclose()


def _pressed(call_id: str | None = None) -> Any:
    def match(payload: bytes) -> bool:
        try:
            event = json.loads(payload)
        except ValueError:
            return False
        return event.get("event_type") == "pressed" and call_id in (None, event.get("call_id"))
    return match


async def test_home_assistant_over_mqtt_on_a_cluster_through_a_rolling_restart(tmp_path):
    """One process of three publishes (the one holding the `mqtt` lease), whichever process the
    door and the call are on; after each process in turn restarts, Home Assistant still sees
    every press once, and the door's call state."""
    broker = Mosquitto(tmp_path / "mosquitto")
    await broker.start()
    group = Cluster(tmp_path / "cluster", settings={"mqtt": broker.server_settings})
    try:
        await group.start()
        async with HomeAssistant(broker) as ha:
            site = group.site
            await site.start_resident("alice", "--answer", "ignore")
            door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 60}])
            await ha.on("intercom/frontdoor/availability", lambda p: p == b"online", timeout=30)
            mark = 0
            for restarted in (False, True):
                if restarted:
                    for index in range(group.size):
                        await group.restart(index)
                    await door.wait_status(lambda s: s["server"]["connected"], timeout=30)
                    await ha.on("intercom/status", lambda p: p == b"online", timeout=30, after=mark)
                mark = len(ha.messages)
                await press(door)
                pressed = await ha.on("intercom/frontdoor/event", _pressed(), timeout=30, after=mark)
                await ha.on("intercom/frontdoor/call_state", lambda p: p == b"ringing", timeout=30, after=mark)
                assert (await door.ctl("hangup"))["hanging_up"] is True
                await ha.on("intercom/frontdoor/call_state", lambda p: p == b"idle", timeout=30, after=mark)
                presses = [m for m in ha.messages[mark:] if m.topic == "intercom/frontdoor/event"
                           and _pressed(pressed.json()["call_id"])(m.payload)]
                assert len(presses) == 1, "one process publishes, once"
            leaders = [(await group.health(i))[1]["mqtt"]["leader"] for i in range(group.size)]
            assert leaders.count(True) == 1, leaders
    finally:
        await group.close()
        await broker.stop()

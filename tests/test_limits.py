"""Limits: the rules on their own (exact, with a given clock), then over a real WebSocket."""

from __future__ import annotations

import json

import pytest

from intercom_protocol.messages import MAX_MESSAGE_BYTES
from intercom_server.limits import FailureWindow, LimitSettings, TokenBucket
from intercom_server.settings import HubSettings

#: Each test on both state backends: one process in memory, one process of a cluster in Redis.
from .conftest import BACKENDS

pytestmark = pytest.mark.backends(*BACKENDS)


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.1)
    assert not bucket.take(0.05)
    assert bucket.take(0.1)
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)


def test_failure_window_blocks_after_the_limit_until_the_oldest_failure_leaves():
    window = FailureWindow(limit=3, window_s=60)
    for t in (0, 10, 20):
        assert window.blocked_for("alice", t) == 0
        window.fail("alice", t)
    assert window.blocked_for("alice", 30) == pytest.approx(30)
    assert window.blocked_for("bob", 30) == 0
    assert window.blocked_for("alice", 60.5) == 0  # the failure at 0 has left the window


def test_failure_window_memory_stays_bounded():
    window = FailureWindow(limit=2, window_s=60, max_keys=100)
    for i in range(1000):
        window.fail(f"addr{i}", 0)
    assert len(window._failures) <= 100


def _limited(**limits) -> HubSettings:
    return HubSettings(limits=LimitSettings(**limits))


async def test_an_oversized_message_gets_too_large_and_the_connection_stays(server):
    client = await server.signed_in("alice", await server.user("alice"))
    await client.send_raw(json.dumps({"type": "ping", "id": "big", "pad": "x" * MAX_MESSAGE_BYTES}))
    reply = await client.next("error")
    assert reply["code"] == "too_large"
    assert (await client.request("ping"))["type"] == "ok"


@pytest.mark.parametrize("settings", [_limited(messages_per_s=5, message_burst=10)])
async def test_a_flood_is_answered_rate_limited_and_the_connection_stays(server):
    client = await server.signed_in("alice", await server.user("alice"))
    for i in range(30):
        await client.send_raw(json.dumps({"type": "ping", "id": f"p{i}"}))
    answers: dict[str, dict] = {}
    while len(answers) < 30:  # every request is answered (pongs come in between)
        reply = await client.next()
        if reply["type"] in ("ok", "error"):
            answers[reply["re"]] = reply
    limited = [r for r in answers.values() if r["type"] == "error"]
    assert {r["code"] for r in limited} == {"rate_limited"}
    # The burst of 10 (less the authenticate) passes, plus what the rate refills meanwhile.
    assert 15 <= len(limited) <= 21
    assert answers["p0"]["type"] == "ok"


@pytest.mark.parametrize("settings", [_limited(auth_failures_per_user=3, auth_failures_per_address=100)])
async def test_wrong_tokens_for_a_user_never_lock_out_its_right_token(server):
    """Anyone who can reach the server could once keep a door offline by guessing its token
    wrong on purpose: failures per user id are now only logged."""
    token = await server.user("alice")
    client = await server.connect()
    for _ in range(12):
        reply = await client.request("authenticate", user_id="alice", access_token="ict_guess")
        assert reply["code"] == "unauthenticated"
    alice = await server.signed_in("alice", token, "phone")
    assert (await alice.request("ping"))["type"] == "ok"


@pytest.mark.parametrize("settings", [_limited(auth_failures_per_address=3)])
async def test_a_throttled_address_still_signs_in_with_a_valid_token(server):
    """Behind one NAT or proxy, the guesser and the real door share an address: the guesses
    are refused, the door is not."""
    token = await server.user("door", kind="door")
    guesser = await server.connect()
    for _ in range(3):
        assert (await guesser.request("authenticate", user_id="door", access_token="x"))["code"] == "unauthenticated"
    reply = await guesser.request("authenticate", user_id="door", access_token="x")
    assert reply["code"] == "rate_limited" and "try again in" in reply["message"]
    door = await server.signed_in("door", token, "door")
    assert (await door.request("ping"))["type"] == "ok"


@pytest.mark.parametrize("settings", [_limited(auth_failures_per_user=100, auth_failures_per_address=4)])
async def test_guessing_from_one_address_is_throttled_across_users(server):
    await server.user("alice")
    client = await server.connect()
    for i in range(4):
        reply = await client.request("authenticate", user_id=f"user{i}", access_token="ict_guess")
        assert reply["code"] == "unauthenticated"
    reply = await client.request("authenticate", user_id="alice", access_token="ict_guess")
    assert reply["code"] == "rate_limited"


@pytest.mark.parametrize("settings", [_limited(connections_per_user=2)])
async def test_connections_per_user_are_bounded_but_the_same_device_may_come_back(server):
    token = await server.user("alice")
    await server.signed_in("alice", token, device_id="phone")
    await server.signed_in("alice", token, device_id="tablet")
    third = await server.connect()
    reply = await third.request("authenticate", user_id="alice", access_token=token, device_id="laptop")
    assert reply["code"] == "rate_limited" and "2 devices" in reply["message"]
    again = await server.signed_in("alice", token, device_id="phone")  # replaces the old phone socket
    assert (await again.request("ping"))["type"] == "ok"


async def test_a_client_that_does_not_read_is_cut_off_instead_of_filling_memory():
    import asyncio

    from intercom_server.connection import Connection

    stuck = asyncio.Event()  # never set: the socket's buffers are full
    closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def send_text(text: str) -> None:
        await stuck.wait()

    async def close(code: int, reason: str) -> None:
        closed.set_result((code, reason))

    conn = Connection(send_text, close, "127.0.0.1", LimitSettings(send_queue=16))
    for i in range(40):
        conn.send({"type": "pong", "n": i})
    code, reason = await asyncio.wait_for(closed, 10)
    assert code == 1008 and "unread" in reason
    assert len(conn.outbox or ()) <= 17  # nothing more was queued once the limit was hit

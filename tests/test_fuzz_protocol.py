"""Property: whatever a signed-in stranger sends, the server answers, stays up and leaks nothing.

Each example starts a real server on loopback with a live call between a door and a resident
of one site (the victims), and lets an attacker from another site throw generated frames at
it on two connections (signed in, and not). Frames are random text, binary, arbitrary JSON and
near-valid requests built from the protocol's own field names and the victims' real ids.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intercom_protocol.messages import MAX_MESSAGE_BYTES, REQUEST_TYPES
from intercom_server.app import HUB, create_app
from intercom_server.settings import HubSettings
from intercom_server.store import Store

from .conftest import ANSWER, API_TOKEN, OFFER

SNAPSHOT = b"\xff\xd8\xff\xe0victim-visitor-face"
VICTIM_NAME = "Alice Victim"
VICTIM_SDP = "v=0\r\no=- 99 99 IN IP4 10.9.9.9\r\ns=victim\r\nt=0 0\r\n"
CALL = "$CALL"  # replaced by the victims' real call id before sending

ids = st.sampled_from([CALL, "alice", "door_a", "door_b", "mallory", "open_door", "", "call_0"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12) | ids,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
field_values = st.one_of(json_values, ids, st.lists(ids, max_size=3), st.just(OFFER), st.just(ANSWER),
                         st.just(base64.b64encode(b"\xff\xd8\xffjpeg").decode()))
types = st.sampled_from(sorted(REQUEST_TYPES - {"deauthenticate"}) + ["ok", "error", "incoming", "action"]) \
    | st.text(max_size=10)
near_requests = st.fixed_dictionaries(
    {"type": types},
    optional={"id": st.text(max_size=8) | st.integers() | st.none(), "re": st.text(max_size=8) | st.none(),
              **{name: field_values for name in ("call_id", "callees", "offer", "answer", "name", "user_id",
                                                  "access_token", "device_id", "snapshot", "video",
                                                  "ring_timeout_s", "code")}})
frames = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    json_values.map(json.dumps),
    near_requests.map(json.dumps),
    near_requests.map(json.dumps),
)


def _replace_call(value: Any, call_id: str) -> Any:
    if value == CALL:
        return call_id
    if isinstance(value, str):
        return value.replace(CALL, call_id)
    if isinstance(value, bytes):
        return value.replace(CALL.encode(), call_id.encode())
    return value


def _expects_reply(frame: str | bytes) -> bool:
    """Every frame is answered except a well-formed reply to a request of the server."""
    if isinstance(frame, bytes):
        return True
    try:
        data = json.loads(frame)
    except ValueError:
        return True
    return not (isinstance(data, dict) and data.get("type") in ("ok", "error") and isinstance(data.get("re"), str)
                and len(frame) <= MAX_MESSAGE_BYTES)


class Listener:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.replies = 0
        self.changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.received.append(data)
                self.replies += data["type"] in ("ok", "error")
                self.changed.set()

    async def until(self, replies: int) -> None:
        while self.replies < replies:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)

    async def request(self, kind: str, **body: Any) -> dict[str, Any]:
        rid = f"setup-{len(self.received)}-{kind}"
        count = self.replies
        await self.ws.send_str(json.dumps({"type": kind, "id": rid, **body}))
        await self.until(count + 1)
        return next(r for r in self.received if r.get("re") == rid)


async def _scenario(store: Store, tokens: dict[str, str], sent: list[str | bytes]) -> None:
    app = create_app(store, HubSettings(), API_TOKEN)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/ws"
    async with aiohttp.ClientSession() as http:
        async def connect(user: str | None) -> Listener:
            listener = Listener(await http.ws_connect(url))
            if user:
                reply = await listener.request("authenticate", user_id=user, access_token=tokens[user],
                                               device_id=f"{user}-dev")
                assert reply["type"] == "ok"
            return listener

        door, alice = await connect("door_a"), await connect("alice")
        offer = {"type": "offer", "sdp": VICTIM_SDP}
        call_id = (await door.request("dial", callees=["alice"], offer=offer,
                                      snapshot=base64.b64encode(SNAPSHOT).decode()))["call_id"]
        assert (await alice.request("accept", call_id=call_id, answer=ANSWER))["type"] == "ok"
        victims_before = (len(door.received), len(alice.received))

        attacker, anonymous = await connect("mallory"), await connect(None)
        for listener in (attacker, anonymous):
            base = listener.replies
            expected = 0
            for frame in sent:
                frame = _replace_call(frame, call_id)
                await (listener.ws.send_bytes(frame) if isinstance(frame, bytes) else listener.ws.send_str(frame))
                expected += _expects_reply(frame)
            # Every frame is answered, and the connection is still up and in order afterwards.
            pong = await listener.request("ping")
            assert pong["type"] == ("ok" if listener is attacker else "error")
            assert listener.replies - base == expected + 1
            _assert_nothing_leaked(listener, call_id, own_calls={
                r["call_id"] for r in listener.received if r["type"] == "ok" and "call_id" in r})
            assert not any(r.get("code") == "internal" for r in listener.received), listener.received

        # The victims' call is untouched: nobody was told anything, and it is still live.
        assert (len(door.received), len(alice.received)) == victims_before
        hub = app[HUB]
        live = await hub.service.find_call(call_id)
        assert live is not None and not live.ended and live.accepted_by is not None
        await door.request("end", call_id=call_id)
    await runner.cleanup()


def _assert_nothing_leaked(listener: Listener, victim_call: str, own_calls: set[str]) -> None:
    for message in listener.received:
        text = json.dumps(message)
        assert VICTIM_NAME not in text and "10.9.9.9" not in text and "victim-visitor" not in text, message
        if message["type"] not in ("ok", "error"):  # events: only about the attacker's own calls
            assert message["type"] == "pong" or message.get("call_id") in own_calls, message
            assert message.get("call_id") != victim_call, message


async def _victims(path: Path) -> tuple[Store, dict[str, str]]:
    store = await Store.open(path)
    await store.users.add_site("a", "Victims' house")
    await store.users.add_site("b", "Attacker's flat")
    await store.users.add_user("door_a", "door", "a", "Front door")
    await store.users.add_user("alice", "resident", "a", VICTIM_NAME)
    await store.users.add_user("door_b", "door", "b", "Attacker's door")
    await store.users.add_user("mallory", "resident", "b", "Mallory")
    tokens = {u: (await store.tokens.issue_token(u))["access_token"] for u in ("door_a", "alice", "mallory")}
    return store, tokens


@pytest.fixture(scope="module")
def victims(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, str]]:
    return asyncio.run(_victims(Path(tmp_path_factory.mktemp("fuzz")) / "intercom.db"))


@given(sent=st.lists(frames, min_size=1, max_size=25))
@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_random_and_malformed_frames_never_crash_leak_or_go_unanswered(victims, caplog, sent):
    store, tokens = victims
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="intercom.server"):
        asyncio.run(_scenario(store, tokens, sent))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

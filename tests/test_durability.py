"""A server process killed mid-call and started again loses nothing that was stored."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from intercom_sim.harness import Installation

from .conftest import ANSWER, OFFER, WsClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def _signed_in(http: aiohttp.ClientSession, site: Installation, user_id: str, token: str) -> WsClient:
    client = WsClient(await http.ws_connect(site.ws_url))
    reply = await client.request("authenticate", user_id=user_id, access_token=token, device_id=f"{user_id}-1")
    assert reply["type"] == "ok", reply
    return client


async def test_a_crash_keeps_users_tokens_and_calls_and_ends_live_calls_unknown(tmp_path: Path):
    site = Installation(tmp_path)
    await site.start_server()
    try:
        tokens = {u: (await site.add_user(u, kind, u.title())).read_text().strip()
                  for u, kind in (("door", "door"), ("alice", "resident"))}
        revoked = await site.server_cli("token", "issue", "alice")
        await site.server_cli("token", "revoke", "alice", revoked["token_id"])
        async with aiohttp.ClientSession() as http:
            door = await _signed_in(http, site, "door", tokens["door"])
            alice = await _signed_in(http, site, "alice", tokens["alice"])
            finished = (await door.request("dial", callees=["alice"], offer=OFFER, snapshot="/9j/4AAQ"))["call_id"]
            await alice.next("incoming")
            await alice.request("accept", call_id=finished, answer=ANSWER)
            await door.request("end", call_id=finished)
            live = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
            await alice.next("incoming")
            await alice.request("accept", call_id=live, answer=ANSWER)
            # The record and its answer are committed off the event loop within milliseconds;
            # once the API has shown them, they survive the crash.
            status, record = await site.api("GET", f"/v1/direct_calls/{live}")
            assert record["accepted_by"]["user_id"] == "alice" and record["ended_at"] is None

            await site.stop_server(crash=True)
            await site.restart_server()

            status, user = await site.api("GET", "/v1/users/alice")
            assert status == 200 and user["display_name"] == "Alice"
            status, listed = await site.api("GET", "/v1/users/alice/tokens")
            assert revoked["token_id"] not in {t["token_id"] for t in listed["tokens"]}
            status, record = await site.api("GET", f"/v1/direct_calls/{finished}")
            assert record["end_reason"] == "completed" and record["accepted_by"]["user_id"] == "alice"
            assert record["has_snapshot"] is True
            status, record = await site.api("GET", f"/v1/direct_calls/{live}")
            assert record["end_reason"] == "unknown" and record["ended_at"] is not None
            assert record["accepted_by"]["user_id"] == "alice"  # stored when it happened
            # The same tokens still sign in; the revoked one still does not.
            again = await _signed_in(http, site, "alice", tokens["alice"])
            assert (await again.request("ping"))["type"] == "ok"
            refused = WsClient(await http.ws_connect(site.ws_url))
            reply = await refused.request("authenticate", user_id="alice", access_token=revoked["access_token"])
            assert reply["code"] == "unauthenticated"
            for client in (door, alice, again, refused):
                await client.close()
    finally:
        await site.close()

"""What an attacker tries, and what stops it: revoked tokens that keep their sessions, strings
that are not text, JSON nested to break the parser, pages of other sites, one client behind
a proxy throttling everyone, and what the server tells strangers or leaves readable on disk."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from intercom.signaling import SignalingClient
from intercom_protocol.messages import CLOSE_TOKEN_REVOKED
from intercom_server.app import create_app
from intercom_server.limits import LimitSettings
from intercom_server.settings import HubSettings
from intercom_server.store import Store

from .conftest import API_TOKEN, OFFER, WsClient, self_signed_certificate


async def _closed_with(client, code: int, timeout: float = 5.0) -> None:
    await asyncio.wait_for(client.reader, timeout)
    assert client.ws.close_code == code


async def test_revoking_a_token_ends_its_live_session_and_call_at_once(server):
    await server.user("door", kind="door")
    token = await server.store.tokens.issue_token("door")
    alice_token = await server.user("alice")
    door = await server.signed_in("door", token["access_token"], "door")
    phone = await server.signed_in("alice", alice_token, "phone")
    call_id = (await door.request("dial", callees=["alice"], offer=OFFER))["call_id"]
    await phone.next("incoming")
    status, _ = await server.api("DELETE", f"/v1/users/door/tokens/{token['token_id']}")
    assert status == 204
    await _closed_with(door, CLOSE_TOKEN_REVOKED)
    ended = await phone.next("ended")
    assert ended["call_id"] == call_id and ended["reason"] == "connection_lost"


async def test_signing_out_ends_the_phones_other_live_session(server):
    token = await server.user("alice")
    phone = await server.signed_in("alice", token, "phone")
    status, _ = await server.api("DELETE", "/v1/me/token", bearer=token)
    assert status == 204
    await _closed_with(phone, CLOSE_TOKEN_REVOKED)


async def test_a_token_revoked_from_a_shell_ends_its_session(server):
    await server.user("alice")
    token = await server.store.tokens.issue_token("alice")
    phone = await server.signed_in("alice", token["access_token"], "phone")
    shell = await Store.open(server.database)  # `intercom-server token revoke`: another process, another connection
    await shell.tokens.revoke_token("alice", token["token_id"])
    await shell.close()
    await _closed_with(phone, CLOSE_TOKEN_REVOKED)


async def test_an_expiring_token_ends_its_session_when_it_expires(server):
    await server.user("alice")
    token = await server.store.tokens.issue_token("alice", expires_in_s=0.3)
    phone = await server.signed_in("alice", token["access_token"], "phone")
    await _closed_with(phone, CLOSE_TOKEN_REVOKED)
    again = await server.connect()
    assert (await again.request("authenticate", user_id="alice",
                                access_token=token["access_token"]))["code"] == "unauthenticated"


async def test_a_lone_surrogate_is_refused_at_the_edge_and_the_connection_stays(server):
    token = await server.user("alice")
    client = await server.connect()
    await client.send_raw('{"type":"authenticate","id":"a1","user_id":"alice","access_token":"' + token + '",'
                          '"device_id":"ph\\ud800one"}')
    reply = await client.next("error")
    assert reply["code"] == "bad_request" and "Unicode" in reply["message"] and reply["re"] is None
    # A proper pair of surrogates is an ordinary character.
    signed = await client.request("authenticate", user_id="alice", access_token=token, device_id="ph\U0001F600")
    assert signed["type"] == "ok" and signed["device_id"] == "ph\U0001F600"


async def test_deeply_nested_json_gets_an_error_reply_not_a_closed_socket(server):
    client = await server.connect()
    await client.send_raw('{"type":"ping","id":"x","a":' + "[" * 100_000 + "]" * 100_000 + "}")
    reply = await client.next("error")
    assert reply["code"] == "bad_request" and "nested" in reply["message"]
    assert (await client.request("ping"))["code"] == "unauthenticated"  # still connected


async def test_deeply_nested_json_over_rest_is_a_json_400(server):
    body = '{"code":' + "[" * 100_000 + "]" * 100_000 + "}"
    async with server.http.post(server.url + "/v1/invites/redeem", data=body,
                                headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and resp.content_type == "application/json"
        assert (await resp.json())["error"]["code"] == "bad_request"


async def test_a_page_of_another_site_cannot_open_the_websocket(server):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.http.ws_connect(server.ws_url, headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    own = server.url  # the web app's own page
    ws = await server.http.ws_connect(server.ws_url, headers={"Origin": own})
    await ws.close()


@pytest.mark.parametrize("settings", [HubSettings(trusted_proxies=("127.0.0.1",),
                                                  limits=LimitSettings(auth_failures_per_address=2))])
async def test_behind_a_trusted_proxy_one_bad_client_throttles_only_itself(server):
    token = await server.user("alice")

    async def via_proxy(client_ip: str) -> WsClient:
        return WsClient(await server.http.ws_connect(server.ws_url, headers={"X-Forwarded-For": client_ip}))

    bad = await via_proxy("203.0.113.9")
    for _ in range(2):
        assert (await bad.request("authenticate", user_id="alice", access_token="x"))["code"] == "unauthenticated"
    assert (await bad.request("authenticate", user_id="alice", access_token="x"))["code"] == "rate_limited"
    other = await via_proxy("198.51.100.7")
    assert (await other.request("authenticate", user_id="alice", access_token="x"))["code"] == "unauthenticated"
    assert (await other.request("authenticate", user_id="alice", access_token=token))["type"] == "ok"


async def test_health_tells_strangers_only_that_the_server_is_up(server):
    async with server.http.get(server.url + "/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"ok": True}
    status, health = await server.api("GET", "/healthz")
    assert status == 200 and health["connected_devices"] == 0 and health["live_calls"] == 0


async def test_the_database_is_private_to_the_server(tmp_path: Path):
    store = await Store.open(tmp_path / "intercom.db")
    await store.users.add_site("home", "Home")
    for name in ("intercom.db", "intercom.db-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    await store.close()
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    await (await Store.open(loose)).close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


async def test_over_tls_the_door_trusts_its_ca_file_and_browsers_get_hsts(tmp_path: Path):
    cert, key = self_signed_certificate(tmp_path)
    store = await Store.open(tmp_path / "intercom.db")
    await store.users.add_site("home", "Home")
    await store.users.add_user("door", "door", "home", "Door")
    token = (await store.tokens.issue_token("door"))["access_token"]
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    runner = web.AppRunner(create_app(store, HubSettings(), API_TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    clients = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context(cafile=cert)) as resp:
                assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
        for ca_file in (None, str(cert)):
            client = SignalingClient(f"wss://127.0.0.1:{port}/v1/ws", "door", token, "door", ca_file=ca_file)
            clients.append((client, asyncio.create_task(client.run())))
        trusting, _ = clients[1]
        await asyncio.wait_for(trusting.connected.wait(), 10)
        refusing, _ = clients[0]
        while refusing.last_error is None:  # the system's CAs do not know ours
            await asyncio.sleep(0.01)
        assert not refusing.connected.is_set() and "certificate" in refusing.last_error.lower()
    finally:
        for client, task in clients:
            await client.close()
            task.cancel()
        await runner.cleanup()
        await store.close()

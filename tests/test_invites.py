"""Invites: how a resident's phone signs in without anyone typing a token, and signs out.

Over the real HTTP server; the browser side is in test_webapp.py."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest

from intercom_server.webapp import CONTENT_SECURITY_POLICY

from .conftest import ENGINES

#: An invite is spent by one UPDATE that checks and claims it at once: on both engines.
on_both = pytest.mark.parametrize("server", ENGINES, indirect=True)


@on_both
async def test_an_invite_signs_a_phone_in_once(server):
    installer_token = await server.user("alice")
    status, invite = await server.api("POST", "/v1/users/alice/invites", {"expires_in_s": 600})
    assert status == 201 and invite["url"] == f"{server.url}/#invite={invite['code']}"
    status, signed_in = await server.api("POST", "/v1/invites/redeem", {"code": invite["code"]}, token=None)
    assert status == 201 and signed_in["user"]["user_id"] == "alice"
    client = await server.signed_in("alice", signed_in["access_token"], "web-phone")
    assert client.device_id == "web-phone"
    status, me = await server.api("GET", "/v1/me", bearer=signed_in["access_token"])
    assert status == 200 and me["user"]["user_id"] == "alice" and me["site"]["site_id"] == "home"
    # Used once: the same link a second time, from anyone, signs nobody in.
    status, body = await server.api("POST", "/v1/invites/redeem", {"code": invite["code"]}, token=None)
    assert status == 401 and "already used" in body["error"]["message"]
    assert (await server.store.tokens.list_invites("alice"))[0]["token_id"] == signed_in["token_id"]
    tokens = {t["token_id"] for t in await server.store.tokens.list_tokens("alice")}
    assert tokens == {signed_in["token_id"], (await server.store.tokens.list_tokens("alice"))[0]["token_id"]} and len(tokens) == 2
    assert installer_token != signed_in["access_token"]


@on_both
async def test_two_phones_racing_with_one_invite_get_one_token(server):
    await server.user("alice")
    _, invite = await server.api("POST", "/v1/users/alice/invites")
    results = await asyncio.gather(*(server.api("POST", "/v1/invites/redeem", {"code": invite["code"]}, token=None)
                                     for _ in range(8)))
    assert sorted(status for status, _ in results) == [201] + [401] * 7


@on_both
async def test_expired_unknown_and_malformed_invites_are_refused_and_change_nothing(server):
    await server.store.users.add_site("home", "Home")
    await server.store.users.add_user("alice", "resident", "home", "Alice")
    expired = await server.store.tokens.create_invite("alice", 60)
    await server.store.db.execute("UPDATE invites SET expires_at = 0")
    for code in (expired["code"], "not-a-code-we-gave"):
        status, body = await server.api("POST", "/v1/invites/redeem", {"code": code}, token=None)
        assert status == 401 and body["error"]["code"] == "unauthenticated"
    for body in ({}, {"code": 7}, {"code": ""}, {"code": "x", "user_id": "alice"}):
        status, reply = await server.api("POST", "/v1/invites/redeem", body, token=None)
        assert status == 400 and reply["error"]["code"] == "bad_request"
    assert await server.store.tokens.list_tokens("alice") == []


async def test_invites_are_for_residents_and_need_the_api_token(server):
    await server.user("door", kind="door")
    await server.user("alice")
    status, body = await server.api("POST", "/v1/users/door/invites")
    assert status == 409 and "residents" in body["error"]["message"]
    assert (await server.api("POST", "/v1/users/nobody/invites"))[0] == 404
    assert (await server.api("POST", "/v1/users/alice/invites", token=None))[0] == 401
    assert (await server.api("POST", "/v1/users/alice/invites", {"expires_in_s": 10**9}))[0] == 400
    assert await server.store.tokens.list_invites("alice") == []


async def test_signing_out_revokes_the_phones_token(server):
    token = await server.user("alice")
    assert (await server.api("GET", "/v1/me", bearer=token))[0] == 200
    assert (await server.api("DELETE", "/v1/me/token", bearer=token, token=None))[0] == 204
    assert (await server.api("GET", "/v1/me", bearer=token))[0] == 401
    assert (await server.api("DELETE", "/v1/me/token", bearer=token, token=None))[0] == 401
    reply = await (await server.connect()).request("authenticate", user_id="alice", access_token=token)
    assert reply["type"] == "error" and reply["code"] == "unauthenticated"
    # /v1/me is the phone's own view: the master token is not a phone.
    assert (await server.api("GET", "/v1/me"))[0] == 401


async def test_the_web_app_is_served_with_a_strict_policy(server):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css"),
                       ("/sw.js", "text/javascript"), ("/manifest.webmanifest", "application/manifest+json"),
                       ("/icon.svg", "image/svg+xml")):
        async with server.http.get(server.url + path) as response:
            assert response.status == 200 and response.content_type == kind, path
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
    async with server.http.get(server.url + "/") as response:
        page = await response.text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the policy to allow
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links)  # this origin only
    async with server.http.get(server.url + "/static/../store.py") as response:
        assert response.status == 404
    async with server.http.get(server.url + "/manifest.webmanifest") as response:
        manifest = json.loads(await response.text())
    assert manifest["display"] == "standalone" and manifest["start_url"] == "/"


def test_the_installer_prints_an_invite_link_and_qr_code(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "intercom_server.cli", "--data-dir", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=30)

    assert cli("site", "add", "home", "--name", "Home").returncode == 0
    assert cli("user", "add", "alice", "--kind", "resident", "--site", "home", "--name", "Alice").returncode == 0
    shown = cli("invite", "alice", "--url", "https://door.example.org")
    assert shown.returncode == 0, shown.stderr
    assert "https://door.example.org/#invite=" in shown.stdout
    assert shown.stdout.count("█") > 100  # the QR code
    as_json = json.loads(cli("invite", "alice", "--json", "--expires-in", "3600").stdout)
    assert as_json["url"].startswith("http://127.0.0.1:8080/#invite=")
    refused = cli("invite", "nobody")
    assert refused.returncode == 1 and "no user 'nobody'" in refused.stderr

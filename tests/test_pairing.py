"""Pairing a door like a phone: `intercom-server door add|pair` makes a one-time link, and
`intercom pair LINK` on the board exchanges it for the door's own token.

The server side over real HTTP; `intercom pair` as the installer runs it, a process of its own."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from intercom import pairing
from intercom_server.limits import LimitSettings
from intercom_server.settings import HubSettings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def door_yaml(tmp_path: Path) -> Path:
    """The shipped example, as an installer copies it: the token file beside it."""
    path = tmp_path / "etc" / "intercom.yaml"
    path.parent.mkdir()
    text = (ROOT / "config/intercom.example.yaml").read_text().replace("/etc/intercom/token", "token")
    path.write_text(text)
    return path


async def intercom(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "intercom.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_pairing_link_gives_the_door_its_token_once_and_fills_in_the_yaml(server, tmp_path):
    await server.user("frontdoor", kind="door")
    status, link = await server.api("POST", "/v1/users/frontdoor/pairings")
    assert status == 201 and link["url"] == f"{server.url}/#pair={link['code']}"
    config = door_yaml(tmp_path)
    before = config.read_text()

    code, out, err = await intercom("pair", link["url"], "--config", str(config))
    assert code == 0, err
    assert "the server accepted the door's token" in out and "Paired as frontdoor (Frontdoor, site home)" in out
    token = tmp_path / "etc" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert await server.store.tokens.check_token("frontdoor", token.read_text().strip()) is not None
    after = config.read_text()
    assert f"  url: {server.ws_url}\n" in after and "  user_id: frontdoor\n" in after
    # Only the two values changed: every comment and every other line is the installer's.
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("  url: ws://127.0.0.1:8080/v1/ws", f"  url: {server.ws_url}")]

    # Once: the same link again is refused in one line, and nothing on the board changes.
    token_before = token.read_text()
    code, out, err = await intercom("pair", link["url"], "--config", str(config))
    assert code == 1 and err.strip().splitlines() == [
        "intercom: the server refused the pairing: this pairing code is unknown, already used or expired; "
        "ask for a new one"]
    assert token.read_text() == token_before and config.read_text() == after


async def test_expired_and_wrong_codes_and_invites_do_not_pair_a_door(server, tmp_path):
    await server.user("frontdoor", kind="door")
    await server.user("alice")
    expired = await server.store.tokens.create_pairing("frontdoor", 60)
    await server.store.db.execute("UPDATE invites SET expires_at = 0")
    invite = await server.store.tokens.create_invite("alice")
    for code in (expired["code"], "not-a-code-we-gave-at-all", invite["code"]):
        status, body = await server.api("POST", "/v1/pairings/redeem", {"code": code}, token=None)
        assert status == 401 and body["error"]["code"] == "unauthenticated", body
    # A door's code never signs a browser in as the door, through the web app's endpoint.
    pairing_code = (await server.store.tokens.create_pairing("frontdoor"))["code"]
    status, _ = await server.api("POST", "/v1/invites/redeem", {"code": pairing_code}, token=None)
    assert status == 401
    assert len(await server.store.tokens.list_tokens("frontdoor")) == 1  # the one server.user issued, no more
    # ...and both codes still work where they belong.
    assert (await server.api("POST", "/v1/pairings/redeem", {"code": pairing_code}, token=None))[0] == 201
    assert (await server.api("POST", "/v1/invites/redeem", {"code": invite["code"]}, token=None))[0] == 201

    # Pairing codes are for doors, invites for residents: each says which command to use.
    status, body = await server.api("POST", "/v1/users/alice/pairings")
    assert status == 409 and "intercom-server invite alice" in body["error"]["message"]
    status, body = await server.api("POST", "/v1/users/frontdoor/invites")
    assert status == 409 and "intercom-server door pair frontdoor" in body["error"]["message"]


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, limits=replace(
    LimitSettings(), auth_failures_per_address=3, auth_window_s=60))])
async def test_wrong_codes_are_rate_limited_per_address_even_for_a_right_code_after(server):
    await server.user("frontdoor", kind="door")
    good = (await server.store.tokens.create_pairing("frontdoor"))["code"]
    for _ in range(3):
        status, _ = await server.api("POST", "/v1/pairings/redeem", {"code": "wrong-wrong-wrong-wrong"}, token=None)
        assert status == 401
    for path, code in (("/v1/pairings/redeem", good), ("/v1/invites/redeem", "wrong-wrong-wrong-wrong")):
        async with server.http.post(server.url + path, json={"code": code}) as response:
            body = await response.json()
            assert response.status == 429 and body["error"]["code"] == "rate_limited", body
            assert 0 < int(response.headers["Retry-After"]) <= 60
    # The refused right code was not spent: it pairs once the window has passed.
    assert (await server.store.tokens.list_invites("frontdoor"))[0]["redeemed_at"] is None


async def test_intercom_pair_checks_what_it_can_before_spending_the_code(server, tmp_path):
    await server.user("frontdoor", kind="door")
    link = await server.store.tokens.create_pairing("frontdoor")
    url = f"{server.url}/#pair={link['code']}"
    cases = [
        (["pair", "http://127.0.0.1:1/#invite=abc", "--config", str(door_yaml(tmp_path))],
         "intercom: 'http://127.0.0.1:1/#invite=abc' is not a pairing link; it looks like "
         "http://SERVER:8080/#pair=CODE (from `intercom-server door pair DOOR` on the server)"),
        (["pair", url, "--config", str(tmp_path / "missing.yaml")],
         f"intercom: there is no config file at {tmp_path / 'missing.yaml'}: `intercom init --config "
         f"{tmp_path / 'missing.yaml'}` writes the annotated example there to edit, or give --config PATH"),
    ]
    for args, line in cases:
        code, out, err = await intercom(*args)
        assert (code, err.strip()) == (1, line) and "Traceback" not in err
    assert (await server.store.tokens.list_invites("frontdoor"))[0]["redeemed_at"] is None  # not spent

    board = tmp_path / "board"
    board.mkdir()
    code, out, err = await intercom("pair", "http://127.0.0.1:1/#pair=" + "a" * 32, "--config", str(door_yaml(board)))
    assert code == 1 and err.startswith("intercom: cannot reach the server at http://127.0.0.1:1: ")
    assert len(err.strip().splitlines()) == 1


def test_the_yaml_keeps_its_comments_and_gets_missing_keys():
    text = "# the door\nserver:\n  # where\n  url: ws://old:1/v1/ws   # trailing\n  device_id: door\ncalls: {}\n"
    out = pairing.set_server_keys(text, {"url": "wss://door.example.org/v1/ws", "user_id": "gate"}, Path("x"))
    assert out == ("# the door\nserver:\n  # where\n  user_id: gate\n  url: wss://door.example.org/v1/ws   # trailing\n"
                   "  device_id: door\ncalls: {}\n")
    assert pairing.set_server_keys("calls: {}\n", {"user_id": "a b: c"}, Path("x")) == (
        'server:\n  user_id: "a b: c"\ncalls: {}\n')
    assert pairing.parse_link("https://door.example.org/intercom/#pair=" + "A" * 32).ws_url == \
        "wss://door.example.org/intercom/v1/ws"


def test_door_add_prints_the_link_its_qr_code_and_which_address_it_used(tmp_path):
    data = tmp_path / "data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "intercom_server.cli", *args], capture_output=True, text=True,
                              timeout=60)

    # --data-dir before or after the subcommand: the same store either way.
    assert cli("--data-dir", str(data), "site", "add", "home", "--name", "Home").returncode == 0
    result = cli("door", "add", "frontdoor", "--site", "home", "--name", "Front door", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Pairing link for frontdoor: on the door, run: intercom pair 'http://127.0.0.1:8080/#pair=")
    assert lines[1].startswith("  http://127.0.0.1:8080/#pair=") and "█" in result.stdout  # the QR code
    assert result.stderr.strip() == (
        "note: public_url is not set and the server has not run with this data_dir yet, so the link uses "
        "http://127.0.0.1:8080 from listen: in the YAML; set public_url (or give --url) if phones reach it by "
        "another address")
    # Once the server has run, the links use the address it really listened on.
    (data / "listen_url").write_text("http://192.0.2.7:8443\n")
    result = cli("--data-dir", str(data), "door", "pair", "frontdoor", "--json")
    assert result.returncode == 0 and '"url": "http://192.0.2.7:8443/#pair=' in result.stdout
    assert "where the server listens" in result.stderr
    result = cli("--data-dir", str(data), "door", "pair", "nobody")
    assert (result.returncode, result.stderr.strip()) == (1, "intercom-server: no user 'nobody'")

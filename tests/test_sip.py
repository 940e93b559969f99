"""The SIP gateway against independent SIP software on loopback: Debian's kamailio as the
registrar (digest auth on REGISTER and INVITE), phones on PJSIP, the gateway on baresip, and
the whole installation (server, door, apps) as the processes an installer runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from intercom_sim.sipsite import SIP_GATEWAY, SipSite, band_share

pytestmark = pytest.mark.slow

# The phones are PJSIP's Python binding, whose wheels are for x86_64 only (pyproject's marker).
pytest.importorskip("pjsua2", reason="the SIP tests' phones need pjsua2-python, which has wheels for x86_64 only")

#: The door's microphone ("tone" backend) sends 660 and 550 Hz; each test phone sends its own.
DOOR_TONES = (660.0, 550.0)
PHONE_TONE = 1700.0


@pytest.fixture
async def sip(tmp_path: Path) -> AsyncIterator[SipSite]:
    site = SipSite(tmp_path, phones=["dect1", "dect2", "0301234567", "stranger"])
    await site.start()
    try:
        yield site
    finally:
        await site.close()


async def _door(sip: SipSite, residents: list[str], **settings) -> object:
    speaker = sip.root / "door-speaker.raw"
    return await sip.house.start_door("door", [{"residents": residents, "timeout_s": 30}], settings={
        "hardware": {"speaker": {"device": f"file:FILE={speaker},FORMAT=raw"}, **settings.get("hardware", {})},
        **{k: v for k, v in settings.items() if k != "hardware"}})


def _door_heard(sip: SipSite) -> np.ndarray:
    return np.fromfile(sip.root / "door-speaker.raw", np.int16)


async def test_a_press_rings_sip_phones_and_an_app_and_the_phone_that_answers_talks_both_ways(sip):
    for user in ("alice", "bob"):
        await sip.house.add_user(user, "resident", user.title())
    dect1, dect2 = await sip.phone("dect1"), await sip.phone("dect2")
    app = await sip.house.start_resident("alice", "--answer", "ignore", create=False, device_id="app")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"},
                                       {"name": "dect2", "resident": "bob", "dial": "dect2"}])
    await gateway.wait_for_event("registration", state="registered")
    door = await _door(sip, ["alice", "bob"])
    await door.ring()
    ring = await app.wait_for_event("incoming")
    await dect1.wait("incoming")
    await dect2.wait("incoming")
    await dect1.do("answer")
    accepted = await door.wait_status(lambda s: s["call"]["state"] == "connected")
    assert accepted["call"]["peer"] == {"user_id": "alice", "device_id": "sip-dect1"}
    # The others stop: the second phone gets CANCEL (487), the app the server's `ended`.
    await dect2.wait("state", state="DISCONNECTED", code=487)
    ended = await app.wait_for_event("ended", call_id=ring["call_id"])
    assert ended["reason"] == "other_device_accepted"
    await gateway.wait_for_event("phone_answered", device_id="sip-dect1")
    # Two seconds of talk, then the phone hangs up.
    await asyncio.sleep(2)  # the length of the conversation is the point, not a synchronisation
    await dect1.do("hangup")
    status, record = await _wait_record(sip, ring["call_id"], "completed")
    assert record["accepted_by"] == {"user_id": "alice", "device_id": "sip-dect1"}, record
    heard, rate = await dect1.heard()
    assert all(band_share(heard, rate, f) > 0.1 for f in DOOR_TONES), "the phone did not hear the door"
    assert band_share(_door_heard(sip), 48000, PHONE_TONE) > 0.02, "the door did not hear the phone"


async def _wait_record(sip: SipSite, call_id: str, reason: str, timeout: float = 20.0) -> tuple[int, dict]:
    async def poll() -> tuple[int, dict]:
        while True:
            status, record = await sip.house.api("GET", f"/v1/direct_calls/{call_id}")
            if status == 200 and record.get("end_reason") == reason:
                return status, record
            await asyncio.sleep(0.1)  # the record is written after the bell rang: poll the API
    return await asyncio.wait_for(poll(), timeout)


RELAY = {"pins": {"relay": 22, "relay_pulse_s": 0.2}}


async def test_busy_and_decline_from_every_phone_decline_the_call(sip):
    for user in ("alice", "bob"):
        await sip.house.add_user(user, "resident", user.title())
    dect1, dect2 = await sip.phone("dect1"), await sip.phone("dect2")
    await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"},
                             {"name": "dect2", "resident": "bob", "dial": "dect2"}])
    door = await _door(sip, ["alice", "bob"])
    await door.ring()
    await dect1.wait("incoming")
    await dect2.wait("incoming")
    await dect1.do("busy")  # 486
    await dect2.do("decline")  # 603
    status = await door.wait_status(lambda s: s["last_call"] is not None and s["state"] == "idle")
    assert status["last_call"]["end_reason"] == "declined", status["last_call"]


async def _ringing_a_phone_and_an_app(sip: SipSite):
    """A press rings dect1 (through the gateway) and the app, which answers after 3 s: the
    resident takes a moment to pick up. Returns (dect1, app, gateway, door) once dect1 rings."""
    await sip.house.add_user("alice", "resident", "Alice")
    dect1 = await sip.phone("dect1")
    app = await sip.house.start_resident("alice", "--answer", "auto", "--answer-delay", "3", create=False,
                                         device_id="app")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}])
    door = await _door(sip, ["alice"])
    await door.ring()
    await dect1.wait("incoming")
    return dect1, app, gateway, door


async def test_the_app_answering_first_cancels_the_sip_phone(sip):
    dect1, app, gateway, door = await _ringing_a_phone_and_an_app(sip)
    await app.wait_for_event("answered")
    await dect1.wait("state", state="DISCONNECTED", code=487)  # CANCEL: it stops ringing
    await gateway.wait_for_event("ended", device_id="sip-dect1", reason="other_device_accepted")
    status = await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
    assert status["call"]["peer"]["device_id"] == "app"


async def test_the_open_code_opens_the_door_and_the_door_log_names_the_phone(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    dect1 = await sip.phone("dect1")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}],
                                      extra={"open_code": "*1"})
    door = await _door(sip, ["alice"], hardware=RELAY)
    await door.ring()
    await dect1.wait("incoming")
    await dect1.do("answer")
    await gateway.wait_for_event("phone_answered", device_id="sip-dect1")
    await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
    # RFC 4733 events first, then SIP INFO (as a FritzFon or a desk phone may send them).
    await dect1.do("dtmf", digits="*1")
    first = await gateway.wait_for_event("door_opened", device_id="sip-dect1")
    await door.wait_status(lambda s: s["pins"]["relay"]["pulses"] == 1 and not s["pins"]["relay"]["energised"])
    for digit in "*1":
        await dect1.do("dtmf", digits=digit, method="info")
        await gateway.wait_for_event("digit", device_id="sip-dect1", digit=digit,
                                     after=len(gateway.lines) - 1)
    await gateway.wait_for_event("door_opened", device_id="sip-dect1", after=gateway.lines.index(
        next(line for line in gateway.lines if '"door_opened"' in line)) + 1)
    status = await door.wait_status(lambda s: s["pins"]["relay"]["pulses"] == 2)
    assert status["pins"]["relay"]["pulses"] == 2
    code, body = await sip.house.api("GET", "/v1/sites/home/audit")
    opened = [e for e in body["events"] if e["outcome"] == "opened"]
    assert len(opened) == 2 and all(e["by"] == {"user_id": "alice", "device_id": "sip-dect1"} for e in opened)
    assert all(e["call_id"] == first["call_id"] for e in opened)
    await dect1.do("hangup")
    heard, rate = await dect1.heard()
    assert band_share(heard, rate, 1400.0) > 0.05, "the phone did not hear that the door opened"


async def test_a_phone_number_wins_only_once_its_key_is_pressed(sip):
    """A voicemail that takes the call never presses 1: the visitor is not left talking to it."""
    await sip.house.add_user("alice", "resident", "Alice")
    mobile = await sip.phone("0301234567")
    gateway = await sip.start_gateway([{"name": "mobile", "resident": "alice", "dial": "0301234567"}])
    door = await sip.house.start_door("door", [{"residents": ["alice"], "timeout_s": 4}])
    await door.ring()
    await mobile.wait("incoming")
    await mobile.do("answer")  # the voicemail picks up...
    await gateway.wait_for_event("phone_answered", device_id="sip-mobile")
    status = await door.wait_status(lambda s: s["last_call"] is not None and s["state"] == "idle", timeout=30)
    assert status["last_call"]["end_reason"] == "no_answer"  # ...and never won the call
    heard, rate = await mobile.heard()
    assert all(band_share(heard, rate, f) > 0.03 for f in (660.0, 880.0, 1100.0)), "no 'press 1' prompt"
    # The next time, the person presses 1 and talks to the visitor.
    seen = len(mobile.events)
    await door.ring()
    await mobile.wait("incoming", after=seen)
    await mobile.do("answer")
    await gateway.wait_for_event("phone_answered", device_id="sip-mobile", after=len(gateway.lines) - 1)
    await mobile.do("dtmf", digits="1")
    status = await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
    assert status["call"]["peer"] == {"user_id": "alice", "device_id": "sip-mobile"}


async def test_an_allowed_caller_looks_outside_and_a_stranger_is_refused(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    dect1, stranger = await sip.phone("dect1"), await sip.phone("stranger")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1", "callers": ["dect1"]}],
                                      extra={"door": "door"})
    await gateway.wait_for_event("registration", state="registered")
    door = await _door(sip, ["alice"])
    await stranger.do("call", uri=f"sip:gw@{sip.kamailio.domain}")
    # Refused before it reaches the server (baresip-python refuses with 486, its only status).
    await stranger.wait("state", state="DISCONNECTED", code=486)
    await gateway.wait_for_event("refused")
    assert door.process.proc.returncode is None and (await door.ctl("status"))["calls_answered"] == 0
    await dect1.do("call", uri=f"sip:gw@{sip.kamailio.domain}")
    await dect1.wait("state", state="CONFIRMED")
    status = await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
    assert status["call"]["peer"]["user_id"] == "alice"
    await gateway.wait_for_event("answered", device_id="sip-dect1")
    await asyncio.sleep(2)  # a moment of looking (listening) outside
    await dect1.do("hangup")
    heard, rate = await dect1.heard()
    assert all(band_share(heard, rate, f) > 0.1 for f in DOOR_TONES), "the phone did not hear the street"
    await door.wait_status(lambda s: s["state"] == "idle")


async def test_the_registrar_going_away_and_back_is_survived(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    dect1 = await sip.phone("dect1")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}],
                                      sip={"register_every_s": 2})
    await gateway.wait_for_event("registration", state="registered")
    await _bridge_state(sip, "registered")
    sip.kamailio.stop()
    failed = await gateway.wait_for_event("registration", state="failed", timeout=30)
    assert "did not answer" in failed["detail"]
    await _bridge_state(sip, "failed")
    sip.kamailio.start()  # it forgot every registration: the phones sign in again, so does the gateway
    await dect1.do("register")
    await dect1.wait("registered", after=len(dect1.events))
    await gateway.wait_for_event("registration", state="registered", after=len(gateway.lines) - 1, timeout=30)
    await _bridge_state(sip, "registered")
    door = await _door(sip, ["alice"])
    await door.ring()
    await dect1.wait("incoming")
    await dect1.do("answer")
    await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")


async def _bridge_state(sip: SipSite, state: str) -> None:
    """What the server's /healthz says of the gateway, as a monitor polls it."""
    bridges: list = []

    async def poll() -> None:
        nonlocal bridges
        while True:
            async with aiohttp.ClientSession() as http, http.get(
                    sip.house.http_url + "/healthz", headers={"Api-Token": sip.house.api_token}) as resp:
                bridges = (await resp.json())["bridges"]
            if bridges and all(b["registration"] == state for b in bridges):
                assert bridges[0]["kind"] == "sip" and bridges[0]["device_id"] == "sip-dect1"
                return
            await asyncio.sleep(0.1)  # /healthz is read by a monitor: poll it as one does
    try:
        await asyncio.wait_for(poll(), 20)
    except TimeoutError:
        raise AssertionError(f"/healthz never said {state}: {bridges}") from None


async def test_the_gateway_killed_mid_ring_leaves_the_apps_ringing(sip):
    dect1, app, gateway, door = await _ringing_a_phone_and_an_app(sip)
    await sip.house.stop(gateway, crash=True)
    await app.wait_for_event("answered")
    status = await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
    assert status["call"]["peer"]["device_id"] == "app"


async def test_two_phones_answering_at_once_one_wins_and_the_other_is_hung_up(tmp_path):
    """sipp's scripted phones answer the instant they are called (no 180): both legs are up
    before the server has chosen. The server takes the first accept; the loser, already
    answered, gets a BYE at once, and the winner when the call ends."""
    site = SipSite(tmp_path, phones=[], scripted={"race1": "answer_at_once", "race2": "answer_at_once"})
    await site.start()
    try:
        for user in ("alice", "bob"):
            await site.house.add_user(user, "resident", user.title())
        await site.start_gateway([{"name": "race1", "resident": "alice", "dial": "race1"},
                                  {"name": "race2", "resident": "bob", "dial": "race2"}])
        door = await site.house.start_door("door", [{"residents": ["alice", "bob"]}])
        await door.ring()
        status = await door.wait_status(lambda s: s["call"] is not None and s["call"]["state"] == "connected")
        winner = status["call"]["peer"]["device_id"].removeprefix("sip-")
        loser = site.sipps["race2" if winner == "race1" else "race1"]
        assert await loser.exited() == 0  # its script ended with the BYE it was waiting for
        assert site.sipps[winner].proc.returncode is None  # the winner talks on
        await door.ctl("hangup")
        assert await site.sipps[winner].exited() == 0
        await door.wait_status(lambda s: s["state"] == "idle")
    finally:
        await site.close()


async def test_a_phone_that_requires_srtp_talks_encrypted(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    dect1 = await sip.phone("dect1", srtp="mandatory")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}])
    door = await _door(sip, ["alice"])
    await door.ring()
    await dect1.wait("incoming")
    await dect1.do("answer")
    await gateway.wait_for_event("phone_answered", device_id="sip-dect1")
    await asyncio.sleep(2)  # a moment of conversation
    await dect1.do("hangup")
    heard, rate = await dect1.heard()
    assert all(band_share(heard, rate, f) > 0.1 for f in DOOR_TONES), "no sound through SRTP"


async def test_a_wrong_password_is_one_line_in_the_status_and_nothing_rings_less(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    app = await sip.house.start_resident("alice", "--answer", "ignore", create=False, device_id="app")
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}],
                                      sip={"password": "not-the-password"})
    failed = json.loads(await gateway.wait_for_line(lambda line: '"failed"' in line and "401" in line))
    assert "refused the gateway's user or password" in failed["detail"], failed
    await gateway.wait_for_event("server", device_id="sip-dect1", connected=True)
    status = subprocess.run([*SIP_GATEWAY, "--config", str(sip.gateway_config), "status"], capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["registration"]["state"] == "failed" and "401" in shown["registration"]["detail"]
    assert shown["phones"][0]["device_id"] == "sip-dect1" and shown["phones"][0]["server"] == "connected"
    await _bridge_state(sip, "failed")
    door = await _door(sip, ["alice"])
    await door.ring()
    await app.wait_for_event("incoming")  # the app rings as ever


async def test_a_ringing_handset_can_show_the_visitor_with_its_key_only(sip):
    await sip.house.add_user("alice", "resident", "Alice")
    dect1 = await sip.phone("dect1")
    key = "k" * 24
    gateway = await sip.start_gateway([{"name": "dect1", "resident": "alice", "dial": "dect1"}],
                                      extra={"http": {"listen": "127.0.0.1:0", "snapshot_key": key}})
    started = next(json.loads(line) for line in gateway.lines if '"started"' in line)
    url = f"http://{started['http']}/snapshot.jpg"
    door = await _door(sip, ["alice"])
    await door.ring()
    await dect1.wait("incoming")

    async def poll() -> bytes:
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(url, params={"key": key}) as resp:
                    if resp.status == 200:
                        assert resp.content_type == "image/jpeg"
                        return await resp.read()
                    assert resp.status == 404  # no picture yet
                await asyncio.sleep(0.2)  # a FritzFon polls every 1.5-2.5 s; this one is quicker
    picture = await asyncio.wait_for(poll(), 20)
    assert picture.startswith(b"\xff\xd8\xff")
    async with aiohttp.ClientSession() as http:
        for params in ({"key": "k" * 23 + "x"}, {}):
            async with http.get(url, params=params) as resp:
                assert resp.status == 403

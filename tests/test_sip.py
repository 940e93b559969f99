"""The SIP gateway against independent SIP software on loopback: Debian's kamailio as the
registrar (digest auth on REGISTER and INVITE), phones on PJSIP, the gateway on baresip, and
the whole installation (server, door, apps) as the processes an installer runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from .sip.site import SipSite, band_share

#: The door's microphone ("tone" backend) sends 660 and 550 Hz; each test phone sends its own.
DOOR_TONES = (660.0, 550.0)
PHONE_TONE = 1700.0


@pytest.fixture
async def sip(tmp_path: Path) -> AsyncIterator[SipSite]:
    site = SipSite(tmp_path, phones=["dect1", "dect2", "mobile", "stranger"])
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

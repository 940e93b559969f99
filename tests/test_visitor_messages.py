"""Visitors' messages: nobody answers, the door records the camera's own H.264 and the
microphone into an MP4, sends it, and the call's residents (only they) can play it."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time

import aiohttp
import av
import numpy as np
import pytest

from intercom_server.visitor_messages import MessageBox, MessageSettings
from intercom_sim.harness import Installation

from .conftest import OFFER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def slices_sha256(mp4: bytes) -> str:
    """SHA-256 of the coded slices (NAL types 1 and 5) of the file's H.264, as stored."""
    digest = hashlib.sha256()
    with av.open(io.BytesIO(mp4)) as container:
        for packet in container.demux(video=0):
            data, i = bytes(packet), 0
            while i + 4 <= len(data):  # MP4 keeps H.264 as 4-byte lengths and NAL units
                size = int.from_bytes(data[i:i + 4], "big")
                unit = data[i + 4:i + 4 + size]
                if unit and unit[0] & 0x1F in (1, 5):
                    digest.update(unit)
                i += 4 + size
    return digest.hexdigest()


def audio_level_dbfs(mp4: bytes) -> float:
    with av.open(io.BytesIO(mp4)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf  # float samples: full scale is 1


async def _get(site: Installation, path: str, token: str | None = None, headers: dict | None = None):
    auth = {"Authorization": f"Bearer {token}"} if token else {"Api-Token": site.api_token}
    async with aiohttp.ClientSession() as http:
        async with http.get(site.http_url + path, headers={**auth, **(headers or {})}) as resp:
            return resp.status, await resp.read(), resp.headers


async def test_nobody_answers_and_the_visitor_s_message_reaches_the_server_as_the_camera_made_it(site, tmp_path):
    spool = tmp_path / "spool"
    alice = await site.start_resident("alice", "--answer", "ignore")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 2}], settings={
        "calls": {"visitor_messages": {"enabled": True, "max_s": 5, "spool_dir": str(spool)}}})
    await door.ring()
    incoming = await alice.wait_for_event("incoming", timeout=10)
    call_id = incoming["call_id"]
    recording = await door.wait_status(lambda s: s["state"] == "recording", timeout=15)
    assert recording["pins"]["status_led"]["pattern"] == "recording"  # the visitor sees it
    status = await door.wait_status(lambda s: s["messages"]["sent"] == 1, timeout=40)
    assert status["speaker"]["tones_played"][-2:] == ["no_answer", "record_beep"]  # ...and hears it
    last = status["messages"]["last"]
    assert status["state"] == "idle" and last["call_id"] == call_id and status["messages"]["waiting"] == 0
    assert list(spool.glob("*")) == []  # sent: nothing is left on the board

    code, record = await site.api("GET", f"/v1/direct_calls/{call_id}")
    assert code == 200 and record["has_message"] is True and record["end_reason"] == "no_answer"
    code, mp4, headers = await _get(site, f"/v1/direct_calls/{call_id}/message")
    assert code == 200 and headers["Content-Type"] == "video/mp4" and len(mp4) == last["bytes"]
    with av.open(io.BytesIO(mp4)) as container:
        assert 4.5 <= container.duration / 1e6 <= 5.6
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 640, 480)
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 60  # 5 s at 15 fps, decoded
    assert slices_sha256(mp4) == last["video_sha256"]  # the camera's own H.264: not re-encoded
    assert audio_level_dbfs(mp4) > -25  # the microphone (the simulated one's tone) is in it

    # Phones seek: a range request gets that range.
    code, part, headers = await _get(site, f"/v1/direct_calls/{call_id}/message", headers={"Range": "bytes=100-199"})
    assert code == 206 and part == mp4[100:200]


async def test_a_message_left_while_the_server_was_unreachable_arrives_with_its_press(site, tmp_path):
    spool = tmp_path / "spool"
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}], settings={
        "calls": {"visitor_messages": {"enabled": True, "max_s": 3, "spool_dir": str(spool)}}})
    await site.add_user("alice", "resident", "Alice")
    await site.stop_server()
    await door.wait_status(lambda s: not s["server"]["connected"])
    await door.ring()
    kept = await door.wait_status(lambda s: s["messages"]["recorded"] == 1 and s["state"] == "idle", timeout=30)
    assert kept["messages"]["waiting"] == 1 and kept["missed_presses"] == 1
    assert [p.name.startswith("press-") for p in spool.iterdir()] == [True]  # on the board, with its press

    await site.restart_server()
    sent = await door.wait_status(lambda s: s["messages"]["sent"] == 1, timeout=40)
    assert sent["missed_reported"] == 1 and sent["messages"]["waiting"] == 0
    code, history = await site.api("GET", "/v1/direct_calls?user_id=alice")
    [record] = history["calls"]
    assert record["end_reason"] == "dial_failed" and record["has_message"] is True
    code, mp4, _ = await _get(site, f"/v1/direct_calls/{record['call_id']}/message")
    assert code == 200 and slices_sha256(mp4) == sent["messages"]["last"]["video_sha256"]


async def test_a_press_and_its_message_kept_offline_survive_a_power_cut_of_the_door(site, tmp_path):
    """Server stopped, a visitor presses and leaves a message, the door loses power and comes
    back, then the server: the residents see the press and play the message."""
    spool = tmp_path / "spool"
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}], settings={
        "calls": {"visitor_messages": {"enabled": True, "max_s": 3, "spool_dir": str(spool)}}})
    token = (await site.add_user("alice", "resident", "Alice")).read_text().strip()
    await site.stop_server()
    await door.wait_status(lambda s: not s["server"]["connected"])
    await door.ring()
    recorded = await door.wait_status(lambda s: s["messages"]["recorded"] == 1 and s["state"] == "idle", timeout=30)
    await door.process.kill()  # a power cut: nothing is tidied up
    await site.restart_door(door)
    back = await door.wait_status(lambda s: s["missed_presses"] == 1)
    assert back["server"]["connected"] is False and back["messages"]["waiting"] == 1

    await site.restart_server()
    sent = await door.wait_status(lambda s: s["messages"]["sent"] == 1, timeout=40)
    assert sent["missed_reported"] == 1 and sent["missed_presses"] == 0 and sent["messages"]["waiting"] == 0
    assert list((tmp_path / "frontdoor-state" / "presses").iterdir()) == []  # the server has it: gone from the board
    code, body, _ = await _get(site, "/v1/direct_calls?user_id=alice", token=token)
    [record] = json.loads(body)["calls"]
    assert code == 200 and record["end_reason"] == "dial_failed" and record["has_message"] is True
    code, mp4, _ = await _get(site, f"/v1/direct_calls/{record['call_id']}/message", token=token)
    assert code == 200 and slices_sha256(mp4) == recorded["messages"]["last"]["video_sha256"]


async def test_only_the_call_s_residents_hear_a_message_and_one_can_delete_it(server, tmp_path):
    alice_token, bob_token = await server.user("alice"), await server.user("bob")
    mallory_token = await server.user("mallory", site="elsewhere")
    door_token = await server.user("door", "door")
    door = await server.signed_in("door", door_token, device_id="door")
    alice = await server.signed_in("alice", alice_token, device_id="phone")
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    await alice.next("incoming")
    await door.request("end", call_id=call_id)
    await door.next("ended")
    await server.store.flushed()
    mp4 = os.urandom(5000)

    async with server.http.put(f"{server.url}/v1/direct_calls/{call_id}/message", data=mp4,
                               headers={"Authorization": f"Bearer {alice_token}"}) as resp:
        assert resp.status == 404  # only the call's door sends its message
    async with server.http.put(f"{server.url}/v1/direct_calls/{call_id}/message", data=mp4,
                               headers={"Authorization": f"Bearer {door_token}"}) as resp:
        assert resp.status == 201, await resp.text()
    async with server.http.put(f"{server.url}/v1/direct_calls/{call_id}/message", data=mp4,
                               headers={"Authorization": f"Bearer {door_token}"}) as resp:
        assert resp.status == 409  # sent twice (a retry after a lost answer): kept once

    for token, expected in ((alice_token, 200), (bob_token, 404), (mallory_token, 404), (door_token, 404)):
        status, body = await server.api("GET", f"/v1/direct_calls/{call_id}/message", bearer=token)
        assert status == expected, (token, status)
        if status == 200:
            assert body == mp4
    status, _ = await server.api("DELETE", f"/v1/direct_calls/{call_id}/message", bearer=bob_token)
    assert status == 404
    status, _ = await server.api("DELETE", f"/v1/direct_calls/{call_id}/message", bearer=alice_token)
    assert status == 204
    status, _ = await server.api("GET", f"/v1/direct_calls/{call_id}/message", bearer=alice_token)
    assert status == 404
    status, record = await server.api("GET", f"/v1/direct_calls/{call_id}", bearer=alice_token)
    assert record["has_message"] is False


async def test_a_message_past_the_size_limit_is_refused_and_nothing_is_kept(server, tmp_path):
    door_token = await server.user("door", "door")
    await server.user("alice")
    door = await server.signed_in("door", door_token, device_id="door")
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    await door.request("end", call_id=call_id)
    await server.store.flushed()
    too_big = os.urandom(server.settings.messages.max_bytes + 1)
    async with server.http.put(f"{server.url}/v1/direct_calls/{call_id}/message", data=too_big,
                               headers={"Authorization": f"Bearer {door_token}"}) as resp:
        assert resp.status == 413
    assert not await server.store.calls.has_message(call_id)


async def test_retention_removes_old_messages_and_the_oldest_beyond_the_total(server, tmp_path):
    door_token = await server.user("door", "door")
    await server.user("alice")
    door = await server.signed_in("door", door_token, device_id="door")
    calls = []
    for _ in range(4):
        call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
        await door.request("end", call_id=call_id)
        calls.append(call_id)
    await server.store.flushed()
    box = MessageBox(tmp_path / "messages", server.store, MessageSettings(keep_days=7, max_total_mb=2 / 1024))
    box.dir.mkdir()
    now = time.time()
    ages_days = [10, 3, 2, 1]  # the first is past its time; the rest share a 2 KiB budget
    for call_id, age in zip(calls, ages_days, strict=True):
        box.path(call_id).write_bytes(b"x" * 800)
        await server.store.calls.add_message(call_id, 800, now - age * 86400)
    assert await box.sweep(now) == 2  # 10 days old, then the oldest of 2400 bytes > 2048
    assert [c for c, _, _ in await server.store.calls.messages()] == calls[2:]
    assert sorted(p.name for p in box.dir.iterdir()) == sorted(f"{c}.mp4" for c in calls[2:])

"""Whole calls: the server, the door daemon and residents as separate processes on loopback.

The bell is pressed with `intercom ctl press`, which drives the simulated GPIO pin, so the
path from the button to the resident's screen is the one a real door takes.
"""

import os
import signal
from pathlib import Path

import pytest
import yaml

from intercom_server.openapi import OPENAPI
from intercom_sim.harness import Installation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

STANDINS = str(Path(__file__).parent / "standins")
RELAY = {"hardware": {"pins": {"relay": 22, "relay_pulse_s": 0.5, "backlight_led": 23}}}



async def press(door) -> None:
    assert (await door.ctl("press"))["pressed"] is True
    assert (await door.ctl("release"))["pressed"] is False


async def stored_reason(site: Installation, call_id: str) -> str:
    status, record = await site.api("GET", f"/v1/direct_calls/{call_id}")
    assert status == 200
    return record["end_reason"]


async def test_a_press_rings_the_resident_who_sees_and_hears_the_visitor(site, tmp_path):
    picture = tmp_path / "received.png"
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "45", "--picture", str(picture))
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    assert (await door.ctl("status"))["pins"]["status_led"]["pattern"] == "idle"
    await door.wait_status(lambda s: s["standby"]["ready"])  # the call's connection is made while idle

    await press(door)
    incoming = await alice.wait_for_event("incoming")
    assert incoming["caller"] == {"user_id": "frontdoor", "display_name": "Front door", "kind": "door"}
    snapshot = await alice.wait_for_event("snapshot")  # the phone shows who is at the door
    assert snapshot["jpeg"] and snapshot["bytes"] > 1000 and snapshot["content_type"] == "image/jpeg"
    await alice.wait_for_event("answered")
    in_call = await door.wait_status(lambda s: s["state"] == "connected")
    assert in_call["call"]["peer"]["user_id"] == "alice"
    ended = await alice.wait_for_event("ended", timeout=30)

    assert ended["reason"] == "completed"
    assert ended["video_frames"] >= 45 and ended["distinct_frames"] >= 30  # live video, not a still
    assert (ended["width"], ended["height"]) == (640, 480)
    assert ended["audio_frames"] > 0 and ended["audio_peak_dbfs"] > -30  # the door's tone, not silence
    assert picture.read_bytes().startswith(b"\x89PNG")
    events = [e["event"] for e in alice.events()]
    assert events.index("incoming") < events.index("answered") < events.index("hanging_up") < events.index("ended")

    door_status = await door.wait_status(lambda s: s["state"] == "idle" and s["last_call"] is not None)
    assert door_status["last_call"] == {"call_id": ended["call_id"], "end_reason": "completed", "peer": "alice",
                                        "role": "caller"}
    assert door_status["speaker"]["tones_played"][:2] == ["chime", "ringback"] and door_status["speaker"]["tone"] is None
    assert door_status["camera"]["keyframe_requests"] >= 2  # the snapshot's and the call's first picture
    assert door_status["camera"]["viewers"] == 0  # the call's view of the camera ended with it
    assert door_status["speaker"]["voice_frames"] > 0 and door_status["speaker"]["peak_dbfs"] > -30  # heard the resident
    assert door_status["pins"]["status_led"]["pattern"] == "idle"
    assert door_status["press_timings"]["prepared"] is True  # the press dialled on the prepared connection
    ready = await door.wait_status(lambda s: s["standby"]["ready"])  # and the next one is made
    assert ready["standby"]["prepared"] == 2 and ready["standby"]["taken"] == 1
    assert await stored_reason(site, ended["call_id"]) == "completed"
    status, snapshot = await site.api("GET", f"/v1/direct_calls/{ended['call_id']}/snapshot")
    assert status == 200 and snapshot.startswith(b"\xff\xd8")


async def test_a_resident_who_declines_ends_the_call_declined(site):
    alice = await site.start_resident("alice", "--answer", "decline", "--once")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await press(door)
    await alice.wait_for_event("declined")
    ended = await alice.wait_for_event("ended")
    assert ended["reason"] == "declined"
    # The visitor hears that nobody will come (the tone follows the call's teardown).
    status = await door.wait_status(lambda s: "no_answer" in s["speaker"]["tones_played"])
    assert status["state"] == "idle" and status["last_call"]["end_reason"] == "declined"
    assert await stored_reason(site, ended["call_id"]) == "declined"


async def test_a_press_with_nobody_online_ends_no_answer(site):
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 1}])
    await site.add_user("alice", "resident", "Alice")  # exists, but no device is signed in
    await press(door)
    # The "nobody answered" tone follows the call's teardown.
    status = await door.wait_status(lambda s: "no_answer" in s["speaker"]["tones_played"])
    assert status["last_call"]["end_reason"] == "no_answer" and status["state"] == "idle"
    assert status["camera"]["viewers"] == 0  # a call that never connected let go of the camera too
    assert await stored_reason(site, status["last_call"]["call_id"]) == "no_answer"


async def test_a_ring_nobody_answers_times_out_no_answer(site):
    alice = await site.start_resident("alice", "--answer", "ignore", "--once")
    # Long enough to see the door calling on a busy machine (1 s was over before the status read).
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 5}])
    await press(door)
    await alice.wait_for_event("incoming")
    assert (await door.wait_status(lambda s: s["state"] == "calling"))["pins"]["status_led"]["pattern"] == "calling"
    ended = await alice.wait_for_event("ended")
    assert ended["reason"] == "no_answer"
    assert await stored_reason(site, ended["call_id"]) == "no_answer"


async def test_the_door_hanging_up_while_ringing_cancels(site):
    alice = await site.start_resident("alice", "--answer", "ignore", "--once")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await press(door)
    await alice.wait_for_event("incoming")
    assert (await door.ctl("hangup"))["hanging_up"] is True
    ended = await alice.wait_for_event("ended")
    assert ended["reason"] == "canceled"
    status = await door.wait_status(lambda s: s["last_call"] is not None)
    assert status["last_call"]["end_reason"] == "canceled"
    assert await stored_reason(site, ended["call_id"]) == "canceled"


async def test_no_answer_escalates_to_the_next_ring_group(site):
    alice = await site.start_resident("alice", "--answer", "ignore")
    bob = await site.start_resident("bob", "--once", "--hangup-after-frames", "5")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 1},
                                               {"residents": ["bob"], "timeout_s": 30}])
    await press(door)
    first = await alice.wait_for_event("ended")
    assert first["reason"] == "no_answer"
    ended = await bob.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 5
    assert ended["call_id"] != first["call_id"]


async def test_a_press_during_a_call_is_ignored(site):
    alice = await site.start_resident("alice", "--answer", "ignore", "--once")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await press(door)
    await alice.wait_for_event("incoming")
    await press(door)
    status = await door.wait_status(lambda s: s["ignored_presses"] == 1)
    assert status["calls_placed"] == 1 and status["state"] == "calling"


async def test_the_door_reconnects_when_the_server_comes_back(site):
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await site.stop_server()
    offline = await door.wait_status(lambda s: not s["server"]["connected"])
    assert offline["pins"]["status_led"]["pattern"] == "offline"
    await site.restart_server()
    online = await door.wait_status(lambda s: s["server"]["connected"], timeout=40)
    assert online["pins"]["status_led"]["pattern"] == "idle"


async def test_stopping_the_door_during_a_call_ends_it_cleanly(site):
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "0")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    await press(door)
    await alice.wait_for_event("first_frame", timeout=30)
    assert await door.process.stop() == 0  # SIGTERM, as systemd sends it
    ended = await alice.wait_for_event("ended")
    assert ended["reason"] == "completed" and ended["video_frames"] > 0
    assert await stored_reason(site, ended["call_id"]) == "completed"
    assert not door.socket.exists()  # the control socket is cleaned up


async def test_the_pi_camera_path_carries_the_call_and_the_resident_opens_the_door(site):
    """The picamera2 backend (its stand-in: the process cannot import the real one here) end to
    end, and the door action: the server checks the resident, the door pulses the relay."""
    alice = await site.start_resident("alice", "--once", "--open-door", "--hangup-after-frames", "30")
    settings = {"hardware": {"camera": {"backend": "picamera2"}, **RELAY["hardware"]}}
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}], settings=settings,
                                 env={"PYTHONPATH": STANDINS})
    await press(door)
    opened = await alice.wait_for_event("door_opened", timeout=30)
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 30 and ended["distinct_frames"] >= 10
    status = await door.wait_status(lambda s: s["state"] == "idle" and not s["pins"]["relay"]["energised"])
    assert status["camera"]["backend"] == "picamera2" and status["camera"]["viewers"] == 0
    assert status["pins"]["relay"]["pulses"] == 1
    assert status["door_openings"][0]["by"] == "alice" and status["door_openings"][0]["call_id"] == opened["call_id"]
    code, audit = await site.api("GET", "/v1/sites/home/audit")
    assert code == 200 and [(e["outcome"], e["call_id"]) for e in audit["events"]] == [("opened", opened["call_id"])]


async def test_a_door_without_a_relay_refuses_and_the_refusal_is_audited(site):
    alice = await site.start_resident("alice", "--once", "--open-door", "--hangup-after-frames", "10")
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}])
    await press(door)
    refused = await alice.wait_for_event("open_door_refused", timeout=30)
    assert refused["code"] == "conflict" and "relay" in refused["message"]
    await alice.wait_for_event("ended", timeout=30)
    code, audit = await site.api("GET", "/v1/sites/home/audit")
    assert [e["outcome"] for e in audit["events"]] == ["refused"]
    assert (await door.ctl("status"))["door_openings"] == []


async def test_a_resident_looks_outside_and_the_door_answers_by_itself(site):
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}])
    alice = await site.start_resident("alice", "--once", "--look-outside", "frontdoor", "--hangup-after-frames", "20")
    answered = await alice.wait_for_event("answered", timeout=30)
    assert answered["by"]["user_id"] == "frontdoor"
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 20 and ended["distinct_frames"] >= 10
    status = await door.wait_status(lambda s: s["last_call"] is not None and s["state"] == "idle")
    assert status["calls_answered"] == 1 and status["last_call"]["role"] == "callee"
    assert status["last_call"]["peer"] == "alice" and "announce" in status["speaker"]["tones_played"]
    assert await stored_reason(site, ended["call_id"]) == "completed"


async def test_a_press_while_a_resident_looks_outside_rings_the_residents(site):
    door = await site.start_door("frontdoor", [{"residents": ["alice", "bob"]}])
    bob = await site.start_resident("bob", "--answer", "ignore")
    alice = await site.start_resident("alice", "--look-outside", "frontdoor", "--hangup-after-frames", "0",
                                      "--answer", "ignore")
    looking = await alice.wait_for_event("answered", timeout=30)
    await alice.wait_for_event("first_frame", timeout=30)
    await door.ring()
    ended = await alice.wait_for_event("ended", call_id=looking["call_id"], timeout=30)
    assert ended["reason"] == "completed"
    rung = await bob.wait_for_event("incoming", timeout=30)
    assert rung["caller"]["user_id"] == "frontdoor"
    await alice.wait_for_event("incoming", call_id=rung["call_id"], timeout=30)  # the looker is rung too
    status = await door.wait_status(lambda s: s["state"] == "calling")
    assert status["ignored_presses"] == 0 and status["call"]["role"] == "caller"


async def test_a_ring_group_naming_an_unknown_resident_rings_the_others_and_says_so(site):
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "5")
    door = await site.start_door("frontdoor", [{"residents": ["alice", "bob"]}, {"residents": ["caretaker"]}])
    status = await door.wait_status(lambda s: s["unknown_residents"] == ["bob", "caretaker"])
    assert "bob" in door.process.log_tail(50)
    await door.ring()
    ended = await alice.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] >= 5
    status = await door.wait_status(lambda s: s["state"] == "idle")
    # The dial named bob as unknown; the call that got through cleared that error again.
    assert status["last_error"] is None
    log = door.process.log_tail(50)
    assert "the server has no resident bob" in log
    record = (await site.api("GET", f"/v1/direct_calls/{ended['call_id']}"))[1]
    assert record["callees"] == ["alice"] and record["end_reason"] == "completed"


async def test_the_door_declines_callers_off_its_auto_answer_list(site):
    await site.start_door("frontdoor", [{"residents": ["alice"]}],
                          settings={"calls": {"auto_answer": {"callers": ["alice"]}}})
    bob = await site.start_resident("bob", "--once", "--look-outside", "frontdoor")
    ended = await bob.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "declined" and ended["video_frames"] == 0


async def test_a_call_is_warned_then_ended_at_the_maximum_call_time(site):
    alice = await site.start_resident("alice", "--once", "--hangup-after-frames", "0")
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}],
                                 settings={"calls": {"max_call_s": 10, "warning_before_s": 3}})
    await press(door)
    await alice.wait_for_event("answered")
    warned = await door.wait_status(lambda s: s["speaker"]["tone"] == "warning" or
                                    "warning" in s["speaker"]["tones_played"], timeout=15)
    assert warned["state"] == "connected"  # the warning comes while the call is still on
    ended = await alice.wait_for_event("ended", timeout=15)
    assert ended["reason"] == "completed"
    # The server's record, by its own clock from the answer to the end: the door hung up at
    # the limit, not before (its timer starts when it hears of the answer, after the server).
    record = (await site.api("GET", f"/v1/direct_calls/{ended['call_id']}"))[1]
    assert record["ended_by"]["user_id"] == "frontdoor" and 10 <= record["duration_s"] < 13


async def test_a_press_while_offline_chimes_and_is_reported_when_the_server_is_back(site):
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}])
    await site.add_user("alice", "resident", "Alice")
    await site.stop_server()
    await door.wait_status(lambda s: not s["server"]["connected"])
    await press(door)
    offline = await door.wait_status(lambda s: s["missed_presses"] == 1)
    assert offline["speaker"]["tones_played"] == ["chime"] and offline["calls_placed"] == 0
    assert offline["pins"]["status_led"]["pattern"] == "offline"
    assert offline["pins"]["backlight"] is None  # none configured: nothing to light
    await site.restart_server()
    back = await door.wait_status(lambda s: s["missed_reported"] == 1, timeout=40)
    assert back["missed_presses"] == 0
    code, history = await site.api("GET", "/v1/direct_calls?user_id=alice")
    assert code == 200 and len(history["calls"]) == 1
    record = history["calls"][0]
    assert record["end_reason"] == "dial_failed" and record["has_snapshot"] is True
    code, detail = await site.api("GET", f"/v1/direct_calls/{record['call_id']}")
    assert [e["event"] for e in detail["timeline"]] == ["pressed_offline", "reported"]
    documented = OPENAPI["components"]["schemas"]["CallWithTimeline"]["properties"]["timeline"]["items"]
    assert {e["event"] for e in detail["timeline"]} <= set(documented["properties"]["event"]["enum"])


async def test_sighup_reloads_the_ring_groups_and_a_bad_file_changes_nothing(site):
    bob = await site.start_resident("bob", "--once", "--hangup-after-frames", "5")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}])
    config = yaml.safe_load(door.config_path.read_text())
    good = door.config_path.read_text()
    door.config_path.write_text(good.replace("calls:", "calls:\n  max_call: 5", 1))
    os.kill(door.process.proc.pid, signal.SIGHUP)
    refused = await door.wait_status(lambda s: "reload refused" in (s["last_error"] or ""))
    assert "calls.max_call" in refused["last_error"] and "line" in refused["last_error"]
    config["calls"]["ring_groups"] = [{"residents": ["bob"], "timeout_s": 30}]
    door.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.kill(door.process.proc.pid, signal.SIGHUP)
    reloaded = await door.wait_status(lambda s: s["config"]["reloads"] == 1)
    assert reloaded["last_error"] is None
    await press(door)
    ended = await bob.wait_for_event("ended", timeout=30)
    assert ended["reason"] == "completed"

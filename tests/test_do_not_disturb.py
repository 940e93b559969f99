"""Do-not-disturb, quiet hours and away on a running server, judged by a clock the test sets."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from intercom_server.settings import HubSettings

from .conftest import OFFER


class Clock:
    def __init__(self, text: str) -> None:
        self.set(text)

    def set(self, text: str) -> None:
        self.now = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()

    def __call__(self) -> float:
        return self.now


CLOCK = Clock("2026-11-23 12:00")  # a Monday noon in Berlin


async def _quiet_since_an_answered_request(client) -> None:
    """Nothing was sent to this device: a later reply has arrived, and no event before it."""
    reply = await client.request("decline", call_id="call_none")
    assert reply["type"] == "error"
    client.assert_quiet()


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, clock=CLOCK)])
async def test_a_resident_in_do_not_disturb_is_not_rung_but_the_call_is_in_their_history(server):
    CLOCK.set("2026-11-23 12:00")
    alice_token, bob_token = await server.user("alice"), await server.user("bob")
    door = await server.signed_in("door", await server.user("door", "door"), device_id="door")
    alice = await server.signed_in("alice", alice_token, device_id="phone")
    bob = await server.signed_in("bob", bob_token, device_id="phone")
    status, rules = await server.api("PUT", "/v1/me/availability", {"do_not_disturb": {"on": True, "for_s": 3600}},
                                     bearer=alice_token)
    assert status == 200 and rules["available"] is False and rules["reason"] == "do_not_disturb"
    assert rules["do_not_disturb"]["on"] and rules["do_not_disturb"]["until"].endswith("Z")

    call_id = (await door.request("dial", callees=["alice", "bob"], video=True, offer=OFFER))["call_id"]
    assert (await door.next("ringing"))["devices"] == 1
    await bob.next("incoming")
    # Her tablet signs in while it rings: it is not rung either.
    tablet = await server.signed_in("alice", alice_token, device_id="tablet")
    assert (await bob.request("decline", call_id=call_id))["type"] == "ok"
    assert (await door.next("ended"))["reason"] == "declined"
    await _quiet_since_an_answered_request(alice)
    await _quiet_since_an_answered_request(tablet)
    status, history = await server.api("GET", "/v1/direct_calls", bearer=alice_token)
    assert status == 200 and [c["call_id"] for c in history["calls"]] == [call_id]

    # An hour later, do-not-disturb has ended by itself.
    CLOCK.now += 3600
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    assert (await alice.next("incoming"))["call_id"] == call_id


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, clock=CLOCK)])
async def test_when_nobody_can_be_rung_the_door_hears_so_at_once_and_the_record_says_why(server):
    CLOCK.set("2026-11-23 23:30")
    alice_token = await server.user("alice")
    door = await server.signed_in("door", await server.user("door", "door"), device_id="door")
    alice = await server.signed_in("alice", alice_token, device_id="phone")
    status, site = await server.api("PUT", "/v1/sites/home/availability", {"time_zone": "Europe/Berlin"})
    assert status == 200 and site == {"away": False, "time_zone": "Europe/Berlin"}
    status, _ = await server.api("PUT", "/v1/users/alice/availability",
                                 {"quiet_hours": [{"days": ["mon"], "start": "22:00", "end": "07:00"}]})
    assert status == 200

    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    ended = await door.next("ended")
    assert ended["call_id"] == call_id and ended["reason"] == "unavailable"
    await _quiet_since_an_answered_request(alice)
    await server.store.flushed()
    status, record = await server.api("GET", f"/v1/direct_calls/{call_id}")
    assert record["end_reason"] == "unavailable" and record["callees"] == ["alice"]

    CLOCK.set("2026-11-24 07:00")  # Tuesday morning: the window that began on Monday is over
    call_id = (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["call_id"]
    assert (await alice.next("incoming"))["call_id"] == call_id


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, clock=CLOCK)])
async def test_a_resident_puts_their_site_away_and_nobody_else_can(server):
    CLOCK.set("2026-11-23 12:00")
    alice_token, mallory_token = await server.user("alice"), await server.user("mallory", site="elsewhere")
    door = await server.signed_in("door", await server.user("door", "door"), device_id="door")
    status, site = await server.api("PUT", "/v1/sites/home/availability", {"away": True}, token=None,
                                    bearer=alice_token)
    assert status == 200 and site["away"] is True
    status, mine = await server.api("GET", "/v1/me/availability", bearer=alice_token)
    assert mine["reason"] == "away" and mine["site"]["away"] is True
    assert (await door.request("dial", callees=["alice"], video=True, offer=OFFER))["type"] == "ok"
    assert (await door.next("ended"))["reason"] == "unavailable"

    status, _ = await server.api("PUT", "/v1/sites/home/availability", {"away": False}, token=None,
                                 bearer=mallory_token)
    assert status == 404
    status, _ = await server.api("PUT", "/v1/sites/home/availability", {"away": False}, token=None,
                                 bearer=await server.user("frontdoor2", "door"))
    assert status == 404
    status, site = await server.api("GET", "/v1/sites/home/availability")
    assert site["away"] is True


@pytest.mark.parametrize("settings", [HubSettings(grace_s=0.5, clock=CLOCK)])
async def test_bad_settings_are_refused_and_change_nothing(server):
    alice_token = await server.user("alice")
    await server.user("door", "door")
    await server.api("PUT", "/v1/me/availability", {"quiet_hours": [{"start": "22:00", "end": "07:00"}]},
                     bearer=alice_token)
    for body, message in [
        ({"quiet_hours": [{"start": "25:00", "end": "07:00"}]}, "quiet_hours[0].start"),
        ({"do_not_disturb": {"on": True, "for_s": -5}}, "for_s"),
        ({"do_not_disturb": {"on": True}, "away": True}, "unknown fields: away"),
    ]:
        status, answer = await server.api("PUT", "/v1/me/availability", body, bearer=alice_token)
        assert status == 400 and message in answer["error"]["message"], answer
    status, answer = await server.api("PUT", "/v1/sites/home/availability", {"time_zone": "Moon/Base"})
    assert status == 400 and "unknown time zone" in answer["error"]["message"]
    status, answer = await server.api("PUT", "/v1/users/door/availability", {"do_not_disturb": {"on": True}})
    assert status == 404
    status, mine = await server.api("GET", "/v1/me/availability", bearer=alice_token)
    assert mine["quiet_hours"] == [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "22:00",
                                    "end": "07:00"}]
    assert mine["do_not_disturb"] == {"on": False, "until": None} and mine["site"]["time_zone"] == "UTC"


@pytest.mark.timeout(90)
async def test_the_door_rings_the_next_group_at_once_when_the_first_is_in_do_not_disturb(site):
    """Real processes: the first group's only resident is in do-not-disturb, so the door's
    press rings the caretaker without waiting out the first group's 30 s."""
    alice = await site.start_resident("alice", "--answer", "ignore")
    bob = await site.start_resident("bob", "--answer", "decline")
    status, _ = await site.api("PUT", "/v1/users/alice/availability", {"do_not_disturb": {"on": True}})
    assert status == 200
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 30}, {"residents": ["bob"]}])
    await door.ring()
    incoming = await bob.wait_for_event("incoming", timeout=10)  # far less than the first group's 30 s
    await bob.wait_for_event("declined", call_id=incoming["call_id"], timeout=10)
    status, history = await site.api("GET", "/v1/direct_calls")
    first, second = sorted(history["calls"], key=lambda c: c["created_at"])
    assert first["callees"] == ["alice"] and first["end_reason"] == "unavailable"
    assert second["call_id"] == incoming["call_id"] and second["callees"] == ["bob"]
    assert not [e for e in alice.events() if e["event"] == "incoming"]

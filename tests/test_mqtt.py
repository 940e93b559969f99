"""Home Assistant over MQTT: Debian's Mosquitto (passwords, ACL), a server, a simulated door and
a command-line resident, all real processes, with the test subscribed as Home Assistant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from intercom_sim.harness import Installation

from .conftest import self_signed_certificate
from .mosquitto import HomeAssistant, Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RELAY = {"hardware": {"pins": {"relay": 22, "relay_pulse_s": 0.3}}}
JPEG = b"\xff\xd8"


@pytest.fixture
async def broker(tmp_path) -> AsyncIterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    await mosquitto.start()
    try:
        yield mosquitto
    finally:
        await mosquitto.stop()


@pytest.fixture
async def ha(broker) -> AsyncIterator[HomeAssistant]:
    async with HomeAssistant(broker) as client:
        yield client


async def _mqtt_site(tmp_path, broker: Mosquitto, **mqtt: Any) -> Installation:
    site = Installation(tmp_path)
    # A door that went is reported offline after 1 s (10 s by default; test_webhooks.py checks the flapping).
    await site.start_server(settings={"mqtt": {**broker.server_settings, **mqtt}, "door_offline_after_s": 1})
    return site


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Installation]]:
    sites: list[Installation] = []
    yield sites
    for site in sites:
        await site.close()


async def _health(site: Installation, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict:
    """Poll the operator's /healthz until the MQTT status matches."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await site.api("GET", "/healthz")
        assert status == 200
        if predicate(body["mqtt"]):
            return body["mqtt"]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the MQTT status never matched: {body['mqtt']}")
        await asyncio.sleep(0.05)


def _json_is(**fields: Any) -> Callable[[bytes], bool]:
    def match(payload: bytes) -> bool:
        try:
            value = json.loads(payload)
        except ValueError:
            return False
        return isinstance(value, dict) and all(value.get(k) == v for k, v in fields.items())
    return match


async def _audit(site: Installation) -> list[dict[str, Any]]:
    status, body = await site.api("GET", "/v1/sites/home/audit")
    assert status == 200
    return list(reversed(body["events"]))


async def test_home_assistant_sees_each_door_a_press_its_picture_who_answered_and_opens_it(tmp_path, broker, ha,
                                                                                          cleanup):
    site = await _mqtt_site(tmp_path, broker, doors={"frontdoor": {"open": "button"}})
    cleanup.append(site)
    await site.start_resident("alice", "--once", "--hangup-after-frames", "20")
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}], settings=RELAY)

    # Discovery: one device per door, the documented keys of each entity, retained.
    prefix = "homeassistant/{}/intercom_frontdoor/{}/config"
    configs = {}
    for component, key in [("event", "doorbell"), ("sensor", "call_state"), ("sensor", "answered_by"),
                           ("image", "visitor"), ("binary_sensor", "connected"), ("button", "open")]:
        message = await ha.on(prefix.format(component, key), lambda p: bool(p))
        assert message.retain
        configs[key] = message.json()
    for key, config in configs.items():
        assert config["unique_id"] == f"intercom_frontdoor_{key}"
        assert config["device"]["identifiers"] == ["intercom_frontdoor"] and config["device"]["name"] == "Front door"
        assert {"topic": "intercom/status", "payload_available": "online", "payload_not_available": "offline"} \
            in config["availability"]
    assert configs["doorbell"]["device_class"] == "doorbell" and configs["doorbell"]["state_topic"] == \
        "intercom/frontdoor/event" and configs["doorbell"]["event_types"] == ["pressed", "answered", "missed"]
    assert configs["doorbell"]["availability_mode"] == "all"
    assert {"topic": "intercom/frontdoor/availability", "payload_available": "online",
            "payload_not_available": "offline"} in configs["doorbell"]["availability"]
    assert configs["call_state"]["device_class"] == "enum" and configs["call_state"]["options"] == \
        ["idle", "ringing", "in_call"]
    assert configs["visitor"]["image_topic"] == "intercom/frontdoor/picture"
    assert configs["connected"]["device_class"] == "connectivity"
    assert configs["open"]["command_topic"] == "intercom/frontdoor/open/set"
    assert (await ha.on("intercom/frontdoor/availability", lambda p: p == b"online")).retain
    assert (await ha.on("intercom/status", lambda p: p == b"online")).retain
    # Opening is offered only as the installer chose: no lock for this door.
    assert (await ha.on(prefix.format("lock", "strike"))).payload == b""

    mark = len(ha.messages)
    await door.ring()
    pressed = await ha.on("intercom/frontdoor/event", _json_is(event_type="pressed"), after=mark)
    call_id = pressed.json()["call_id"]
    assert call_id.startswith("call_") and not pressed.retain
    picture = await ha.on("intercom/frontdoor/picture", after=mark)
    assert picture.payload.startswith(JPEG) and len(picture.payload) > 1000 and picture.retain
    answered = await ha.on("intercom/frontdoor/event", _json_is(event_type="answered"), after=mark)
    assert answered.json()["by"] == "Alice" and answered.json()["call_id"] == call_id
    assert (await ha.on("intercom/frontdoor/answered_by", after=mark)).payload == b"Alice"
    await ha.on("intercom/frontdoor/call_state", lambda p: p == b"in_call", after=mark)

    # Home Assistant opens the door for this visitor: the door pulses its relay, all audited.
    mark = len(ha.messages)
    await ha.publish("intercom/frontdoor/open/set", "PRESS")
    result = await ha.on("intercom/frontdoor/open/result", after=mark)
    assert result.json()["outcome"] == "opened", result.json()
    status = await door.wait_status(lambda s: s["pins"]["relay"]["pulses"] == 1)
    assert status["door_openings"][0]["by"] == "Home Assistant"
    [entry] = await _audit(site)
    assert entry["outcome"] == "opened" and entry["by"] == {"user_id": "Home Assistant", "device_id": "integration"}
    assert entry["door_id"] == "frontdoor" and entry["call_id"] == call_id

    await ha.on("intercom/frontdoor/call_state", lambda p: p == b"idle", after=mark)

    # Home Assistant restarts: its birth message brings every door's discovery again.
    mark = len(ha.messages)
    await ha.publish("homeassistant/status", "online")
    await ha.on(prefix.format("event", "doorbell"), lambda p: bool(p), after=mark)
    assert (await ha.on("intercom/frontdoor/answered_by", after=mark)).payload == b"Alice"


async def test_openings_are_refused_without_a_visitor_where_not_turned_on_when_retained_and_beyond_the_rate(
        tmp_path, broker, ha, cleanup):
    site = await _mqtt_site(tmp_path, broker, doors={"frontdoor": {"open": "lock"}}, opens_per_minute=3)
    cleanup.append(site)
    await site.start_resident("alice", "--answer", "ignore")
    door = await site.start_door("frontdoor", [{"residents": ["alice"], "timeout_s": 120}], settings=RELAY)
    back = await site.start_door("backdoor", [{"residents": ["alice"]}], name="Back door", settings=RELAY)
    await ha.on("homeassistant/lock/intercom_frontdoor/strike/config", lambda p: bool(p))
    assert (await ha.on("intercom/frontdoor/lock")).payload == b"LOCKED"
    await ha.on("homeassistant/sensor/intercom_backdoor/call_state/config", lambda p: bool(p))
    assert (await ha.on("homeassistant/lock/intercom_backdoor/strike/config")).payload == b""

    # Nobody at the door: refused, and on the door log.
    mark = len(ha.messages)
    await ha.publish("intercom/frontdoor/open/set", "UNLOCK")
    result = (await ha.on("intercom/frontdoor/open/result", after=mark)).json()
    assert result["outcome"] == "refused" and "nobody is at the door" in result["reason"]
    await ha.on("intercom/frontdoor/lock", lambda p: p == b"LOCKED", after=mark)
    [entry] = await _audit(site)
    assert entry["outcome"] == "refused" and entry["call_id"] is None and entry["by"]["user_id"] == "Home Assistant"

    # A door whose opening the installer did not turn on.
    mark = len(ha.messages)
    await ha.publish("intercom/backdoor/open/set", "PRESS")
    result = (await ha.on("intercom/backdoor/open/result", after=mark)).json()
    assert result["outcome"] == "refused" and "not turned on" in result["reason"]

    # A visitor rings: a retained command opens nothing, even arriving live.
    mark = len(ha.messages)
    await door.ring()
    await ha.on("intercom/frontdoor/call_state", lambda p: p == b"ringing", after=mark)
    await ha.publish("intercom/frontdoor/open/set", "UNLOCK", retain=True)
    result = (await ha.on("intercom/frontdoor/open/result", after=mark)).json()
    assert result["outcome"] == "refused" and "retained" in result["reason"]
    await ha.publish("intercom/frontdoor/open/set", "", retain=True)  # clears it from the broker

    # The same command, not retained, opens: the lock shows it, then locks again.
    mark = len(ha.messages)
    await ha.publish("intercom/frontdoor/open/set", "UNLOCK")
    result = (await ha.on("intercom/frontdoor/open/result", after=mark)).json()
    assert result["outcome"] == "opened", result
    await ha.on("intercom/frontdoor/lock", lambda p: p == b"UNLOCKED", after=mark)
    await ha.on("intercom/frontdoor/lock", lambda p: p == b"LOCKED", after=mark)
    assert (await door.wait_status(lambda s: s["pins"]["relay"]["pulses"] == 1))["door_openings"][0]["by"] == \
        "Home Assistant"

    # Three attempts a minute (the refused one counted): the fourth is refused before the door is asked.
    mark = len(ha.messages)
    await ha.publish("intercom/frontdoor/open/set", "OPEN")
    await ha.on("intercom/frontdoor/open/result", _json_is(outcome="opened"), after=mark)
    mark = len(ha.messages)
    await ha.publish("intercom/frontdoor/open/set", "OPEN")
    result = (await ha.on("intercom/frontdoor/open/result", after=mark)).json()
    assert result["outcome"] == "refused" and "3 attempts to open frontdoor a minute" in result["reason"]
    status = await door.ctl("status")
    assert status["pins"]["relay"]["pulses"] == 2
    assert (await back.ctl("status"))["pins"]["relay"]["pulses"] == 0
    assert [e["outcome"] for e in await _audit(site)] == ["refused", "opened", "opened"]


async def test_the_bell_rings_with_the_broker_down_and_the_server_comes_back_to_it(tmp_path, broker, cleanup):
    site = await _mqtt_site(tmp_path, broker)
    cleanup.append(site)
    alice = await site.start_resident("alice", "--answer", "decline")
    door = await site.start_door("frontdoor", [{"residents": ["alice"]}])
    await _health(site, lambda s: s["connected"])

    await broker.stop()
    down = await _health(site, lambda s: not s["connected"])
    assert down["last_error"]
    await door.ring()
    incoming = await alice.wait_for_event("incoming", timeout=10)
    await alice.wait_for_event("ended", call_id=incoming["call_id"], timeout=10)

    await broker.start()
    async with HomeAssistant(broker) as ha:
        # The broker forgot everything (no persistence): the server publishes it all again.
        config = await ha.on("homeassistant/event/intercom_frontdoor/doorbell/config", lambda p: bool(p))
        assert config.json()["device_class"] == "doorbell"
        await ha.on("intercom/frontdoor/availability", lambda p: p == b"online")
        back = await _health(site, lambda s: s["connected"])
        assert back["connects"] == 2 and back["dropped"] >= 1  # the press happened while it was away
        # And the next press is told at once.
        mark = len(ha.messages)
        await door.ring()
        await ha.on("intercom/frontdoor/event", _json_is(event_type="pressed"), after=mark)
        await ha.on("intercom/frontdoor/event", _json_is(event_type="missed"), after=mark)
        # The door goes away: Home Assistant shows it offline.
        mark = len(ha.messages)
        await site.stop(door.process)
        assert (await ha.on("intercom/frontdoor/availability", after=mark)).payload == b"offline"


async def test_the_server_reaches_a_tls_broker_only_through_the_ca_it_is_given(tmp_path, cleanup):
    cert, key = self_signed_certificate(tmp_path)
    broker = Mosquitto(tmp_path / "mosquitto", tls=(cert, key))
    await broker.start()
    try:
        trusting = await _mqtt_site(tmp_path / "trusting", broker, tls=True, ca_file=str(cert))
        cleanup.append(trusting)
        assert (await _health(trusting, lambda s: s["connected"]))["connects"] == 1
        # Without the private CA, the broker's certificate is not trusted and nothing is sent.
        untrusting = await _mqtt_site(tmp_path / "untrusting", broker, tls=True)
        cleanup.append(untrusting)
        failed = await _health(untrusting, lambda s: s["last_error"] is not None)
        assert failed["connects"] == 0 and "certificate verify failed" in failed["last_error"], failed
    finally:
        for site in cleanup:
            await site.close()
        cleanup.clear()
        await broker.stop()


async def test_away_and_do_not_disturb_are_switches_in_home_assistant_both_ways(tmp_path, broker, ha, cleanup):
    site = await _mqtt_site(tmp_path, broker)
    cleanup.append(site)
    await site.add_user("alice", "resident", "Alice")
    await site.start_door("frontdoor", [{"residents": ["alice"]}])
    away = (await ha.on("homeassistant/switch/intercom_site_home/away/config", lambda p: bool(p))).json()
    dnd = (await ha.on("homeassistant/switch/intercom_site_home/dnd_alice/config", lambda p: bool(p))).json()
    assert away["command_topic"] == "intercom/site/home/away/set" and away["state_topic"] == "intercom/site/home/away"
    assert dnd["name"] == "Do not disturb: Alice" and dnd["device"]["name"] == "Intercom Demo house"
    assert dnd["unique_id"] == "intercom_site_home_dnd_alice" and dnd["payload_on"] == "ON"
    assert (await ha.on("intercom/site/home/away")).payload == b"OFF"
    assert (await ha.on("intercom/resident/alice/dnd")).payload == b"OFF"

    mark = len(ha.messages)
    await ha.publish("intercom/site/home/away/set", "ON")
    await ha.on("intercom/site/home/away", lambda p: p == b"ON", after=mark)
    assert (await site.api("GET", "/v1/sites/home/availability"))[1]["away"] is True

    mark = len(ha.messages)  # changed elsewhere (the web app, the API): Home Assistant sees it
    status, _ = await site.api("PUT", "/v1/users/alice/availability", {"do_not_disturb": {"on": True}})
    assert status == 200
    await ha.on("intercom/resident/alice/dnd", lambda p: p == b"ON", after=mark)
    await ha.publish("intercom/resident/alice/dnd/set", "OFF")
    await ha.on("intercom/resident/alice/dnd", lambda p: p == b"OFF", after=mark)
    rules = (await site.api("GET", "/v1/users/alice/availability"))[1]
    assert rules["do_not_disturb"]["on"] is False and rules["reason"] == "away"

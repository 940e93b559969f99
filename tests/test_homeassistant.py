"""The sans-I/O half of the MQTT bridge: topics, commands and discovery documents."""

from __future__ import annotations

import pytest

from intercom_server import homeassistant as ha
from intercom_server.homeassistant import OpenEntity

pytestmark = pytest.mark.slow


def test_commands_open_only_as_the_door_s_entity_says():
    assert ha.opens(OpenEntity.BUTTON, b"PRESS") is True
    assert ha.opens(OpenEntity.BUTTON, b"UNLOCK") is None
    assert ha.opens(OpenEntity.LOCK, b"UNLOCK") is True and ha.opens(OpenEntity.LOCK, b" OPEN\n") is True
    assert ha.opens(OpenEntity.LOCK, b"LOCK") is False and ha.opens(OpenEntity.LOCK, b"\xff") is None
    assert ha.opens(OpenEntity.NONE, b"PRESS") is None


def test_a_command_topic_names_one_door():
    assert ha.door_of_command("intercom", "intercom/frontdoor/open/set") == "frontdoor"
    assert ha.door_of_command("intercom", "intercom/a/b/open/set") is None
    assert ha.door_of_command("intercom", "intercom//open/set") is None
    assert ha.door_of_command("intercom", "other/frontdoor/open/set") is None


def test_discovery_offers_one_opening_entity_and_removes_the_other():
    documents = dict(ha.discovery("homeassistant", "intercom", "gate@north.1", "North gate", OpenEntity.LOCK))
    lock = documents["homeassistant/lock/intercom_gate_north_1/strike/config"]
    assert lock is not None and lock["command_topic"] == "intercom/gate@north.1/open/set"
    assert lock["unique_id"] == "intercom_gate_north_1_strike" and lock["device"]["name"] == "North gate"
    assert documents["homeassistant/button/intercom_gate_north_1/open/config"] is None
    none = dict(ha.discovery("homeassistant", "intercom", "gate", "Gate", OpenEntity.NONE))
    assert none["homeassistant/lock/intercom_gate/strike/config"] is None
    assert none["homeassistant/button/intercom_gate/open/config"] is None
    assert sum(1 for d in none.values() if d is not None) == 5


def test_a_switch_topic_names_a_site_s_away_or_a_resident_s_do_not_disturb():
    assert ha.switch_of_command("intercom", "intercom/site/home/away/set") == ("away", "home")
    assert ha.switch_of_command("intercom", "intercom/resident/alice/dnd/set") == ("dnd", "alice")
    assert ha.switch_of_command("intercom", "intercom/resident/a/b/dnd/set") is None
    assert ha.switch_of_command("intercom", "intercom/site/home/dnd/set") is None
    [away, alice] = ha.site_discovery("homeassistant", "intercom", "home", "Home", [("alice@x", "Alice")])
    assert away[0] == "homeassistant/switch/intercom_site_home/away/config"
    assert alice[1]["command_topic"] == "intercom/resident/alice@x/dnd/set"
    assert alice[1]["unique_id"] == "intercom_site_home_dnd_alice_x"

"""The door station's own rules, in-process: what it does when the server asks it to open the
door, and what a reload applies at once. (Whole calls are in test_end_to_end.py.)"""

from dataclasses import replace
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from intercom import config as door_config
from intercom.station import Station
from intercom_protocol.calls import ClientCall
from intercom_protocol.messages import ErrorCode, ProtocolError

YAML = """\
server:
  url: ws://127.0.0.1:9/v1/ws
  user_id: frontdoor
  access_token: ict_x
hardware:
  pins:
    backend: mock
    bell_button: 17
    relay: 22
    relay_pulse_s: 0.2
  camera:
    width: 160
    height: 120
  microphone:
    backend: tone
  speaker:
    device: "null"
calls:
  ring_groups:
    - residents: [alice]
control:
  socket: control.sock
state_dir: state
"""


@pytest.fixture
async def station(tmp_path: Path):
    path = tmp_path / "intercom.yaml"
    path.write_text(YAML)
    factory = MockFactory()
    door = Station(door_config.load(path), pin_factory=factory)
    await door.start()
    yield door, factory
    await door.stop()
    factory.reset()
    Device.pin_factory = None


async def test_the_door_opens_only_for_its_live_or_last_call(station):
    door, factory = station
    alice = {"user_id": "alice", "device_id": "phone"}
    with pytest.raises(ProtocolError) as exc:
        door.open_door("call_someone_elses", alice)
    assert exc.value.code is ErrorCode.FORBIDDEN and factory.pin(22).state is False
    door.policy.call = ClientCall.incoming("call_live", alice)
    assert door.open_door("call_live", alice) == {"pulse_s": 0.2}
    assert factory.pin(22).state is True and door.pins.pattern == "door_open"
    assert door.policy.door_openings[-1]["by"] == "alice" and door.policy.door_openings[-1]["call_id"] == "call_live"


async def test_a_server_request_other_than_open_door_is_refused_without_a_click(station):
    door, factory = station
    door.policy.last_call = {"call_id": "call_1"}
    with pytest.raises(ProtocolError) as exc:
        await door._server_request({"type": "action", "id": "s1", "call_id": "call_1", "name": "unlock_all"})
    assert exc.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ProtocolError) as exc:
        await door._server_request({"type": "reboot", "id": "s2"})
    assert exc.value.code is ErrorCode.BAD_REQUEST
    assert door.pins.relay_pulses == 0


async def test_a_reload_applies_the_policy_and_names_what_needs_a_restart(station):
    door, _ = station
    config = door.config
    new = replace(config, max_call_s=60.0, tone_volume=0.2, camera={**config.camera, "fps": 30.0})
    assert door.reload(new) == ["camera"]
    assert door.config.max_call_s == 60.0 and door.speaker.tone_volume == 0.2 and door.reloads == 1

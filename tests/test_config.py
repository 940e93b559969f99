"""The installer's YAML: every mistake named with its key path and line, nothing started."""

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from intercom import config as door_config
from intercom_protocol.yamlconfig import ConfigError
from intercom_server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
server:
  url: ws://127.0.0.1:8080/v1/ws
  user_id: frontdoor
  access_token: ict_secret
hardware:
  pins:
    backend: mock
    bell_button: 17
calls:
  ring_groups:
    - residents: [alice]
"""


def load(tmp_path: Path, text: str) -> door_config.DoorConfig:
    path = tmp_path / "intercom.yaml"
    path.write_text(text)
    return door_config.load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return [str(p) for p in exc.value.problems]


def test_a_minimal_config_gets_safe_defaults(tmp_path):
    config = load(tmp_path, GOOD)
    assert config.user_id == "frontdoor" and config.access_token == "ict_secret"
    assert config.ring_groups[0].residents == ("alice",) and config.ring_groups[0].timeout_s == 30
    assert config.pins["bell_pull_up"] is True and config.speaker_device == "default"


def test_the_shipped_example_is_valid(tmp_path):
    text = (ROOT / "config/intercom.example.yaml").read_text()
    (tmp_path / "token").write_text("ict_x\n")
    (tmp_path / "token").chmod(0o600)
    config = load(tmp_path, text.replace("/etc/intercom/token", str(tmp_path / "token")))
    assert [g.residents for g in config.ring_groups] == [("alice", "bob")]  # the walkthrough adds both
    ServerConfig.from_file(ROOT / "config/server.example.yaml")


def test_unknown_key_names_its_path_line_and_the_likely_intent(tmp_path):
    text = GOOD.replace("    bell_button: 17", "    bell_button: 17\n    bel_pull_up: false")
    assert problems(tmp_path, text) == ["hardware.pins.bel_pull_up (line 9): unknown key; did you mean 'bell_pull_up'?"]


def test_every_problem_is_reported_at_once(tmp_path):
    text = """\
server:
  url: http://example.org
  user_id: frontdoor
  access_token: x
hardware:
  pins:
    backend: gpio
    bell_button: 99
  speaker:
    device: null
  camera:
    fps: fast
calls:
  ring_groups:
    - residents: []
      timeout_s: 0
"""
    found = problems(tmp_path, text)
    assert found == [
        "server.url (line 2): must be a ws:// or wss:// URL such as wss://intercom.example.org/v1/ws, not 'http://example.org'",
        "hardware.pins.backend (line 7): must be one of lgpio, rpigpio, pigpio, native, mock, not 'gpio'",
        "hardware.pins.bell_button (line 8): GPIO number must be between 0 and 53, not 99",
        "hardware.camera.fps (line 12): must be a number, not 'fast'",
        "hardware.speaker.device (line 10): must be a string, not nothing (null) "
        "(an ALSA PCM name; write \"null\" in quotes for the silent device)",
        "calls.ring_groups[0].residents (line 15): must not be empty",
        "calls.ring_groups[0].timeout_s (line 16): must be between 1 and 300, not 0",
    ]


def test_missing_sections_and_tokens(tmp_path):
    found = problems(tmp_path, "server:\n  url: ws://x/v1/ws\n")
    assert "server.user_id (line 1): is required (this door station's user id on the server)" in found
    assert any(p.startswith("hardware.pins.bell_button: is required") for p in found)
    assert "calls: is required" in found
    no_token = GOOD.replace("  access_token: ict_secret\n", "")
    assert problems(tmp_path, no_token) == ["server.access_token: is required (or access_token_file)"]
    missing_file = GOOD.replace("access_token: ict_secret", "access_token_file: nowhere")
    assert "cannot read" in problems(tmp_path, missing_file)[0]


def test_a_token_file_that_is_empty_or_readable_by_others_is_refused(tmp_path):
    token = tmp_path / "token"
    text = GOOD.replace("access_token: ict_secret", f"access_token_file: {token}")
    token.write_text("\n")
    token.chmod(0o600)
    assert problems(tmp_path, text) == [f"server.access_token_file: {token} is empty; "
                                        f"write the door's access token into it"]
    token.write_text("ict_secret\n")
    token.chmod(0o644)
    assert problems(tmp_path, text) == [f"server.access_token_file: {token} can be read by other users "
                                        f"(mode 644); run: chmod 600 {token}"]
    token.chmod(0o600)
    assert load(tmp_path, text).access_token == "ict_secret"


def test_a_ca_file_must_exist_and_go_with_wss(tmp_path):
    text = GOOD.replace("  access_token: ict_secret\n", "  access_token: ict_secret\n  ca_file: ca.pem\n")
    assert problems(tmp_path, text) == [f"server.ca_file: {tmp_path / 'ca.pem'} is not a readable file"]
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert problems(tmp_path, text) == ["server.ca_file: is for wss:// URLs; server.url is ws://"]
    secure = load(tmp_path, text.replace("ws://127.0.0.1", "wss://127.0.0.1"))
    assert secure.ca_file == str(tmp_path / "ca.pem")


def test_an_alias_bomb_is_refused_quickly_and_small(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    found = problems(tmp_path, "\n".join(lines) + "\n")
    assert found == ["(file): its aliases (*name) expand to more than 100,000 values; write the values out"]
    server_file = tmp_path / "server.yaml"
    server_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError):
        ServerConfig.from_file(server_file)


def test_broken_yaml_and_duplicate_keys_name_the_line(tmp_path):
    assert problems(tmp_path, "server:\n  url: [unclosed\n")[0].startswith("(file) (line 3): not valid YAML")
    dup = GOOD.replace("  user_id: frontdoor\n", "  user_id: frontdoor\n  user_id: backdoor\n")
    assert "key 'user_id' appears twice" in problems(tmp_path, dup)[0]


def test_check_config_prints_each_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("bell_button: 17", "bell_button: 17\n    colour: red"))
    result = subprocess.run([sys.executable, "-m", "intercom.cli", "check-config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{path}: hardware.pins.colour (line 9): unknown key" in result.stderr
    path.write_text(GOOD)
    result = subprocess.run([sys.executable, "-m", "intercom.cli", "check-config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout


def test_server_config_errors_name_path_and_line(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("listen:\n  port: 99999\nice_servers:\n  - urls: http://x\n")
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_file(path)
    assert [str(p) for p in exc.value.problems] == [
        "listen.port (line 2): must be between 0 and 65535, not 99999",
        "ice_servers[0] (line 4): needs 'urls': a stun:, turn: or turns: URL or a list of them",
    ]


def test_server_turn_section_is_off_when_absent_and_checked_when_present(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("data_dir: /tmp/x\n")
    config = ServerConfig.from_file(path)
    assert config.hub.ice.turn is None and config.db_target == Path("/tmp/x/intercom.db")
    assert config.hub.time_zone == "UTC"
    path.write_text("database: /srv/i.db\nturn:\n  urls: [turn:t.example.org:3478]\n  shared_secret: s\n"
                    "limits:\n  messages_per_s: 5\n")
    config = ServerConfig.from_file(path)
    assert config.hub.ice.turn.urls == ["turn:t.example.org:3478"] and config.hub.ice.turn.ttl_s == 86400
    assert config.hub.limits.messages_per_s == 5 and config.db_target == Path("/srv/i.db")
    path.write_text("turn:\n  urls: [stun:t.example.org]\ncalls:\n  open_door_window_s: 600\ntime_zone: Europe/Berln\n")
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_file(path)
    assert [str(p) for p in exc.value.problems] == [
        "time_zone (line 5): unknown time zone 'Europe/Berln'; use an IANA name such as Europe/Berlin or UTC",
        "calls.open_door_window_s (line 4): must be between 0 and 120, not 600",
        "turn.urls (line 2): must be turn: or turns: URLs",
        "turn.shared_secret (line 1): is required (coturn's static-auth-secret (use-auth-secret mode))",
    ]


def test_server_database_and_cluster_sections(tmp_path):
    path = tmp_path / "server.yaml"
    url = "postgresql://intercom@db.example.org/intercom"
    path.write_text(f"database: {url}\ncluster:\n  redis: redis://cache.example.org:6379/0\n  name: a\n")
    config = ServerConfig.from_file(path)
    assert config.db_target == url and config.cluster is not None
    assert (config.cluster.redis_url, config.cluster.name) == ("redis://cache.example.org:6379/0", "a")
    path.write_text("database: postgresql://intercom:s3cret@db.example.org/intercom\n")
    assert ServerConfig.from_file(path).db_name == "postgresql://intercom:***@db.example.org/intercom"
    path.write_text("database: mysql://db/intercom\ncluster:\n  redis: http://cache\n")
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_file(path)
    assert [str(p) for p in exc.value.problems] == [
        "database (line 1): must be a file path (SQLite) or a postgresql:// URL; no other engine is supported",
        "cluster.redis (line 3): must be a redis://host:6379/0 URL (rediss:// for TLS)",
    ]
    path.write_text("cluster:\n  redis: redis://cache:6379/0\n")  # SQLite is one process's file
    with pytest.raises(ConfigError, match="share one database: set database: to a postgresql:// URL"):
        ServerConfig.from_file(path)
    path.write_text(f"database: {url}\ncluster:\n  redis: redis://cache:6379/0\nmqtt:\n  host: broker\n")
    both = ServerConfig.from_file(path)  # one process of the cluster runs the bridge (docs/cluster.md)
    assert both.cluster is not None and both.hub.mqtt is not None and both.hub.mqtt.host == "broker"


def test_server_push_section_defaults_and_mistakes(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("public_url: https://door.example.org/\n")
    push = ServerConfig.from_file(path).hub.push
    assert push.contact == "https://door.example.org" and push.subscriptions_per_user == 10
    assert push.vapid_private_key is None and push.local_hosts == ()
    path.write_text("push:\n  contact: admin@example.org\n  subscriptions_per_user: 0\n  local_host: [ntfy.lan]\n")
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_file(path)
    problems = [str(p) for p in exc.value.problems]
    assert "push.contact (line 2): must be a mailto: address or an https:// URL, e.g. mailto:you@example.org" in problems
    assert "push.subscriptions_per_user (line 3): must be between 1 and 100, not 0" in problems
    assert any(p.startswith("push.local_host (line 4): unknown key") for p in problems), problems


def test_server_mqtt_section_is_off_when_absent_and_its_mistakes_are_named(tmp_path):
    from intercom_server.homeassistant import OpenEntity

    path = tmp_path / "server.yaml"
    path.write_text("data_dir: /tmp/x\n")
    assert ServerConfig.from_file(path).hub.mqtt is None
    path.write_text("mqtt:\n  host: broker.lan\n  tls: true\n  doors:\n    frontdoor: {open: lock}\n")
    mqtt = ServerConfig.from_file(path).hub.mqtt
    assert mqtt is not None and mqtt.port == 8883 and mqtt.doors == {"frontdoor": OpenEntity.LOCK}
    assert mqtt.base_topic == "intercom" and mqtt.discovery_prefix == "homeassistant"
    path.write_text("mqtt:\n  port: 1883\n  base_topic: intercom/#\n  doors:\n    frontdoor: {open: door}\n"
                    "  passwd: x\n")
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_file(path)
    assert [str(p) for p in exc.value.problems] == [
        "mqtt.passwd (line 6): unknown key; did you mean 'password'?",
        "mqtt.host (line 1): is required (the MQTT broker, e.g. the Mosquitto add-on's address)",
        "mqtt.base_topic (line 3): must be an MQTT topic without wildcards (+, #) or a leading or trailing '/'",
        "mqtt.doors (line 4): frontdoor.open must be one of none, button, lock, not 'door'",
    ]


def selftest_config(tmp_path: Path, **hardware) -> Path:
    config = {
        "server": {"url": "ws://127.0.0.1:9/v1/ws", "user_id": "frontdoor", "access_token": "ict_x"},
        "hardware": {"pins": {"backend": "mock", "bell_button": 17, "status_led": 27, "relay": 22,
                              "relay_pulse_s": 4},
                     "camera": {"backend": "test_pattern", "width": 320, "height": 240},
                     **hardware},
        "calls": {"ring_groups": [{"residents": ["alice"]}]},
        "control": {"socket": str(tmp_path / "control.sock")},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "intercom.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def selftest(path: Path, *args: str, home: Path | None = None) -> tuple[int, dict]:
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    result = subprocess.run([sys.executable, "-m", "intercom.cli", "selftest", *args, "--config", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    return result.returncode, json.loads(result.stdout)


def test_selftest_exercises_every_part_and_reports_what_it_measured(tmp_path):
    """The microphone hears a known tone through ALSA's file plugin, set up in ~/.asoundrc as
    an installer would; the speaker writes to a file the test reads back."""
    visitor = tmp_path / "visitor.raw"
    t = np.arange(48000 * 3) / 48000
    (np.sin(2 * np.pi * 440 * t) * 0.25 * 32767).astype("<i2").tofile(visitor)
    (tmp_path / ".asoundrc").write_text(
        f'pcm.doormic {{\n type file\n slave.pcm null\n file "/dev/null"\n infile "{visitor}"\n format raw\n}}\n')
    out = tmp_path / "speaker.raw"
    path = selftest_config(tmp_path, microphone={"device": "doormic"},
                           speaker={"device": f"file:FILE={out},FORMAT=raw"})
    code, report = selftest(path, home=tmp_path)
    assert code == 0 and report["ok"] is True, report
    assert report["leds"] == {"ok": True, "status_led": "blinked 3 times", "backlight_led": "not configured"}
    assert report["relay"]["relay"] == "clicked for 0.5s"  # a click, not the 4 s opening
    assert report["microphone"]["frames"] >= 40
    assert abs(report["microphone"]["peak_dbfs"] - 20 * np.log10(0.25 / np.sqrt(2))) < 0.5
    assert report["microphone"]["hint"] is None
    assert (report["camera"]["width"], report["camera"]["height"]) == (320, 240)
    assert np.max(np.abs(np.fromfile(out, np.int16))) > 0.4 * 32767  # the test tone reached the speaker


def test_selftest_reports_a_broken_part_and_fails(tmp_path):
    path = selftest_config(tmp_path, speaker={"device": "nosuchcard"}, microphone={"backend": "tone"})
    code, report = selftest(path, "--no-relay")
    assert code == 1 and report["ok"] is False
    assert report["speaker"]["ok"] is False and "nosuchcard" in report["speaker"]["error"]
    assert report["relay"] == {"ok": True, "skipped": "--no-relay"} and report["camera"]["ok"] is True


def test_the_example_documents_every_key():
    """Every key the door accepts appears in the annotated example an installer copies."""
    from intercom.config import SCHEMA

    example = (ROOT / "config/intercom.example.yaml").read_text()

    def keys(schema, path=""):
        for key, spec in schema.items():
            yield f"{path}{key}"
            nested = spec.schema or (spec.items.schema if spec.items is not None else None)
            if nested:
                yield from keys(nested, f"{path}{key}.")

    missing = [k for k in keys(SCHEMA) if not re.search(rf"^\s*#?\s*-?\s*{k.rsplit('.', 1)[-1]}:", example, re.M)]
    assert missing == []


def test_quick_replies_are_checked_with_their_clips(tmp_path):
    clip = tmp_path / "coming.wav"
    clip.write_bytes(b"RIFF")
    replies = GOOD + "  quick_replies:\n    - {id: coming, label: \" I'm coming \", clip: coming.wav}\n"
    [reply] = load(tmp_path, replies).quick_replies
    assert (reply.id, reply.label, reply.clip, reply.ends_call) == ("coming", "I'm coming", str(clip), False)
    bad = GOOD + ("  quick_replies:\n    - {id: Coming!, label: x, clip: coming.wav}\n"
                  "    - {id: gone, label: y, clip: gone.wav}\n")
    found = problems(tmp_path, bad)
    assert found == ["calls.quick_replies[0].id (line 13): 'Coming!' must be 1 to 32 of a-z, 0-9, _ or -"], found
    found = problems(tmp_path, GOOD + "  quick_replies:\n    - {id: gone, label: y, clip: gone.wav}\n")
    assert found == [f"calls.quick_replies[0].clip: {tmp_path / 'gone.wav'} is not a readable file"]


def test_door_policy_and_hardware_mistakes_are_named(tmp_path):
    text = GOOD.replace("    bell_button: 17", "    bell_button: 17\n    relay: 99\n  camera:\n    backend: usb\n"
                        "    width: 642") + "  auto_answer:\n    callers: everyone\n"
    assert problems(tmp_path, text) == [
        "hardware.pins.relay (line 9): GPIO number must be between 0 and 53, not 99",
        "hardware.camera.backend (line 11): must be one of test_pattern, picamera2, v4l2, not 'usb'",
        "hardware.camera.width (line 12): must be a multiple of 4 (the encoder's blocks), not 642",
        "calls.auto_answer.callers (line 17): must be site_residents or a list of user ids, not 'everyone'",
    ]
    late_warning = GOOD + "  max_call_s: 60\n  warning_before_s: 60\n"
    assert problems(tmp_path, late_warning) == ["calls.warning_before_s: must be shorter than calls.max_call_s"]


async def test_selftest_checks_the_ring_groups_against_the_servers_residents(server, tmp_path):
    token = await server.user("frontdoor", kind="door")
    await server.user("alice")
    path = selftest_config(tmp_path, microphone={"backend": "tone"}, speaker={"device": "null"})
    config = yaml.safe_load(path.read_text())
    config["server"].update(url=server.ws_url, access_token=token)
    config["calls"]["ring_groups"] = [{"residents": ["alice", "bob"]}, {"residents": ["caretaker"]}]
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "intercom.cli", "selftest", "--no-relay",
                                                "--config", str(path), stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    report = json.loads(out)
    assert proc.returncode == 1 and report["ring_groups"]["ok"] is False
    assert "bob, caretaker" in report["ring_groups"]["error"]
    config["calls"]["ring_groups"] = [{"residents": ["alice"]}]
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "intercom.cli", "selftest", "--no-relay",
                                                "--config", str(path), stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert json.loads(out)["ring_groups"] == {"ok": True, "checked": True, "residents": ["alice"]}


def _server(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "intercom_server.cli", "--config", str(path), *args, "serve"],
                          capture_output=True, text=True, timeout=60)


def test_the_server_says_in_one_line_why_it_cannot_start(tmp_path):
    """An installer sees the reason and what to do, never a traceback."""
    as_file = tmp_path / "not-a-dir"
    as_file.write_text("")
    cases = [
        ({"data_dir": str(as_file)}, f"intercom-server: data_dir {as_file} is a file, not a directory"),
        ({"data_dir": str(tmp_path / "d1"), "database": str(tmp_path)},
         f"intercom-server: cannot open the database {tmp_path}: "),
        ({"data_dir": str(tmp_path / "d2"), "listen": {"port": 0},
          "tls": {"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.key")}},
         f"intercom-server: cannot load tls.cert {tmp_path / 'missing.pem'} with tls.key"),
        ({"data_dir": str(tmp_path / "d3"), "listen": {"port": 0}, "push": {"vapid_private_key": "not-a-key"}},
         "intercom-server: cannot start Web Push: push.vapid_private_key is not a VAPID private key"),
    ]
    for config, expected in cases:
        result = _server(tmp_path, config)
        lines = result.stderr.strip().splitlines()
        # Alone on stderr: the INFO lines of a start that failed are not shown.
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_a_port_in_use_is_named(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _server(tmp_path, {"data_dir": str(tmp_path / "d"), "listen": {"port": port}})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"intercom-server: port {port} on 127.0.0.1 is in use (another intercom-server?): stop it, or choose "
        f"another port with listen.port in the YAML or serve --port N"]


def test_a_control_socket_path_that_is_a_file_is_named(tmp_path):
    path = selftest_config(tmp_path, microphone={"backend": "tone"}, speaker={"device": "null"})
    (tmp_path / "control.sock").write_text("not a socket")
    result = subprocess.run([sys.executable, "-m", "intercom.cli", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"intercom: cannot start: control.socket {tmp_path / 'control.sock'} exists and is not a socket" \
        in result.stderr
